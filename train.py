"""Train the detector: ``python train.py [--config PRESET.yaml] [KEY.SUB=VALUE ...]``.

One process on the CPU or one GPU; under ``torchrun --nproc_per_node=N train.py ...`` the same
script runs DDP (nccl on GPUs, gloo on CPUs, several machines with the usual torchrun flags);
``--multigpu`` starts one process per visible GPU for users of the reference's command line.
SOLVER.BATCH_SIZE is the global batch, split evenly over the processes.

Checkpoints (``RUN.OUTPUT_DIR/<run name>/ckpt_<step>.pth``) are written atomically every
RUN.CKPT_EVERY steps, at the end, and on SIGTERM or Ctrl-C; ``--resume auto`` (or a path)
continues a run exactly. A non-finite loss stops the run with the loss terms logged and the
last good checkpoint untouched.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import signal
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
from models.inference import autocast
from utils import dist
from utils.checkpoint import (atomic_save, latest_checkpoint, load_detector_weights, load_file,
                              prune_checkpoints, rng_state, set_rng_state)
from utils.logger import MetricLogger, setup_logging
from utils.schedule import ReferenceSchedule

log = logging.getLogger("train")

# self-supervised tasks by config toggle; the adaptation stage adds its heads here
SSL_TASKS: dict[str, type] = {}
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


class StopRequest:
    """Turns SIGTERM / SIGINT into a flag the loop checks after each step."""

    def __init__(self):
        self.requested = False
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested:                       # a second Ctrl-C: give up immediately
            raise KeyboardInterrupt
        self.requested = True
        log.warning("received %s: finishing this step, then checkpointing and exiting",
                    signal.Signals(signum).name)

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


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


def resolve_config(args):
    """Config for this run; when resuming, the checkpoint's config is the base."""
    cfg = config_lib.load_config(args.config, args.opts)
    resume = None
    if args.resume:
        run_dir = resolve_path(cfg.RUN.OUTPUT_DIR) / run_name(cfg)
        resume = latest_checkpoint(run_dir) if args.resume == "auto" else Path(args.resume)
        if resume is None:
            logging.warning("--resume auto: no checkpoint in %s, starting a new run", run_dir)
        else:
            saved = load_file(resume, "checkpoint given by --resume")
            base = config_lib.merge_saved(saved["config"])
            cfg = config_lib.load_config(args.config, args.opts, base=base)
    return cfg, resume


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


def init_weights(model: torch.nn.Module, cfg) -> None:
    if cfg.MODEL.WEIGHTS:
        path = resolve_path(cfg.MODEL.WEIGHTS)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (set by config key MODEL.WEIGHTS; "
                                    f"MODEL.WEIGHTS='' trains from scratch)")
        load_detector_weights(model, path)
        log.info("initialised the detector from %s", path)
    elif cfg.MODEL.BASENET:
        path = resolve_path(cfg.MODEL.BASENET)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (set by config key MODEL.BASENET)")
        model.vgg.load_state_dict(load_file(path, "VGG weights"))
        log.info("initialised the VGG base from %s", path)
    else:
        log.info("training from scratch (MODEL.WEIGHTS and MODEL.BASENET are empty)")


def save_checkpoint(path: Path, model, optimizer, scheduler, scaler, progress: Progress, cfg):
    atomic_save({
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
        "step": progress.step, "epoch": progress.epoch, "epoch_step": progress.epoch_step,
        "skipped": progress.skipped, "config": config_lib.to_dict(cfg), "rng": rng_state(),
    }, path)
    log.info("saved %s", path)


def load_checkpoint(path: Path, model, optimizer, scheduler, scaler) -> Progress:
    ckpt = load_file(path, "checkpoint")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    log.info("resumed from %s at step %d", path, ckpt["step"])
    return Progress(ckpt["step"], ckpt["epoch"], ckpt["epoch_step"], ckpt.get("skipped", 0))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.multigpu and not dist.launched_by_torchrun():
        return relaunch_per_gpu(argv)
    setup_logging()
    cfg, resume = resolve_config(args)
    check_tasks(cfg)
    device = dist.pick_device(cfg.RUN.DEVICE)
    dist.init_distributed(device, cfg.RUN.DDP_BACKEND)
    try:
        return train(cfg, resume, device)
    finally:
        dist.cleanup()


def train(cfg, resume: Path | None, device: torch.device) -> int:
    world, rank = dist.world_size(), dist.rank()
    if cfg.SOLVER.BATCH_SIZE % world:
        raise ValueError(f"config key SOLVER.BATCH_SIZE={cfg.SOLVER.BATCH_SIZE} must be divisible "
                         f"by the number of processes ({world})")
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
    model = build_detector(cfg.MODEL, cfg.NUM_CLASSES)
    if resume is None:
        init_weights(model, cfg)
    model.to(device, memory_format=memory_format)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.SOLVER.WARMUP_LR, momentum=cfg.SOLVER.MOMENTUM,
                                weight_decay=cfg.SOLVER.WEIGHT_DECAY)
    scheduler = ReferenceSchedule(optimizer, cfg.SOLVER)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.RUN.AMP == "fp16")
    progress = Progress()
    if resume is not None:
        progress = load_checkpoint(resume, model, optimizer, scheduler, scaler)
    net = DistributedDataParallel(model) if dist.is_distributed() else model

    loader, sampler = build_detection_loader(cfg, local_batch, rank, world,
                                             pin_memory=device.type == "cuda")
    criterion = ProgressiveAnchorLoss(cfg.ANCHOR, cfg.FACE.OVERLAP_THRESH, cfg.LOSS.NEG_POS_RATIOS)
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
                data_time = time.perf_counter() - t_data
                images = images.to(device, non_blocking=True, memory_format=memory_format)
                targets = [t.to(device, non_blocking=True) for t in targets]
                with autocast(device, cfg.RUN.AMP):
                    out = net(images)
                loss_dict = criterion(out, targets, tuple(images.shape[-2:]))
                loss = sum(loss_dict.values())

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
                progress.skipped += skipped

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
                    save_checkpoint(run_dir / f"ckpt_{progress.step}.pth", model, optimizer,
                                    scheduler, scaler, progress, cfg)
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
            atomic_save(model.state_dict(), run_dir / "model_final.pth")
            log.info("done: %d steps; detector weights in %s", progress.step,
                     run_dir / "model_final.pth")
        return 0
    finally:
        stop.restore()
        meters.close()


if __name__ == "__main__":
    raise SystemExit(main())
