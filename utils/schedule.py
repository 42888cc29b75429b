"""The reference's learning-rate schedule (linear warm-up, steps), as a function of the step count.

``step`` is the number of optimizer steps already taken. During warm-up
``lr = WARMUP_LR + (LR - WARMUP_LR) * step / WARMUP_ITERS``, then LR, and ``LR * GAMMA ** k``
once k of the LR_STEPS are passed. The reference updates the rate only while the counter is
below WARMUP_ITERS, so it keeps the last warm-up value (9.99e-5 with the defaults, never
exactly LR) until the first LR step; SOLVER.WARMUP_REFERENCE_END=True restores that.
"""
from __future__ import annotations

from typing import Mapping

import torch


def lr_at(step: int, solver: Mapping) -> float:
    passed = sum(step >= s for s in solver["LR_STEPS"])
    if passed:
        return solver["LR"] * solver["GAMMA"] ** passed
    warmup = solver["WARMUP_ITERS"]
    if step >= warmup and not solver.get("WARMUP_REFERENCE_END", False):
        return solver["LR"]
    if warmup <= 0:
        return solver["LR"]
    frac = min(step, warmup - 1) / warmup
    return solver["WARMUP_LR"] + (solver["LR"] - solver["WARMUP_LR"]) * frac


class ReferenceSchedule(torch.optim.lr_scheduler.LRScheduler):
    """Sets every group's lr to :func:`lr_at` of the scheduler's step count; its state is the
    step count alone (the schedule's values come from the current config)."""

    def __init__(self, optimizer: torch.optim.Optimizer, solver: Mapping, last_epoch: int = -1):
        self.solver = dict(solver)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [lr_at(self.last_epoch, self.solver) for _ in self.optimizer.param_groups]

    def state_dict(self):
        return {"last_epoch": self.last_epoch}

    def load_state_dict(self, state):
        self.last_epoch = state["last_epoch"]
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]
