"""What every training entry point shares: config resolution with ``--resume``, and turning
SIGTERM / Ctrl-C into a checkpoint-then-exit request."""
from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Callable

from data import config as config_lib
from utils.checkpoint import latest_checkpoint, load_file

log = logging.getLogger(__name__)


def resolve_path(path: str, root: str = ".") -> Path:
    """A config path: absolute, or relative to ``root`` (the working directory)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(root) / p


def resolve_run(args, run_name: Callable[[object], str]):
    """``(config, checkpoint to resume or None, run folder)`` from ``args.config`` (presets),
    ``args.opts`` (overrides) and ``args.resume`` (a path or ``auto``: the newest checkpoint of
    the run folder). When resuming, the checkpoint's config is the base and the presets and
    overrides apply on top, so e.g. ``SOLVER.MAX_STEPS`` can be raised."""
    cfg = config_lib.load_config(args.config, args.opts)
    resume = None
    if args.resume:
        run_dir = resolve_path(cfg.RUN.OUTPUT_DIR) / run_name(cfg)
        resume = latest_checkpoint(run_dir) if args.resume == "auto" else Path(args.resume)
        if resume is None:
            log.warning("--resume auto: no checkpoint in %s, starting a new run", run_dir)
        else:
            saved = load_file(resume, "checkpoint given by --resume")
            cfg = config_lib.load_config(args.config, args.opts,
                                         base=config_lib.merge_saved(saved["config"]))
    return cfg, resume, resolve_path(cfg.RUN.OUTPUT_DIR) / run_name(cfg)


class StopRequest:
    """Turns SIGTERM / SIGINT into a flag the loop checks after each step; a second Ctrl-C
    interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("received %s: finishing this step, then checkpointing and exiting",
                    signal.Signals(signum).name)

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
