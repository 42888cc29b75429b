"""Checkpoint files: atomic writes, loading of our and the reference's formats, prefix stripping.

Our training checkpoints are dicts ``{"model": <plain detector state_dict>, "optimizer": ...,
"scheduler": ..., "scaler": ..., "step": int, "epoch": int, "epoch_step": int, "config": dict,
"rng": ...}``. The reference's files are plain state dicts: ``dsfd_vgg_0.880.pth`` and
``Face-Detector.pth`` (186 DSFD keys), HLA ``trainer_<it>.pth`` (DSFD keys under ``net.``),
DataParallel saves (``module.``) and DSFD.pytorch's ``{"epoch", "weight"}`` dicts. Every one of
them reaches the detector through :func:`detector_state_dict`.
"""
from __future__ import annotations

import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

log = logging.getLogger(__name__)

WRAPPER_PREFIXES = ("module.", "net.")


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``:
    a crash leaves either the old file or the new one, never a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load_file(path: str | Path, what: str = "checkpoint") -> Any:
    """Load a checkpoint onto the CPU. Tries ``weights_only=True`` first; legacy pickles of the
    reference's era that it refuses are loaded in full (only do this with files you trust)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:             # noqa: BLE001 - the unpickler raises many kinds
        log.warning("%s %s is not a plain tensor file (%s); loading it as a trusted pickle",
                    what, path, type(exc).__name__)
        return torch.load(path, map_location="cpu", weights_only=False)


def strip_prefix(state: Mapping[str, Any], prefix: str) -> dict:
    """Keys that start with ``prefix``, with it removed (the others are dropped)."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def detector_state_dict(obj: Mapping[str, Any]) -> dict:
    """The plain detector state dict inside any supported checkpoint format."""
    if "model" in obj and isinstance(obj["model"], Mapping):       # ours
        obj = obj["model"]
    elif "weight" in obj and isinstance(obj["weight"], Mapping):   # DSFD.pytorch checkpoint
        obj = obj["weight"]
    state = dict(obj)
    for prefix in WRAPPER_PREFIXES:                                 # module.net.* also works
        if any(k.startswith(prefix) for k in state):
            state = strip_prefix(state, prefix)
    return state


def load_detector_weights(model: torch.nn.Module, path: str | Path, strict: bool = True) -> None:
    """Load any supported checkpoint format into ``model`` (strict by default)."""
    state = detector_state_dict(load_file(path, "detector weights"))
    result = model.load_state_dict(state, strict=strict)
    if not strict and (result.missing_keys or result.unexpected_keys):
        log.warning("loaded %s with %d missing and %d unexpected keys", path,
                    len(result.missing_keys), len(result.unexpected_keys))


# -- random-number-generator state (kept as tensors and lists so weights_only loading works) --

def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- the run folder's checkpoint index --

def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest ``ckpt_<step>.pth`` in ``run_dir`` (by step), or None."""
    files = sorted(Path(run_dir).glob("ckpt_*.pth"),
                   key=lambda p: int(p.stem.split("_")[1]) if p.stem.split("_")[1].isdigit() else -1)
    return files[-1] if files else None


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest periodic checkpoints (keep <= 0: delete none)."""
    if keep <= 0:
        return
    files = sorted(Path(run_dir).glob("ckpt_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
    for old in files[:-keep]:
        old.unlink(missing_ok=True)
