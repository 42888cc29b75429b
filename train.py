"""Train the detector with joint high-low adaptation.

    python train.py [--config PRESET.yaml] [KEY.SUB=VALUE ...]

Each step takes a WIDER detection batch and one batch from every enabled self-supervised task
(TRAIN.* toggles; by default the 3x3 jigsaw on H and E(L), MoCo on E(L), MoCo across H / D(H)),
and minimises the detection loss plus the weighted task losses (REFERENCE 2.5, 4, Appendix C).
``--config configs/detection_only.yaml`` turns the tasks off (plain DSFD fine-tuning). The
detector starts from MODEL.WEIGHTS (a DSFD file, or a trainer checkpoint holding the heads too)
and the heads from SSL.HEADS_DIR/<name>_head.pth (SSL.LOAD_HEADS).

One process on the CPU or one GPU; under ``torchrun --nproc_per_node=N train.py ...`` the same
script runs DDP (nccl on GPUs, gloo on CPUs, several machines with the usual torchrun flags);
``--multigpu`` starts one process per visible GPU for users of the reference's command line.
SOLVER.BATCH_SIZE and SSL.BATCH_SIZE are global batches, split evenly over the processes.

Checkpoints (``RUN.OUTPUT_DIR/<run name>/ckpt_<step>.pth``) are written atomically every
RUN.CKPT_EVERY steps, at the end, and on SIGTERM or Ctrl-C; ``--resume auto`` (or a path)
continues a run exactly (queues and the position of every task loader included). A checkpoint's
``model`` entry is the HLA trainer state dict (``net.*`` plus the heads; REFERENCE 12.2). A
non-finite loss stops the run with the loss terms logged and the last good checkpoint untouched.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from data import config as config_lib
from data.loaders import build_detection_loader, resolve_path
from layers.multibox_loss import ProgressiveAnchorLoss
from models.factory import build_detector
from models.hla_trainer import HLATrainer, init_heads, trainer_state_dict
from models.inference import autocast
from models.ssl_tasks import (SSL_TASKS, build_ssl_loaders, build_tasks, check_moco_batch,
                              next_ssl_batches)
from utils import dist
from utils.checkpoint import (atomic_save, detector_state_dict, load_file,
                              prune_checkpoints, rng_state, set_rng_state)
from utils.logger import MetricLogger, setup_logging
from utils.runs import StopRequest, resolve_run
from utils.schedule import ReferenceSchedule

log = logging.getLogger("train")

# reference-style run-folder tags per toggle
TASK_TAGS = {"ROTATION": "rot", "JIGSAW_33": "jig33", "JIGSAW_22": "jig22", "JIGSAW_41": "jig41",
             "JIGSAW_14": "jig14", "CONTRASTIVE": "con", "CONTRASTIVE_SOURCE": "con-src",
             "CONTRASTIVE_TARGET": "con-trg", "TRANSFER_CONTRASTIVE": "tsf"}


@dataclass
class Progress:
    step: int = 0           # optimizer steps taken
    epoch: int = 0
    epoch_step: int = 0     # batches of this rank consumed in the current epoch
    skipped: int = 0        # unreadable images met so far (this rank)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", action="append", default=[], metavar="PRESET",
                   help="YAML/JSON preset file(s), applied in order before the overrides")
    p.add_argument("--resume", default="", metavar="CKPT|auto",
                   help="continue from a checkpoint, or 'auto' for the newest in the run folder")
    p.add_argument("--multigpu", action="store_true",
                   help="start one DDP process per visible GPU (same as torchrun)")
    p.add_argument("opts", nargs="*", metavar="KEY.SUB=VALUE", help="config overrides")
    return p.parse_args(argv)


def relaunch_per_gpu(argv: list[str]) -> int:
    """``--multigpu`` outside torchrun: exec torchrun with one process per visible GPU."""
    n = torch.cuda.device_count()
    if n == 0:
        logging.warning("--multigpu given but no CUDA GPU is visible: running one process")
        return main([a for a in argv if a != "--multigpu"])
    rest = [a for a in argv if a != "--multigpu"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={n}", os.path.abspath(__file__), *rest]
    os.execv(sys.executable, cmd)
    return 0                                         # not reached


def run_name(cfg) -> str:
    if cfg.RUN.NAME:
        return cfg.RUN.NAME
    tags = [f"{TASK_TAGS[k]}({cfg.TRAIN_WEIGHT[k]:f})" for k in TASK_TAGS if cfg.TRAIN[k]]
    return "_".join(["vgg_det" if cfg.MODEL.NAME == "dsfd_vgg" else cfg.MODEL.NAME, *tags])


def check_tasks(cfg) -> None:
    if not cfg.TRAIN.MAIN:
        raise ValueError("config key TRAIN.MAIN=False: detection-free training is done by "
                         "pretrain_fast_headers.py")
    missing = [k for k in TASK_TAGS if cfg.TRAIN[k] and k not in SSL_TASKS]
    if missing:
        raise NotImplementedError(
            f"config keys {', '.join('TRAIN.' + k for k in missing)} are enabled but this version "
            f"has no such self-supervised task yet; disable them (e.g. --config "
            f"configs/detection_only.yaml)")


def init_weights(model: torch.nn.Module, cfg) -> dict | None:
    """Load the detector; returns the whole file as a trainer state dict (its heads, if any,
    initialise the task heads)."""
    if cfg.MODEL.WEIGHTS:
        path = resolve_path(cfg.MODEL.WEIGHTS)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (set by config key MODEL.WEIGHTS; "
                                    f"MODEL.WEIGHTS='' trains from scratch)")
        obj = load_file(path, "detector weights")
        model.load_state_dict(detector_state_dict(obj))
        log.info("initialised the detector from %s", path)
        return trainer_state_dict(obj)
    if cfg.MODEL.BASENET:
        path = resolve_path(cfg.MODEL.BASENET)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (set by config key MODEL.BASENET)")
        model.vgg.load_state_dict(load_file(path, "VGG weights"))
        log.info("initialised the VGG base from %s", path)
    else:
        log.info("training from scratch (MODEL.WEIGHTS and MODEL.BASENET are empty)")
    return None


def build_optimizer(params, solver) -> torch.optim.Optimizer:
    """SGD as the reference (REFERENCE 2.6); AdamW for short from-scratch runs such as the
    demo. The schedule sets the lr, starting at WARMUP_LR."""
    if solver.OPTIMIZER == "sgd":
        return torch.optim.SGD(params, lr=solver.WARMUP_LR, momentum=solver.MOMENTUM,
                               weight_decay=solver.WEIGHT_DECAY)
    if solver.OPTIMIZER == "adamw":
        return torch.optim.AdamW(params, lr=solver.WARMUP_LR, weight_decay=solver.WEIGHT_DECAY)
    raise ValueError(f"config key SOLVER.OPTIMIZER must be sgd or adamw, not "
                     f"{solver.OPTIMIZER!r}")


def build_trainer(cfg, resume: Path | None) -> HLATrainer:
    """Detector, then the task heads. The MoCo key encoders copy the detector as built here,
    i.e. after its weights are loaded (the reference copies the random initialisation; a loaded
    head file or checkpoint overwrites them anyway)."""
    net = build_detector(cfg.MODEL, cfg.NUM_CLASSES)
    init_state = init_weights(net, cfg) if resume is None else None
    trainer = HLATrainer(net, build_tasks(cfg))
    if resume is None:
        init_heads(trainer, init_state, resolve_path(cfg.SSL.HEADS_DIR), cfg.SSL.LOAD_HEADS)
    for task in trainer.tasks:
        log.info("task TRAIN.%s: %s, weight %g", task.toggle, ", ".join(task.streams),
                 task.weight)
    return trainer


def save_checkpoint(path: Path, trainer, optimizer, scheduler, scaler, progress: Progress,
                    ssl_loaders, cfg):
    atomic_save({
        "model": trainer.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
        "step": progress.step, "epoch": progress.epoch, "epoch_step": progress.epoch_step,
        "skipped": progress.skipped, "config": config_lib.to_dict(cfg), "rng": rng_state(),
        "ssl_loaders": {name: loader.state_dict() for name, loader in ssl_loaders.items()},
    }, path)
    log.info("saved %s", path)


def load_checkpoint(path: Path, trainer, optimizer, scheduler, scaler) -> tuple[Progress, dict]:
    """Restore everything; returns the progress and the task loaders' positions."""
    ckpt = load_file(path, "checkpoint")
    trainer.load_state_dict(trainer_state_dict(ckpt))
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    log.info("resumed from %s at step %d", path, ckpt["step"])
    progress = Progress(ckpt["step"], ckpt["epoch"], ckpt["epoch_step"], ckpt.get("skipped", 0))
    return progress, ckpt.get("ssl_loaders", {})


def restore_loaders(ssl_loaders: dict, states: dict) -> None:
    for name, loader in ssl_loaders.items():
        if name in states:
            loader.load_state_dict(states[name])
        else:
            log.warning("the checkpoint has no position for task loader %s: starting it anew",
                        name)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.multigpu and not dist.launched_by_torchrun():
        return relaunch_per_gpu(argv)
    setup_logging()
    cfg, resume, _ = resolve_run(args, run_name)
    check_tasks(cfg)
    device = dist.pick_device(cfg.RUN.DEVICE)
    dist.init_distributed(device, cfg.RUN.DDP_BACKEND)
    try:
        return train(cfg, resume, device)
    finally:
        dist.cleanup()


def check_batches(cfg, tasks, world: int) -> None:
    for key in ("SOLVER.BATCH_SIZE",) + (("SSL.BATCH_SIZE",) if tasks else ()):
        section, name = key.split(".")
        if cfg[section][name] % world:
            raise ValueError(f"config key {key}={cfg[section][name]} must be divisible by the "
                             f"number of processes ({world})")
    check_moco_batch(cfg, tasks, cfg.SSL.BATCH_SIZE, "SSL.BATCH_SIZE")


def train(cfg, resume: Path | None, device: torch.device) -> int:
    world, rank = dist.world_size(), dist.rank()
    check_batches(cfg, build_tasks(cfg), world)
    local_batch = cfg.SOLVER.BATCH_SIZE // world
    run_dir = resolve_path(cfg.RUN.OUTPUT_DIR) / run_name(cfg)
    if dist.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        config_lib.dump(cfg, run_dir / "config.yaml")
    dist.barrier()
    setup_logging(run_dir)
    log.info("run folder %s; %d process(es) on %s; batch %d per process", run_dir, world,
             device, local_batch)
    torch.manual_seed(cfg.RUN.SEED)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    memory_format = torch.channels_last if cfg.RUN.CHANNELS_LAST else torch.contiguous_format
    trainer = build_trainer(cfg, resume)
    trainer.to(device, memory_format=memory_format)
    params = [p for p in trainer.parameters() if p.requires_grad]   # not the MoCo key parts
    optimizer = build_optimizer(params, cfg.SOLVER)
    scheduler = ReferenceSchedule(optimizer, cfg.SOLVER)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.RUN.AMP == "fp16")
    progress, loader_states = Progress(), {}
    if resume is not None:
        progress, loader_states = load_checkpoint(resume, trainer, optimizer, scheduler, scaler)
    # one wrapper around detector + heads syncs every gradient; the queues stay identical
    # through the gathered enqueue, so DDP must not overwrite them with rank 0's buffers
    net = DistributedDataParallel(trainer, broadcast_buffers=False) if dist.is_distributed() \
        else trainer

    pin = device.type == "cuda"
    loader, sampler = build_detection_loader(cfg, local_batch, rank, world, pin_memory=pin)
    ssl_loaders = build_ssl_loaders(trainer.tasks, cfg, cfg.SSL.BATCH_SIZE, rank, world, pin)
    if resume is not None:
        restore_loaders(ssl_loaders, loader_states)
    criterion = ProgressiveAnchorLoss(cfg.ANCHOR, cfg.FACE.OVERLAP_THRESH, cfg.LOSS.NEG_POS_RATIOS)
    weights = trainer.loss_weights                   # detection terms: 1
    steps_per_epoch = math.ceil(sampler.per_rank / local_batch)
    max_steps = cfg.SOLVER.MAX_STEPS
    if cfg.SOLVER.STOP_AT_EPOCH_END:                 # the reference's epoch-granular stop
        max_steps = math.ceil(max_steps / steps_per_epoch) * steps_per_epoch
    log.info("%d images, %d steps per epoch, stopping at step %d", len(loader.dataset),
             steps_per_epoch, max_steps)

    meters = MetricLogger(run_dir, max_steps, cfg.RUN.TENSORBOARD)
    stop = StopRequest()
    net.train()
    try:
        while progress.step < max_steps and progress.epoch < cfg.SOLVER.EPOCHES:
            sampler.set_epoch(progress.epoch, skip=progress.epoch_step * local_batch)
            t_data = time.perf_counter()
            for images, targets, skipped in loader:
                ssl_batches, ssl_skipped = next_ssl_batches(ssl_loaders, device, memory_format)
                data_time = time.perf_counter() - t_data
                images = images.to(device, non_blocking=True, memory_format=memory_format)
                targets = [t.to(device, non_blocking=True) for t in targets]
                with autocast(device, cfg.RUN.AMP):
                    out, ssl_losses = net(images, ssl_batches)
                loss_dict = {**criterion(out, targets, tuple(images.shape[-2:])), **ssl_losses}
                loss = sum(weights.get(k, 1.0) * v for k, v in loss_dict.items())

                flags = dist.all_reduce_sum(torch.tensor(
                    [float(not torch.isfinite(loss)), float(stop.requested)], device=device))
                if flags[0] > 0:
                    log.error("non-finite loss at step %d: %s; stopping (the last checkpoint "
                              "is kept)", progress.step + 1,
                              {k: float(v.detach()) for k, v in loss_dict.items()})
                    return 1

                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.SOLVER.GRAD_CLIP > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, cfg.SOLVER.GRAD_CLIP)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                progress.step += 1
                progress.epoch_step += 1
                progress.skipped += skipped + ssl_skipped

                meters.update(loss=loss.detach(), **{k: v.detach() for k, v in loss_dict.items()},
                              data_time=data_time)
                if progress.step % cfg.RUN.LOG_EVERY == 0 or progress.step == max_steps:
                    values = dist.all_reduce_mean_dict(meters.averages(device))
                    meters.write(progress.step, {**values, "lr": optimizer.param_groups[0]["lr"],
                                                 "epoch": progress.epoch,
                                                 "skipped_images": progress.skipped})
                stopping = flags[1] > 0
                if dist.is_main() and (progress.step % cfg.RUN.CKPT_EVERY == 0 or stopping
                                       or progress.step == max_steps):
                    save_checkpoint(run_dir / f"ckpt_{progress.step}.pth", trainer, optimizer,
                                    scheduler, scaler, progress, ssl_loaders, cfg)
                    prune_checkpoints(run_dir, cfg.RUN.KEEP_CKPTS)
                if stopping:
                    log.warning("stopped at step %d; resume with --resume auto", progress.step)
                    return 0
                if progress.step >= max_steps:
                    break
                t_data = time.perf_counter()
            else:
                progress.epoch += 1
                progress.epoch_step = 0
        if dist.is_main():
            atomic_save(trainer.net.state_dict(), run_dir / "model_final.pth")
            log.info("done: %d steps; detector weights in %s", progress.step,
                     run_dir / "model_final.pth")
        return 0
    finally:
        stop.restore()
        meters.close()


if __name__ == "__main__":
    raise SystemExit(main())
