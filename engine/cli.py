"""What the command-line programs share (test.py and tools/), so that each keeps only its own steps.

* every config-reading tool: :func:`parse_with_config` (``--config`` presets and the
  ``KEY.SUB=VALUE`` overrides), :func:`start_tool` (log lines on stderr, the config), and
  :func:`run_writing_tool` for the tools that write image folders (a write error is one line);
* the detection tools (test.py, make_pseudo_boxes, make_pseudo_labels): :class:`SameSizeBatches`,
  the images decoded in DataLoader workers and handed out in runs of one size; detect and
  detect_image: :func:`load_detector` (a checkpoint or an ONNX export), :func:`make_tester`,
  :func:`plan_for`;
* the evaluation tools (eval_darkface, eval_widerface): :func:`parse_eval_args` and
  :func:`run_evaluation`;
* the one-process trainers (train_enhancer, train_noise): :func:`trainer_arguments`,
  :func:`run_trainer` (their ``main``) and :class:`TrainerEpochs` (the engine's bookkeeping
  around their own loop).

Importing it is light (the evaluation tools need no torch): torch, the data loaders and the
engine's run are imported by the helpers that use them.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from data import config as config_lib
from utils.files import WriteError


# ---------------------------------------------------------------------------------------------
# every tool


def parse_with_config(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Add the options a config-reading tool ends with (``--config`` presets, then the
    overrides) and parse ``argv``."""
    p.add_argument("--config", action="append", default=[], metavar="PRESET")
    p.add_argument("opts", nargs="*", metavar="KEY.SUB=VALUE", help="config overrides")
    return p.parse_args(argv)


def log_to_stderr() -> None:
    """The tools' log lines: INFO and up, with level and logger name, on stderr."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def start_tool(args):
    """Log to stderr, then load the config of ``args.config`` and ``args.opts``."""
    log_to_stderr()
    return config_lib.load_config(args.config, args.opts)


def run_writing_tool(run: Callable[[Any], int], args, log: logging.Logger) -> int:
    """``run(args)`` with the log on stderr; a :class:`WriteError` (e.g. a full disk) is one
    error line and exit status 1, and the outputs finished before it stay."""
    log_to_stderr()
    try:
        return run(args)
    except WriteError as exc:
        log.error("%s", exc)
        return 1


# ---------------------------------------------------------------------------------------------
# the detection tools


class SameSizeBatches:
    """Decodes ``paths`` in ``workers`` DataLoader processes (with a tqdm bar) and yields runs
    of up to ``batch_size`` consecutive images of one size as ``[(path, rgb), ...]``; an
    unreadable image is logged to ``log``, skipped and counted in ``failed``."""

    def __init__(self, paths: list, batch_size: int, workers: int, desc: str,
                 log: logging.Logger):
        self.paths, self.batch_size, self.workers = paths, batch_size, workers
        self.desc, self.log = desc, log
        self.failed = 0

    def __iter__(self):
        from torch.utils.data import DataLoader
        from data.loaders import identity_collate
        from data.predictions import ImageFiles
        loader = DataLoader(ImageFiles(self.paths), batch_size=None, collate_fn=identity_collate,
                            num_workers=self.workers if len(self.paths) > 1 else 0)
        batch: list = []
        for path, img, error in tqdm(loader, total=len(self.paths), desc=self.desc, unit="img"):
            if img is None:
                self.log.warning("skipping unreadable image %s: %s", path, error)
                self.failed += 1
                continue
            if batch and (len(batch) == self.batch_size or batch[0][1].shape != img.shape):
                yield batch
                batch = []
            batch.append((path, img))
        if batch:
            yield batch


def load_detector(args, cfg, device, reference: bool = False, log: logging.Logger | None = None):
    """``--weights``: a :class:`models.inference.FaceDetector` of ``cfg.MODEL.NAME`` (a checkpoint
    of ours sets it) in the resolved ``--precision`` (written into ``cfg.RUN``), or an
    :class:`models.onnx_runner.OnnxRunner` for an ``.onnx`` file (``--threads``, when the tool
    has it, sets torch's and onnxruntime's)."""
    import torch
    from models.inference import FaceDetector, load_net
    from utils.precision import apply_precision, family_of, resolve_precision
    threads = getattr(args, "threads", 0)
    if threads > 0:
        torch.set_num_threads(threads)
    if str(args.weights).lower().endswith(".onnx"):
        from models.onnx_runner import onnx_runner
        if log:
            log.info("ONNX model: onnxruntime on the CPU (--precision does not apply)")
        return onnx_runner(args.weights, cfg, threads or None)
    net, _ = load_net(cfg, args.weights)
    precision = resolve_precision(args.precision, device, family_of(cfg.MODEL.NAME), reference)
    precision = apply_precision(cfg, precision, args.precision)
    if log:
        log.info("precision %s (%s)", precision.name, precision.reason)
    return FaceDetector.from_config(net, cfg, device, fold_bn=precision.fold_bn)


def make_tester(detector, mode: str, landmarks: bool = True):
    """Single mode keeps the landmarks of detectors that have them; multi mode votes boxes."""
    from models.test_time import TestTimeDetector
    return TestTimeDetector(detector, vote=mode == "multi", dummy_rows=False,
                            landmarks=landmarks and mode == "single"
                            and getattr(detector, "num_landmarks", 0) > 0)


def plan_for(shape, mode: str, scale: float) -> list:
    """The passes of ``--mode``: the reference's multi-scale plan, or one pass at ``scale``."""
    from models.test_time import Pass, reference_passes
    return reference_passes(*shape[:2], scale) if mode == "multi" else [Pass(scale)]


# ---------------------------------------------------------------------------------------------
# the evaluation tools


def parse_eval_args(parser: argparse.ArgumentParser, argv, curves_help: str,
                    label_help: str) -> argparse.Namespace:
    """Add the options both evaluation tools end with (``--official-curves``, which needs
    ``--plot``, ``--allow-missing`` and ``--label``) and parse ``argv``."""
    parser.add_argument("--official-curves", type=Path, help=curves_help)
    parser.add_argument("--allow-missing", action="store_true",
                        help="score images without a prediction file as images without "
                             "detections even when none has one (default: that is an error, "
                             "most likely a wrong folder layout)")
    parser.add_argument("--label", default="ours", help=label_help)
    args = parser.parse_args(argv)
    if args.official_curves is not None and args.plot is None:
        parser.error("--official-curves needs --plot")
    return args


def run_evaluation(evaluate: Callable[[Any], int], args) -> int:
    """``evaluate(args)``; a wrong folder or a malformed file is one ``error:`` line on stderr
    and exit status 1."""
    try:
        return evaluate(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


# ---------------------------------------------------------------------------------------------
# the one-process trainers


def trainer_arguments(doc: str) -> argparse.ArgumentParser:
    """The engine's trainer options (``engine.run.run_arguments``) and ``--max-steps``."""
    from engine import run as engine
    p = engine.run_arguments(doc)
    p.add_argument("--max-steps", type=int, default=0, metavar="N",
                   help="stop after N optimizer steps in all (checkpointed, resumable); "
                        "0: no limit")
    return p


def run_trainer(args, name: str, final: str, length: Callable[[Any], tuple[int, str]],
                train: Callable) -> int:
    """A one-process trainer's ``main``: its run folder (``RUN.NAME`` or ``name``), nothing to
    do when ``length(cfg)`` gives 0 epochs (with the key that set them), else
    ``train(cfg, resume, run, device, max_steps)`` in the engine's run (``final``: the weights
    file that ``--overwrite`` deletes with the checkpoints). A :class:`engine.run.RunError` is
    reported with the last good checkpoint."""
    from engine import run as engine
    from utils.logger import setup_logging
    setup_logging()

    def run_one(args, cfg, resume, run_dir) -> int:
        if engine.nothing_to_do(*length(cfg)):
            return 0
        device = engine.single_process_device(cfg)
        with engine.Run(run_dir, cfg, resume, device, args.overwrite, [final]) as run:
            return train(cfg, resume, run, device, args.max_steps)
    return engine.run_main(args, lambda c: c.RUN.NAME or name, run_one)


class TrainerEpochs:
    """The engine's bookkeeping around a one-process trainer's own loop, used as::

        with TrainerEpochs(run, progress, loader, sampler, epochs, state, schedulers,
                           max_steps, log) as loop:
            for batch, data_time in loop:       # batch[-1]: the images it skipped
                ...one optimizer step, loop.meters.update(...), loop.step_done(lr=...)
            loop.finish(weights, file name, what)   # unless it stopped early

    Iterating runs the epochs from ``progress`` on (a resumed epoch skips the batches it had
    seen) and, after each batch, ends the epoch when it is done (every scheduler steps), writes
    a checkpoint of ``state()`` at each epoch end, every RUN.CKPT_EVERY steps and on a stop,
    and stops (``stopped``) on SIGTERM / Ctrl-C or after ``max_steps`` steps in all."""

    def __init__(self, run, progress, loader, sampler, epochs: int, state: Callable[[], dict],
                 schedulers: list, max_steps: int, log: logging.Logger):
        self.run, self.progress, self.loader, self.sampler = run, progress, loader, sampler
        self.epochs, self.state, self.schedulers = epochs, state, schedulers
        self.max_steps, self.log = max_steps, log
        self.steps_per_epoch = math.ceil(len(loader.dataset) / loader.batch_size)
        self.total = self.steps_per_epoch * epochs
        self.meters = self.stop = None
        self.stopped = False

    def __enter__(self) -> "TrainerEpochs":
        from engine import run as engine
        self.meters = self.run.metrics(self.total)
        self.stop = engine.StopRequest()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.restore()

    def __iter__(self):
        """``(batch, data_time)`` per batch; the bookkeeping runs once the loop body is done."""
        p = self.progress
        while p.epoch < self.epochs:
            self.sampler.set_epoch(p.epoch, skip=p.epoch_step * self.loader.batch_size)
            t_data = time.perf_counter()
            for batch in self.loader:
                data_time = time.perf_counter() - t_data
                p.epoch_step += 1
                p.skipped += batch[-1]
                yield batch, data_time
                if self._after_batch(stepped=batch[0] is not None):
                    return
                if p.epoch_step == 0:
                    break
                t_data = time.perf_counter()

    def step_done(self, lr: float) -> None:
        """Count the optimizer step just taken and log it (every RUN.LOG_EVERY steps, and the
        last), after ``meters.update``."""
        p = self.progress
        p.step += 1
        self.run.log_step(p.step, p.step == self.total, lr=lr, epoch=p.epoch,
                          skipped_images=p.skipped)

    def _after_batch(self, stepped: bool) -> bool:
        """End the epoch when it is done and checkpoint when due; True (and said so) to stop."""
        p, stop = self.progress, self.stop
        if p.epoch_step == self.steps_per_epoch:                 # epoch done
            p.epoch += 1
            p.epoch_step = 0
            for scheduler in self.schedulers:
                scheduler.step()
        self.stopped = bool(stop.requested) or bool(self.max_steps and p.step >= self.max_steps)
        if (p.epoch_step == 0 or self.stopped
                or (stepped and p.step % self.run.cfg.RUN.CKPT_EVERY == 0)):
            self.run.save_checkpoint(p, self.state, reason=stop.requested)
        if self.stopped:
            self.log.warning("stopped at step %d; resume with --resume auto", p.step)
        return self.stopped

    def finish(self, weights: dict, name: str, what: str) -> None:
        """Unless the run stopped early: its final ``weights`` file ``name`` (under the engine's
        finite check) and the last log line."""
        if self.stopped:
            return
        final = self.run.save_final(weights, name, self.progress.step)
        self.log.info("done: %d steps; %s in %s", self.progress.step, what, final)
