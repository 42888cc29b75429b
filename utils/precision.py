"""One switch for numeric precision: ``--precision auto|fp32|bf16``.

:func:`resolve_precision` turns the switch, the device and the detector family into the
existing low-level machinery: ``RUN.AMP`` (autocast dtype) and ``RUN.CHANNELS_LAST`` (tensor
layout), plus ``fold_bn`` (inference only: BatchNorm folded into the convolution before it).

* ``fp32``: the reference path, unchanged: fp32, NCHW, BatchNorm as trained. Every reference
  check (DSFD's forward, loss, training step and multi-scale voting; the released YuNet's
  parity with ``cv2.FaceDetectorYN``) runs this way.
* ``bf16``: bf16 autocast + channels_last (+ BatchNorm folded for inference).
* ``auto``: bf16 + channels_last on a CUDA device that supports bf16; on a CPU the per-family
  rule :data:`CPU_AUTO`, measured by ``bench/bench_precision.py`` (docs/DECISIONS.md gives the
  numbers): bf16 only where it is faster and its detections stay >= 98% equal to fp32 on real
  photos, and never for the reference paths (DSFD, the released YuNet); ``reference=True``
  (the evaluation protocol of ``test.py``) keeps the exact fp32 path on a CPU whatever the
  family.

The CPU rule's "fast fp32" (``fp32-fast``: fp32 maths, channels_last, BatchNorm folded) gives the
light detectors' detections equal to the reference path up to float rounding (under 1e-4 px on
real photos), 1.4-1.8x faster at 1 thread and several times at 2 (bench/bench_fast_path.py);
``--precision fp32`` is the switch back to the exact bits.

This module imports nothing of the project (``utils/``); callers pass the family name
(:func:`family_of` maps ``MODEL.NAME`` to it).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

PRECISION_CHOICES = ("auto", "fp32", "bf16")

# ``auto`` on a CPU, per detector family (bench/bench_precision.py; docs/DECISIONS.md):
# "fp32" the exact reference path, "fp32-fast" fp32 maths with BN folded + channels_last.
CPU_AUTO = {"dsfd": "fp32", "yunet": "fp32-fast", "retinaface": "fp32-fast"}


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``name`` (fp32 | fp32-fast | bf16), ``amp`` (the ``RUN.AMP``
    value), ``channels_last``, ``fold_bn`` (inference) and why it was chosen."""

    name: str
    amp: str
    channels_last: bool
    fold_bn: bool
    reason: str


def family_of(model_name: str) -> str:
    """dsfd | yunet | retinaface | the name itself for other detectors."""
    for family in ("dsfd", "yunet", "retinaface"):
        if model_name.startswith(family):
            return family
    return model_name


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 natively (CUDA: compute capability >= 8 / the driver says
    so; CPU: oneDNN's bf16 kernels, i.e. AVX512-BF16 or AMX)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def _make(name: str, reason: str) -> Precision:
    if name == "bf16":
        return Precision("bf16", "bf16", True, True, reason)
    if name == "fp32-fast":
        return Precision("fp32-fast", "none", True, True, reason)
    return Precision("fp32", "none", False, False, reason)


def resolve_precision(name: str, device: torch.device | str, family: str = "",
                      reference: bool = False) -> Precision:
    """The :class:`Precision` of ``--precision name`` on ``device`` for ``family`` (module
    doc). An unknown name raises naming the flag."""
    if name not in PRECISION_CHOICES:
        raise ValueError(f"--precision {name!r} is not one of {', '.join(PRECISION_CHOICES)}")
    device = torch.device(device)
    if name == "fp32":
        return _make("fp32", "asked for (--precision fp32)")
    if name == "bf16":
        if not bf16_supported(device):
            raise ValueError(f"--precision bf16: {device} has no native bf16 support "
                             f"(use --precision fp32 or auto)")
        return _make("bf16", "asked for (--precision bf16)")
    if device.type == "cuda":
        if bf16_supported(device):
            return _make("bf16", "auto: CUDA device with bf16")
        return _make("fp32", "auto: CUDA device without bf16")
    if reference:
        return _make("fp32", "auto: the reference protocol runs in fp32 on a CPU")
    choice = CPU_AUTO.get(family, "fp32")
    if choice == "bf16" and not bf16_supported(device):
        choice = "fp32"
    return _make(choice, f"auto: CPU rule for {family or 'this detector'} ({choice})")


def add_precision_argument(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """``--precision auto|fp32|bf16``, the same help in every tool."""
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default=default,
                        help="auto (default): bf16 + channels_last on GPUs with bf16, the "
                             "measured per-detector rule on CPUs (utils/precision.py); fp32: "
                             "the exact reference path; bf16: bf16 autocast + channels_last")


def apply_precision(cfg, precision: Precision, asked: str) -> Precision:
    """Write ``precision`` into ``cfg.RUN.AMP`` / ``cfg.RUN.CHANNELS_LAST``. With ``asked ==
    'auto'`` keys the user set away from their defaults (``RUN.AMP != 'none'`` or
    ``RUN.CHANNELS_LAST``) win and are kept; an explicit fp32/bf16 sets both. Returns what
    is in effect."""
    if asked == "auto" and (cfg.RUN.AMP != "none" or cfg.RUN.CHANNELS_LAST):
        return Precision(cfg.RUN.AMP if cfg.RUN.AMP != "none" else "fp32", cfg.RUN.AMP,
                         bool(cfg.RUN.CHANNELS_LAST), False,
                         "RUN.AMP / RUN.CHANNELS_LAST set in the config")
    cfg.RUN.AMP, cfg.RUN.CHANNELS_LAST = precision.amp, precision.channels_last
    return precision
