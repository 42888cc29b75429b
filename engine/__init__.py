"""The engine: what drives a run of any trainer.

``engine.run``: the run folder, its lock, logging, atomic finite checkpoints, stop requests and
exact resume; ``engine.validation``: evaluation while training (any annotation format, the DARK
FACE / WIDER FACE protocols); ``engine.gan``: the pix2pix update of D(H)'s trainer. It may import
the models, the methods, the data and the plumbing (docs/import_rules.txt); nothing below imports
it.
"""
