"""Exponential moving average of a model: the mean teacher (Tarvainen & Valpola, 2017).

After every optimiser step of the student, ``update(student)`` moves each floating-point
parameter of the teacher towards the student's::

    theta_teacher <- d_k * theta_teacher + (1 - d_k) * theta_student

where ``k`` counts the updates (1 for the first) and ``d_k = decay`` or, with a warm-up time
constant ``tau > 0``, ``d_k = decay * (1 - exp(-k / tau))`` (as YOLOv5's ModelEMA): the first
updates then copy most of the student (``d_1`` is about ``decay / tau``), and ``d_k`` approaches
``decay`` after a few ``tau`` updates, so an early teacher is not stuck near its random or
source-only start. Buffers (BatchNorm running statistics, counters) are copied from the student
as they are: an average of running statistics has no meaning of its own, and the student's are
the statistics of its current weights.

The teacher is a frozen deep copy in eval mode (``ema.module``), on the student's device unless
``device`` says otherwise. ``state_dict()`` holds tensors only (the teacher's state dict and the
update count), so a checkpoint with it loads through the project's safe (weights-only) loader;
``load_state_dict`` restores both, and a resumed run continues bit-exactly.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel (or DataParallel) wrapper."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel,
                                              nn.DataParallel)) else model


class ModelEMA:
    """The mean teacher of ``model``: see the module doc for the update rule."""

    def __init__(self, model: nn.Module, decay: float = 0.9996, tau: float = 0.0,
                 device: torch.device | str | None = None):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        if tau < 0:
            raise ValueError(f"EMA warm-up tau must be >= 0, got {tau}")
        self.decay, self.tau = float(decay), float(tau)
        self.module = copy.deepcopy(unwrap(model)).eval()
        if device is not None:
            self.module.to(device)
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = 0
        self._names = [n for n, p in self.module.named_parameters() if p.is_floating_point()]

    def current_decay(self, updates: int | None = None) -> float:
        """``d_k`` for update ``k`` (default: the next one)."""
        k = self.updates + 1 if updates is None else updates
        if self.tau > 0:
            return self.decay * (1.0 - math.exp(-k / self.tau))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """One EMA step towards ``model`` (the student; a DDP wrapper is unwrapped); returns the
        decay used."""
        d = self.current_decay()
        self.updates += 1
        src = dict(unwrap(model).named_parameters())
        dst = dict(self.module.named_parameters())
        if set(src) != set(dst):
            raise ValueError(f"EMA update: the model's parameters differ from the teacher's "
                             f"(only in model: {sorted(set(src) - set(dst))[:3]}, only in "
                             f"teacher: {sorted(set(dst) - set(src))[:3]})")
        ema = [dst[n] for n in self._names]
        new = [src[n].detach().to(device=dst[n].device, dtype=dst[n].dtype) for n in self._names]
        if ema:
            torch._foreach_mul_(ema, d)
            torch._foreach_add_(ema, new, alpha=1.0 - d)
        for n, p in dst.items():                 # integer parameters (rare): copied
            if not p.is_floating_point():
                p.copy_(src[n])
        self._copy_buffers(model)
        return d

    @torch.no_grad()
    def _copy_buffers(self, model: nn.Module) -> None:
        src = dict(unwrap(model).named_buffers())
        pairs = [(b, src[n]) for n, b in self.module.named_buffers() if n in src]
        if pairs:
            torch._foreach_copy_([d for d, _ in pairs], [s.to(d.device) for d, s in pairs])

    def state_dict(self) -> dict:
        """``{"module": teacher state dict, "updates": int64 tensor}`` (tensors only)."""
        return {"module": self.module.state_dict(),
                "updates": torch.tensor(self.updates, dtype=torch.int64)}

    def load_state_dict(self, state: dict) -> None:
        missing = {"module", "updates"} - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)}")
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
