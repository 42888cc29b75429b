"""Logging for training runs: a MetricLogger line, ``metrics.jsonl`` and TensorBoard.

Only rank 0 writes; the other ranks log warnings and errors only.
"""
from __future__ import annotations

import datetime
import json
import logging
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from utils import dist


def setup_logging(run_dir: Path | None = None, level: int = logging.INFO) -> None:
    """Root logger to stderr (and ``run_dir/log.txt``) on rank 0; warnings only elsewhere."""
    root = logging.getLogger()
    for handler in list(root.handlers):          # only ours: leave e.g. pytest's in place
        if getattr(handler, "_hla_face", False):
            root.removeHandler(handler)
            handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    if not dist.is_main():
        fmt = logging.Formatter(f"[rank {dist.rank()}] %(asctime)s %(levelname)s: %(message)s",
                                "%H:%M:%S")
        level = logging.WARNING
    handlers = [logging.StreamHandler(sys.stderr)]
    if run_dir is not None and dist.is_main():
        handlers.append(logging.FileHandler(Path(run_dir) / "log.txt"))
    for handler in handlers:
        handler.setFormatter(fmt)
        handler._hla_face = True
        root.addHandler(handler)
    root.setLevel(level)


class MetricLogger:
    """Averages per-step scalars over each logging interval and writes them: a log line
    (losses, lr, it/s, data time, ETA, memory), ``metrics.jsonl`` and TensorBoard, on rank 0."""

    def __init__(self, run_dir: Path | None, total_steps: int, tensorboard: bool = True,
                 append: bool = True):
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.total_steps = total_steps
        self.log = logging.getLogger("train")
        self.jsonl = None
        self.tb = None
        if run_dir is not None and dist.is_main():
            # a resumed run appends to its record, a new one starts it afresh
            self.jsonl = open(Path(run_dir) / "metrics.jsonl", "a" if append else "w",
                              buffering=1)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                    self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
                except ImportError:
                    self.log.warning("tensorboard is not installed: RUN.TENSORBOARD ignored")
        self._t_last = time.perf_counter()
        self._steps = 0

    def update(self, **values) -> None:
        """Add one step's scalars (floats or 0-d tensors)."""
        for k, v in values.items():
            self.sums[k] += float(v.item() if torch.is_tensor(v) else v)
            self.counts[k] += 1
        self._steps += 1

    def averages(self, device="cpu") -> dict[str, torch.Tensor]:
        """This interval's means, as tensors (ready for a cross-rank average)."""
        return {k: torch.tensor(self.sums[k] / self.counts[k], device=device) for k in self.sums}

    def write(self, step: int, values: dict) -> dict:
        """Log ``values`` (e.g. averages plus lr) at ``step`` and start a new interval."""
        now = time.perf_counter()
        it_s = self._steps / max(now - self._t_last, 1e-9)
        self._t_last, self._steps = now, 0
        self.sums.clear()
        self.counts.clear()
        record = {"step": step, **{k: float(v) for k, v in values.items()}, "it_s": it_s}
        if torch.cuda.is_available():
            record["mem_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
        if not dist.is_main():
            return record
        eta = datetime.timedelta(seconds=int((self.total_steps - step) / max(it_s, 1e-9)))
        parts = [f"step {step}/{self.total_steps}"]
        parts += [f"{k} {v:.3e}" if k == "lr" else f"{k} {v:.4g}"
                  for k, v in record.items() if k != "step"]
        parts.append(f"eta {eta}")
        self.log.info("  ".join(parts))
        if self.jsonl is not None:
            self.jsonl.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "step":
                    self.tb.add_scalar(k, v, step)
        return record

    def write_values(self, step: int, values: dict, what: str = "eval") -> None:
        """Log scalars that are not per-step averages (e.g. a validation result) at ``step``:
        one line, one ``metrics.jsonl`` record, TensorBoard scalars under ``what/``."""
        if not dist.is_main():
            return
        self.log.info("%s at step %d: %s", what, step,
                      "  ".join(f"{k} {float(v):.4g}" for k, v in values.items()))
        if self.jsonl is not None:
            self.jsonl.write(json.dumps({"step": step, **{k: float(v) for k, v in
                                                          values.items()}}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"{what}/{k}", float(v), step)

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
