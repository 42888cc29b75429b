"""The engine: what drives a run of any trainer or tool.

``engine.run``: the run folder, its lock, logging, atomic finite checkpoints, stop requests and
exact resume; ``engine.step``: the training step under train.py and pretrain_fast_headers.py
(backward, checks, checkpoint state); ``engine.validation``: evaluation while training (any
annotation format, the DARK FACE / WIDER FACE protocols); ``engine.gan``: the pix2pix update of
D(H)'s trainer; ``engine.cli``: what test.py and the tools share (config flags, batching images
of one size, the evaluation tools' flags, the low-level trainers' frame); ``engine.compare``: the
compare page (tools/compare_inference.py is its command line). It may import the
models, the methods, the data and the plumbing (docs/import_rules.txt); nothing below imports
it.
"""
