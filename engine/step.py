"""The training step under train.py and pretrain_fast_headers.py; each script keeps its own
loop on top (STYLE habit 4): batches -> ``loss_dict = model(...)`` -> weighted sum ->
``engine.run.check_loss`` -> :func:`backward_step` -> ``scheduler.step()`` -> :func:`record` ->
:func:`checkpoint_or_stop`.

* the detection(+SSL) step of train.py: its :class:`Parts` (built by train.py), the batches of
  one step beside the detection batch (:func:`next_batches`) and its loss dict
  (:func:`detection_losses`);
* the set-up around any step (:func:`memory_format`, :func:`trainable`, :func:`grad_scaler`,
  :func:`wrap_ddp`) and what a checkpoint holds besides the engine's own entries
  (:func:`checkpoint_state`, :func:`restore_state`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

import torch
from torch.nn.parallel import DistributedDataParallel

from adapt.hla.sources import next_ssl_batches
from adapt.hla.trainer import HLATrainer, average_batchnorm_statistics, trainer_state_dict
from adapt.pseudo.student import PseudoBatch, Student, pseudo_losses
from engine import run as engine
from models.inference import autocast
from utils import dist


def memory_format(cfg) -> torch.memory_format:
    """RUN.CHANNELS_LAST as a memory format."""
    return torch.channels_last if cfg.RUN.CHANNELS_LAST else torch.contiguous_format


def trainable(module: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters the optimizer steps, with their names (for the gradient check): those
    that require gradients (not the MoCo key parts, not a frozen detector)."""
    return [(n, p) for n, p in module.named_parameters() if p.requires_grad]


def grad_scaler(cfg, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler, enabled for RUN.AMP=fp16 only."""
    return torch.amp.GradScaler(device.type, enabled=cfg.RUN.AMP == "fp16")


def wrap_ddp(trainer: torch.nn.Module) -> torch.nn.Module:
    """Under DDP one wrapper around detector + heads syncs every gradient; the MoCo queues stay
    identical through the gathered enqueue, so DDP must not overwrite them with rank 0's
    buffers. ``trainer`` itself in one process."""
    if dist.is_distributed():
        return DistributedDataParallel(trainer, broadcast_buffers=False)
    return trainer


def build_optimizer(params, solver) -> torch.optim.Optimizer:
    """SGD as the reference (momentum 0.9, wd 5e-4); AdamW for short from-scratch runs such as the
    demo. The schedule sets the lr, starting at WARMUP_LR."""
    if solver.OPTIMIZER == "sgd":                 # the choices are checked at start-up
        return torch.optim.SGD(params, lr=solver.WARMUP_LR, momentum=solver.MOMENTUM,
                               weight_decay=solver.WEIGHT_DECAY)
    return torch.optim.AdamW(params, lr=solver.WARMUP_LR, weight_decay=solver.WEIGHT_DECAY)


def checkpoint_state(trainer, optimizer, scheduler, scaler, ssl_loaders: Mapping) -> dict:
    """What a checkpoint holds besides the engine's progress, config and RNG states; the
    ``model`` entry is the HLA trainer state dict (``net.*`` plus the heads, the layout of
    the reference's ``trainer_<it>.pth``)."""
    return {"model": trainer.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "ssl_loaders": {name: loader.state_dict() for name, loader in ssl_loaders.items()}}


def restore_state(ckpt: Mapping, trainer, optimizer, scheduler, scaler, lr: float | None = None,
                  **group_values) -> engine.Progress:
    """The inverse of :func:`checkpoint_state` (the loaders aside: ``engine.run.restore_loaders``),
    then the config's optimizer values over the checkpoint's (``engine.run.apply_optimizer_config``:
    ``lr`` and ``group_values``); returns the restored progress (RNG states included)."""
    trainer.load_state_dict(trainer_state_dict(ckpt))
    progress = engine.restore(ckpt, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
    engine.apply_optimizer_config(optimizer, scheduler, lr=lr, **group_values)   # current config
    return progress


def backward_step(step: int, loss: torch.Tensor, loss_dict: Mapping, optimizer, scaler,
                  named_params: list, grad_clip: float = 0.0) -> None:
    """Backward, the gradient norm clipped to ``grad_clip`` (when > 0), the finite-gradient
    check of optimizer step ``step`` (fp16 skips inf steps by itself), the optimizer step."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    norm = None
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_([p for _, p in named_params], grad_clip)
    if not scaler.is_enabled():
        engine.check_gradients(step, named_params, loss_dict, norm)
    scaler.step(optimizer)
    scaler.update()


def record(meters, loss: torch.Tensor, loss_dict: Mapping, **scalars) -> None:
    """The step's loss, its terms and ``scalars`` (data time, counts) into the run's meters."""
    meters.update(loss=loss.detach(), **{k: v.detach() for k, v in loss_dict.items()},
                  **scalars)


def checkpoint_or_stop(run: engine.Run, progress: engine.Progress, state, stop: engine.StopRequest,
                       stopping: bool, due: bool, log: logging.Logger) -> bool:
    """A checkpoint when ``due`` or ``stopping`` (a stop request, seen by
    ``engine.run.check_loss`` on every rank); True (said in ``log``) when the run stops here."""
    if due or stopping:
        run.save_checkpoint(progress, state, reason=stop.requested)
    if stopping:
        log.warning("stopped at step %d; resume with --resume auto", progress.step)
    return stopping


# -- the detection(+SSL) step of train.py --

@dataclass
class Parts:
    """What train.py's step works on."""
    trainer: HLATrainer
    net: torch.nn.Module              # the trainer, or its DDP wrapper
    named_params: list                # what the optimizer steps (not the MoCo key parts)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    loader: Any                       # the labelled detection batches, with their sampler
    sampler: Any
    ssl_loaders: dict                 # one per task stream
    student: Student                  # the pseudo-labelled target batches, the EMA teacher
    zero_shot: Any                    # adapt.zero_shot.ZeroShot (ZERO_SHOT.ENABLE) or None
    memory_format: torch.memory_format

    def state(self) -> dict:
        """What a checkpoint holds besides the engine's entries."""
        return {**checkpoint_state(self.trainer, self.optimizer, self.scheduler, self.scaler,
                                   self.ssl_loaders), **self.student.state_dict()}


class StepBatch(NamedTuple):
    images: torch.Tensor              # the detection batch (+ its dark copies), on the CPU
    targets: list
    ssl: dict                         # stream -> batch, on the device
    pl: PseudoBatch | None            # the pseudo-labelled target batch
    n_clean: int | None               # the detection images before the dark copies
    skipped: int                      # unreadable images met by the task and target loaders


def next_batches(parts: Parts, images, targets, step: int, rank: int, device) -> StepBatch:
    """With the detection batch of optimizer step ``step + 1``: the task batches, the
    pseudo-labelled target batch (with EMA.REFRESH the teacher's pass counts as data time) and
    the camera-model dark copies (same boxes, on the CPU)."""
    ssl_batches, ssl_skipped = next_ssl_batches(parts.ssl_loaders, device, parts.memory_format)
    pl = parts.student.batch(step, rank, device, parts.memory_format)
    n_clean = None
    if parts.zero_shot is not None:
        images, targets, n_clean = parts.zero_shot.views(images, targets, step, rank)
    return StepBatch(images, targets, ssl_batches, pl, n_clean,
                     ssl_skipped + (pl.skipped if pl else 0))


def detection_losses(parts: Parts, criterion, batch: StepBatch, device, amp: str) -> dict:
    """The loss dict of one step on ``device``: detection, task, target-batch (``pl_*``,
    ``adapt.pseudo.student.pseudo_losses``) and zero-shot terms."""
    images = batch.images.to(device, non_blocking=True, memory_format=parts.memory_format)
    targets = [t.to(device, non_blocking=True) for t in batch.targets]
    net, pl, zero_shot = parts.trainer.net, batch.pl, parts.zero_shot
    with autocast(device, amp):
        out, ssl_losses = parts.net(images, batch.ssl)
        # the target batch through the detector itself: DDP's gradient hooks sit on the
        # parameters, so the one backward reduces both passes
        pl_out = net(pl.images) if pl is not None else None
        zs_losses = zero_shot.losses(net, images, batch.n_clean) if zero_shot is not None else {}
    if pl_out is not None:            # this pass ran outside the trainer: its BN statistics,
        average_batchnorm_statistics(net)                       # as the others'
    return {**criterion(out, targets, tuple(images.shape[-2:])), **ssl_losses,
            **pseudo_losses(criterion, pl_out, pl), **zs_losses}
