"""Pre-train the self-supervised heads on the frozen detector (the reference's script of this name).

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
  reference's loop ends one step short of its final save), by the engine (``engine/run.py``:
  atomic, finite, a locked run folder), and ``--resume`` continues exactly (optimizer, queues
  and every loader's position).

Loss weights: the reference overrides every task weight to 1 except
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

import logging
import sys
import time

import torch

from models.registry import build_net, ssl_input_is_bgr
from adapt.hla.trainer import HLATrainer
from models.inference import autocast
from adapt.hla.sources import build_ssl_loaders, next_ssl_batches
from adapt.hla.tasks import build_tasks, check_moco_batch, tagged_run_name
from utils import dist
from engine import run as engine
from engine import step
from utils.checkpoint import init_detector
from utils.logger import setup_logging

log = logging.getLogger("pretrain")


def parse_args(argv=None):
    return engine.run_arguments(__doc__).parse_args(argv)


def pretrain_weights(cfg) -> dict[str, float]:
    """Every task weight 1, except TRANSFER_CONTRASTIVE, which the reference leaves at its
    training value (see the module doc)."""
    weights = {toggle: 1.0 for toggle in cfg.TRAIN_WEIGHT}
    weights["TRANSFER_CONTRASTIVE"] = cfg.TRAIN_WEIGHT.TRANSFER_CONTRASTIVE
    return weights


def run_name(cfg) -> str:
    """The reference's ``weights_fast_det_jig33(1.000000)_con-trg(1.000000)_tsf(0.050000)``."""
    return tagged_run_name(cfg, "weights_fast_det", pretrain_weights(cfg))


def build_trainer(cfg, resume) -> HLATrainer:
    net = build_net(cfg)
    if resume is None and cfg.SSL.PRETRAIN_LOAD_DETECTOR:
        init_detector(net, cfg)
    elif resume is None:
        log.warning("SSL.PRETRAIN_LOAD_DETECTOR=False: the heads are pre-trained on a randomly "
                    "initialised detector, as the reference's script does")
    net.requires_grad_(False)                         # frozen: only the heads learn
    trainer = HLATrainer(net, build_tasks(cfg, pretrain_weights(cfg)),
                          ssl_bgr=ssl_input_is_bgr(cfg))
    if not trainer.tasks:
        raise ValueError("no self-supervised task is enabled (config keys TRAIN.JIGSAW_33, "
                         "TRAIN.CONTRASTIVE_TARGET, TRAIN.TRANSFER_CONTRASTIVE, ...)")
    for task in trainer.tasks:
        log.info("task TRAIN.%s: %s, weight %g", task.toggle, ", ".join(task.streams),
                 task.weight)
    return trainer


def main(argv=None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    setup_logging()
    return engine.run_main(args, run_name, pretrain)


def pretrain(args, cfg, resume, run_dir) -> int:
    if engine.nothing_to_do(cfg.SSL.PRETRAIN_ITERS, "SSL.PRETRAIN_ITERS"):
        return 0
    device = dist.pick_device(cfg.RUN.DEVICE)
    dist.init_distributed(device, cfg.RUN.DDP_BACKEND)
    world, batch = dist.world_size(), cfg.SSL.PRETRAIN_BATCH_SIZE
    if batch % world:
        raise ValueError(f"config key SSL.PRETRAIN_BATCH_SIZE={batch} must be divisible by the "
                         f"number of processes ({world})")
    check_moco_batch(cfg, build_tasks(cfg), batch, "SSL.PRETRAIN_BATCH_SIZE")
    with engine.Run(run_dir, cfg, resume, device, args.overwrite) as run:
        log.info("run folder %s; %d process(es) on %s; batch %d per process", run_dir, world,
                 device, batch // world)
        return pretrain_loop(cfg, resume, run, device, batch)


def pretrain_loop(cfg, resume, run: engine.Run, device, batch: int) -> int:
    torch.manual_seed(cfg.RUN.SEED)
    memory_format = step.memory_format(cfg)
    trainer = build_trainer(cfg, resume).to(device, memory_format=memory_format)
    named_params = step.trainable(trainer)                            # the heads only
    optimizer = torch.optim.Adam([p for _, p in named_params], lr=cfg.SSL.PRETRAIN_LR)
    halve = cfg.SSL.PRETRAIN_LR_HALVE_EVERY
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 ** (s // halve))
    scaler = step.grad_scaler(cfg, device)
    progress = engine.Progress()
    if resume is not None:
        progress = step.restore_state(resume.checkpoint, trainer, optimizer, scheduler, scaler,
                                      lr=cfg.SSL.PRETRAIN_LR)
        log.info("resumed at step %d", progress.step)
    net = step.wrap_ddp(trainer)
    ssl_loaders = build_ssl_loaders(trainer.tasks, cfg, batch, dist.rank(), dist.world_size(),
                                    pin_memory=device.type == "cuda")
    if resume is not None:
        engine.restore_loaders(ssl_loaders, resume.checkpoint.get("ssl_loaders", {}))
    weights, total = trainer.loss_weights, cfg.SSL.PRETRAIN_ITERS
    meters, stop = run.metrics(total), engine.StopRequest()
    state = lambda: step.checkpoint_state(trainer, optimizer, scheduler, scaler,  # noqa: E731
                                          ssl_loaders)
    net.train()
    if trainer.net.has_batchnorm:
        # the detector is frozen: its BatchNorm statistics must not drift on the task images
        trainer.net.eval()
    try:
        while progress.step < total:
            t_data = time.perf_counter()
            batches, skipped = next_ssl_batches(ssl_loaders, device, memory_format)
            data_time = time.perf_counter() - t_data
            with autocast(device, cfg.RUN.AMP):
                _, loss_dict = net(None, batches)
            loss = sum(weights[k] * v for k, v in loss_dict.items())
            stopping = engine.check_loss(progress.step + 1, loss, loss_dict, device, stop)

            step.backward_step(progress.step + 1, loss, loss_dict, optimizer, scaler,
                               named_params)
            scheduler.step()
            progress.step += 1
            progress.skipped += skipped

            step.record(meters, loss, loss_dict, data_time=data_time)
            last = progress.step == total
            run.log_step(progress.step, last, lr=optimizer.param_groups[0]["lr"],
                         skipped_images=progress.skipped)
            due = progress.step % cfg.SSL.PRETRAIN_SAVE_EVERY == 0 or last
            if step.checkpoint_or_stop(run, progress, state, stop, stopping, due, log):
                return 0
        log.info("done: %d steps; cut the heads out with: python transfer_headers.py %s",
                 progress.step, run.dir / f"ckpt_{progress.step}.pth")
        return 0
    finally:
        stop.restore()


if __name__ == "__main__":
    raise SystemExit(main())
