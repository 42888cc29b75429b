"""Checkpoint files: the one safe loader, atomic saves, the reference's formats, RNG states.

Every file the project reads with torch goes through :func:`load_file`, which unpickles with
``weights_only=True`` (and a ``map_location``): tensors, containers and plain Python values
only. A file whose pickle needs anything else (a class, a function: what an attacker's
``__reduce__`` payload is) is refused with :class:`UnsafeCheckpointError`, naming the file and
the objects it wanted; nothing in it runs. There is no fallback to full unpickling. The files
this accepts include the reference's plain state dicts (``dsfd_vgg_0.880.pth``,
``Face-Detector.pth``, HLA ``trainer_<it>.pth``, ``Illumination-Enhancer.pth``), DSFD.pytorch's
``{"epoch", "weight"}``, mmdetection's ``{"meta", "state_dict", "optimizer"}`` saved on CUDA
(``yunet_n.pth``) and every checkpoint of ours (RNG and loader states are tensors and plain
values on purpose).

Our training checkpoints are dicts ``{"model": <state_dict>, "optimizer": ..., "scheduler": ...,
"step": int, ..., "config": dict, "rng": ...}``; :func:`detector_state_dict` finds the
detector's plain state dict in any supported format.
"""
from __future__ import annotations

import logging
import pickle
import random
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from utils.files import atomic_write, resolve_path

log = logging.getLogger(__name__)

WRAPPER_PREFIXES = ("module.", "net.")
CHECKPOINT_RE = re.compile(r"ckpt_(\d+)\.pth")          # periodic checkpoints: ckpt_<step>.pth


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A file that ``weights_only`` loading refuses: it needs arbitrary unpickling."""


def load_file(path: str | Path, what: str = "checkpoint",
              map_location: str | torch.device = "cpu") -> Any:
    """Load ``path`` (``weights_only=True``) onto ``map_location``: the project's one loader.
    Raises FileNotFoundError naming ``what`` when the file is missing, UnsafeCheckpointError
    when it is not a plain tensor file, RuntimeError naming it when it is corrupt."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"refusing to load {what} {path}: it is not a plain tensor file, and unpickling it "
            f"in full could run code stored in it ({_first_line(exc)}). Only plain state dicts "
            f"and checkpoints of tensors and Python values are loaded; re-save a file you trust "
            f"as its state dict") from None
    except (RuntimeError, EOFError) as exc:          # truncated or not a torch file at all
        raise RuntimeError(f"{what} {path} could not be read: {_first_line(exc)}") from exc


def _first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    found = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), None)
    return (found or (lines[0] if lines else type(exc).__name__))[:300]


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` atomically (see :mod:`utils.files`); raises ``WriteError`` naming ``path``
    on failure, leaving any previous file intact."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def strip_prefix(state: Mapping[str, Any], prefix: str) -> dict:
    """Keys that start with ``prefix``, with it removed (the others are dropped)."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def detector_state_dict(obj: Mapping[str, Any]) -> dict:
    """The plain detector state dict inside any supported checkpoint format, the one unwrapper
    of every family's weights: ours (``model``, HLA trainer layout ``net.*`` included), the
    reference's plain and trainer dicts, DSFD.pytorch's ``{"weight"}``, mmdetection's ``{"meta",
    "state_dict", "optimizer"}`` (the released YuNet files), Pytorch_Retinaface's plain or
    ``{"state_dict"}`` files, and DataParallel saves (``module.``)."""
    if "model" in obj and isinstance(obj["model"], Mapping):       # ours
        obj = obj["model"]
    elif "weight" in obj and isinstance(obj["weight"], Mapping):   # DSFD.pytorch checkpoint
        obj = obj["weight"]
    elif "state_dict" in obj and isinstance(obj["state_dict"], Mapping):   # mmdetection
        obj = obj["state_dict"]
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


def init_detector(net: torch.nn.Module, cfg) -> Mapping | None:
    """Initialise a training run's detector from the config: MODEL.WEIGHTS (any supported
    format), else MODEL.BASENET (the VGG base, ``vgg16_reducedfc.pth``), else nothing (from
    scratch). Returns the MODEL.WEIGHTS file as loaded (a trainer file's heads initialise the
    task heads), None otherwise."""
    if cfg.MODEL.WEIGHTS:
        path = resolve_path(cfg.MODEL.WEIGHTS)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (set by config key MODEL.WEIGHTS; "
                                    f"MODEL.WEIGHTS='' trains from scratch)")
        obj = load_file(path, "detector weights (MODEL.WEIGHTS)")
        net.load_state_dict(detector_state_dict(obj))
        log.info("initialised the detector from %s", path)
        return obj
    if cfg.MODEL.BASENET:
        path = resolve_path(cfg.MODEL.BASENET)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (set by config key MODEL.BASENET)")
        net.vgg.load_state_dict(load_file(path, "VGG weights (MODEL.BASENET)"))
        log.info("initialised the VGG base from %s", path)
    else:
        log.info("training from scratch (MODEL.WEIGHTS and MODEL.BASENET are empty)")
    return None


def non_finite_tensors(state: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Names of the floating-point tensors of a (nested) state dict that hold NaN or Inf."""
    bad = []
    for k, v in state.items():
        if isinstance(v, Mapping):
            bad += non_finite_tensors(v, f"{prefix}{k}.")
        elif torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            bad.append(f"{prefix}{k}")
    return bad


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

def checkpoint_steps(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``ckpt_<step>.pth`` in ``run_dir``, by step."""
    found = []
    for p in Path(run_dir).glob("ckpt_*.pth"):
        m = CHECKPOINT_RE.fullmatch(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest ``ckpt_<step>.pth`` in ``run_dir`` (by step), or None."""
    found = checkpoint_steps(run_dir)
    return found[-1][1] if found else None


def prune_checkpoints(run_dir: str | Path, keep: int, newest: int | None = None) -> list[Path]:
    """Delete all but the ``keep`` newest periodic checkpoints (keep <= 0: delete none).
    ``newest``: the step just saved; only checkpoints up to it count, so the one just written is
    never deleted, nor any of a later step (left by an abandoned run this one resumed before).
    Returns the deleted files."""
    if keep <= 0:
        return []
    found = [(s, p) for s, p in checkpoint_steps(run_dir) if newest is None or s <= newest]
    old = [p for _, p in found[:-keep]]
    for p in old:
        p.unlink(missing_ok=True)
    return old
