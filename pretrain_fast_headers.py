"""Pre-train the self-supervised heads on the frozen detector (REFERENCE 7).

    python pretrain_fast_headers.py [--config PRESET] [--resume CKPT|auto] [KEY.SUB=VALUE ...]
    torchrun --nproc_per_node=N pretrain_fast_headers.py ...        # DDP, as train.py

Trains only the heads of the enabled tasks (TRAIN.* toggles: by default the 3x3 jigsaw, MoCo on
E(L) and MoCo across H / D(H)) with Adam, lr SSL.PRETRAIN_LR halved every
SSL.PRETRAIN_LR_HALVE_EVERY steps, global batch SSL.PRETRAIN_BATCH_SIZE, for SSL.PRETRAIN_ITERS
steps. The detector is frozen and never in the optimizer; the MoCo key encoders still follow it
by momentum.

Departures from the reference's script, on purpose:

* the detector weights (MODEL.WEIGHTS) are loaded first; the reference never loads them and
  pre-trains on a random detector. SSL.PRETRAIN_LOAD_DETECTOR=False reproduces that.
* a checkpoint is written every SSL.PRETRAIN_SAVE_EVERY steps **and after the last step** (the
  reference's loop ends one step short of its final save), atomically, and ``--resume``
  continues exactly (optimizer, queues and every loader's position).

Loss weights (REFERENCE 7): the reference overrides every task weight to 1 except
TRANSFER_CONTRASTIVE, which keeps its training weight (0.05). Kept as is. Since each head has
its own parameters and the detector is frozen, no parameter receives gradients from two tasks,
and Adam's update is invariant to a constant scale of a parameter's gradient (up to its eps), so
the 0.05 has almost no effect: it only makes eps=1e-8 relatively 20 times larger for the
transfer head.

Checkpoints: ``RUN.OUTPUT_DIR/<run name>/ckpt_<step>.pth`` whose ``model`` entry is the whole
trainer state dict in the HLA layout (``net.*`` plus the heads), like the reference's
``trainer_fast_<i>.pth``; ``transfer_headers.py`` cuts it into head files.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from data import config as config_lib
from data.loaders import resolve_path
from models.factory import build_detector
from models.hla_trainer import HLATrainer, trainer_state_dict
from models.inference import autocast
from models.ssl_tasks import build_ssl_loaders, build_tasks, check_moco_batch, next_ssl_batches
from train import TASK_TAGS, init_weights, restore_loaders
from utils.runs import StopRequest, resolve_run
from utils import dist
from utils.checkpoint import (atomic_save, load_file, prune_checkpoints,
                              rng_state, set_rng_state)
from utils.logger import MetricLogger, setup_logging

log = logging.getLogger("pretrain")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", action="append", default=[], metavar="PRESET",
                   help="YAML/JSON preset file(s), applied in order before the overrides")
    p.add_argument("--resume", default="", metavar="CKPT|auto",
                   help="continue from a checkpoint, or 'auto' for the newest in the run folder")
    p.add_argument("opts", nargs="*", metavar="KEY.SUB=VALUE", help="config overrides")
    return p.parse_args(argv)


def pretrain_weights(cfg) -> dict[str, float]:
    """Every task weight 1, except TRANSFER_CONTRASTIVE, which the reference leaves at its
    training value (see the module doc)."""
    weights = {toggle: 1.0 for toggle in cfg.TRAIN_WEIGHT}
    weights["TRANSFER_CONTRASTIVE"] = cfg.TRAIN_WEIGHT.TRANSFER_CONTRASTIVE
    return weights


def run_name(cfg) -> str:
    """The reference's ``weights_fast_det_jig33(1.000000)_con-trg(1.000000)_tsf(0.050000)``."""
    if cfg.RUN.NAME:
        return cfg.RUN.NAME
    weights = pretrain_weights(cfg)
    tags = [f"{TASK_TAGS[k]}({weights[k]:f})" for k in TASK_TAGS if cfg.TRAIN[k]]
    return "_".join(["weights_fast_det", *tags])


def build_trainer(cfg, resume) -> HLATrainer:
    net = build_detector(cfg.MODEL, cfg.NUM_CLASSES)
    if resume is None and cfg.SSL.PRETRAIN_LOAD_DETECTOR:
        init_weights(net, cfg)
    elif resume is None:
        log.warning("SSL.PRETRAIN_LOAD_DETECTOR=False: the heads are pre-trained on a randomly "
                    "initialised detector, as the reference's script does")
    net.requires_grad_(False)                         # frozen: only the heads learn
    trainer = HLATrainer(net, build_tasks(cfg, pretrain_weights(cfg)))
    if not trainer.tasks:
        raise ValueError("no self-supervised task is enabled (config keys TRAIN.JIGSAW_33, "
                         "TRAIN.CONTRASTIVE_TARGET, TRAIN.TRANSFER_CONTRASTIVE, ...)")
    for task in trainer.tasks:
        log.info("task TRAIN.%s: %s, weight %g", task.toggle, ", ".join(task.streams),
                 task.weight)
    return trainer


def save_checkpoint(path, trainer, optimizer, scheduler, scaler, step: int, skipped: int,
                    ssl_loaders, cfg):
    atomic_save({
        "model": trainer.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "step": step,
        "skipped": skipped, "config": config_lib.to_dict(cfg), "rng": rng_state(),
        "ssl_loaders": {name: loader.state_dict() for name, loader in ssl_loaders.items()},
    }, path)
    log.info("saved %s", path)


def load_checkpoint(path, trainer, optimizer, scheduler, scaler) -> tuple[int, int, dict]:
    ckpt = load_file(path, "checkpoint")
    trainer.load_state_dict(trainer_state_dict(ckpt))
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    log.info("resumed from %s at step %d", path, ckpt["step"])
    return ckpt["step"], ckpt.get("skipped", 0), ckpt.get("ssl_loaders", {})


def main(argv=None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    setup_logging()
    cfg, resume, _ = resolve_run(args, run_name)
    device = dist.pick_device(cfg.RUN.DEVICE)
    dist.init_distributed(device, cfg.RUN.DDP_BACKEND)
    try:
        return pretrain(cfg, resume, device)
    finally:
        dist.cleanup()


def pretrain(cfg, resume: Path | None, device: torch.device) -> int:
    world, rank, batch = dist.world_size(), dist.rank(), cfg.SSL.PRETRAIN_BATCH_SIZE
    if batch % world:
        raise ValueError(f"config key SSL.PRETRAIN_BATCH_SIZE={batch} must be divisible by the "
                         f"number of processes ({world})")
    check_moco_batch(cfg, build_tasks(cfg), batch, "SSL.PRETRAIN_BATCH_SIZE")
    run_dir = resolve_path(cfg.RUN.OUTPUT_DIR) / run_name(cfg)
    if dist.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        config_lib.dump(cfg, run_dir / "config.yaml")
    dist.barrier()
    setup_logging(run_dir)
    log.info("run folder %s; %d process(es) on %s; batch %d per process", run_dir, world, device,
             batch // world)
    torch.manual_seed(cfg.RUN.SEED)

    memory_format = torch.channels_last if cfg.RUN.CHANNELS_LAST else torch.contiguous_format
    trainer = build_trainer(cfg, resume).to(device, memory_format=memory_format)
    params = [p for p in trainer.parameters() if p.requires_grad]      # the heads only
    optimizer = torch.optim.Adam(params, lr=cfg.SSL.PRETRAIN_LR)
    halve = cfg.SSL.PRETRAIN_LR_HALVE_EVERY
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 ** (s // halve))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.RUN.AMP == "fp16")
    step, skipped_total, loader_states = 0, 0, {}
    if resume is not None:
        step, skipped_total, loader_states = load_checkpoint(resume, trainer, optimizer,
                                                             scheduler, scaler)
    net = DistributedDataParallel(trainer, broadcast_buffers=False) if dist.is_distributed() \
        else trainer
    ssl_loaders = build_ssl_loaders(trainer.tasks, cfg, batch, rank, world,
                                    pin_memory=device.type == "cuda")
    if resume is not None:
        restore_loaders(ssl_loaders, loader_states)
    weights, total = trainer.loss_weights, cfg.SSL.PRETRAIN_ITERS

    meters = MetricLogger(run_dir, total, cfg.RUN.TENSORBOARD)
    stop = StopRequest()
    net.train()
    try:
        while step < total:
            t_data = time.perf_counter()
            batches, skipped = next_ssl_batches(ssl_loaders, device, memory_format)
            data_time = time.perf_counter() - t_data
            with autocast(device, cfg.RUN.AMP):
                _, loss_dict = net(None, batches)
            loss = sum(weights[k] * v for k, v in loss_dict.items())

            flags = dist.all_reduce_sum(torch.tensor(
                [float(not torch.isfinite(loss)), float(stop.requested)], device=device))
            if flags[0] > 0:
                log.error("non-finite loss at step %d: %s; stopping (the last checkpoint is "
                          "kept)", step + 1, {k: float(v.detach()) for k, v in loss_dict.items()})
                return 1
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            skipped_total += skipped

            meters.update(loss=loss.detach(), **{k: v.detach() for k, v in loss_dict.items()},
                          data_time=data_time)
            if step % cfg.RUN.LOG_EVERY == 0 or step == total:
                values = dist.all_reduce_mean_dict(meters.averages(device))
                meters.write(step, {**values, "lr": optimizer.param_groups[0]["lr"],
                                    "skipped_images": skipped_total})
            stopping = flags[1] > 0
            if dist.is_main() and (step % cfg.SSL.PRETRAIN_SAVE_EVERY == 0 or step == total
                                   or stopping):
                save_checkpoint(run_dir / f"ckpt_{step}.pth", trainer, optimizer, scheduler,
                                scaler, step, skipped_total, ssl_loaders, cfg)
                prune_checkpoints(run_dir, cfg.RUN.KEEP_CKPTS)
            if stopping:
                log.warning("stopped at step %d; resume with --resume auto", step)
                return 0
        log.info("done: %d steps; cut the heads out with: python transfer_headers.py %s",
                 step, run_dir / f"ckpt_{step}.pth")
        return 0
    finally:
        stop.restore()
        meters.close()


if __name__ == "__main__":
    raise SystemExit(main())
