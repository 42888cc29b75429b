"""Train the detector with joint high-low adaptation.

    python train.py [--config PRESET.yaml] [KEY.SUB=VALUE ...]

Each step takes a WIDER detection batch and one batch from every enabled self-supervised task
(TRAIN.* toggles; by default the 3x3 jigsaw on H and E(L), MoCo on E(L), MoCo across H / D(H)),
and minimises the detection loss (both shots) plus the weighted task losses (docs/ADAPTATION.md).
``--config configs/detection_only.yaml`` turns the tasks off (plain DSFD fine-tuning). The
detector starts from MODEL.WEIGHTS (a DSFD file, or a trainer checkpoint holding the heads too)
and the heads from SSL.HEADS_DIR/<name>_head.pth (SSL.LOAD_HEADS).

The same loop trains the pseudo-label student of docs/DUAL_TEACHER.md (PSEUDO.ENABLE): each
step adds a batch of target images with the teachers' boxes from PSEUDO.LIST (score >=
PSEUDO.HIGH: faces; [PSEUDO.LOW, PSEUDO.HIGH): ignore regions), seen by the student in a strong
photometric view (PSEUDO.STRONG_AUG), its detection terms ``pl_*`` weighted PSEUDO.WEIGHT; the
task losses can stay on. EMA.ENABLE keeps a mean teacher (``ema_final.pth``), whose detections on
the weak view replace the fixed labels with EMA.REFRESH. PSEUDO.BATCH_SIZE is global too.

One process on the CPU or one GPU; under ``torchrun --nproc_per_node=N train.py ...`` the same
script runs DDP (nccl on GPUs, gloo on CPUs, several machines with the usual torchrun flags);
``--multigpu`` starts one process per visible GPU for users of the reference's command line.
SOLVER.BATCH_SIZE and SSL.BATCH_SIZE are global batches, split evenly over the processes.

The run folder (``RUN.OUTPUT_DIR/<run name>/``) and its checkpoints are the engine's
(``engine/run.py``): ``ckpt_<step>.pth`` every RUN.CKPT_EVERY steps, at the end and on SIGTERM
or Ctrl-C, written atomically and only when every tensor is finite; ``--resume auto`` (or a path)
continues a run exactly (queues and the position of every task loader included) and refuses
config changes outside the resumable keys; a NaN/Inf loss or gradient stops the run naming the
loss terms and tensors, the last good checkpoint kept. RUN.EVAL_EVERY adds a periodic AP on
FACE.SRC_VAL_FILE and keeps ``best.pth``. A checkpoint's ``model`` entry is the HLA trainer
state dict (``net.*`` plus the heads; the reference's ``trainer_<it>.pth`` layout).
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from adapt.hla.sources import build_ssl_loaders
from adapt.hla.tasks import build_tasks, check_moco_batch, tagged_run_name
from adapt.hla.trainer import HLATrainer, init_heads, trainer_state_dict
from adapt.pseudo.student import PL_PREFIX, build_student, pseudo_counts
from adapt.zero_shot import build_zero_shot
from data.loaders import build_detection_loader, require_file
from engine import run as engine
from engine import step
from engine.validation import build_validation
from models.registry import build_net, build_train_dataset, entry_of, ssl_input_is_bgr
from utils import dist
from utils.checkpoint import init_detector
from utils.files import resolve_path
from utils.logger import setup_logging
from utils.precision import add_precision_argument, apply_precision, resolve_precision
from utils.schedule import ReferenceSchedule

log = logging.getLogger("train")


def parse_args(argv=None):
    p = engine.run_arguments(__doc__)
    p.add_argument("--multigpu", action="store_true",
                   help="start one DDP process per visible GPU (same as torchrun)")
    add_precision_argument(p)
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
    base = "vgg_det" if cfg.MODEL.NAME == "dsfd_vgg" else cfg.MODEL.NAME
    base += "_zero_shot" if cfg.ZERO_SHOT.ENABLE else ""
    return tagged_run_name(cfg, base, cfg.TRAIN_WEIGHT)


def check_tasks(cfg) -> None:
    if not cfg.TRAIN.MAIN:
        raise ValueError("config key TRAIN.MAIN=False: detection-free training is done by "
                         "pretrain_fast_headers.py")


def check_batches(cfg, tasks, world: int) -> None:
    for key in ("SOLVER.BATCH_SIZE",) + (("SSL.BATCH_SIZE",) if tasks else ()) + \
            (("PSEUDO.BATCH_SIZE",) if cfg.PSEUDO.ENABLE else ()):
        section, name = key.split(".")
        if cfg[section][name] % world:
            raise ValueError(f"config key {key}={cfg[section][name]} must be divisible by the "
                             f"number of processes ({world})")
    check_moco_batch(cfg, tasks, cfg.SSL.BATCH_SIZE, "SSL.BATCH_SIZE")


# -- the detector-specific parts: trainer, criterion, optimizer, loss weights --

def build_trainer(cfg, resume) -> HLATrainer:
    """Detector, then the task heads. The MoCo key encoders copy the detector as built here,
    i.e. after its weights are loaded (the reference copies the random initialisation; a loaded
    head file or checkpoint overwrites them anyway). ``resume``: the checkpoint to continue
    (then no initial weights are loaded), or None."""
    net = build_net(cfg)
    init_state = None
    if resume is None:
        obj = init_detector(net, cfg)
        init_state = trainer_state_dict(obj) if obj is not None else None
    trainer = HLATrainer(net, build_tasks(cfg), ssl_bgr=ssl_input_is_bgr(cfg))
    if resume is None:
        init_heads(trainer, init_state, resolve_path(cfg.SSL.HEADS_DIR), cfg.SSL.LOAD_HEADS)
    for task in trainer.tasks:
        log.info("task TRAIN.%s: %s, weight %g", task.toggle, ", ".join(task.streams),
                 task.weight)
    return trainer


def build_criterion(cfg):
    """The detection loss of MODEL.NAME: ``(out, targets, image_size) -> {term: loss}``."""
    return entry_of(cfg).criterion(cfg)


def loss_weights(trainer: HLATrainer, cfg) -> Callable[[str], float]:
    """The weight of a loss term: the task's for self-supervised terms, PSEUDO.WEIGHT for the
    target batch's (adapt/pseudo/student.py), 1 for the detection terms."""
    tasks, pl = trainer.loss_weights, cfg.PSEUDO.WEIGHT
    return lambda name: pl if name.startswith(PL_PREFIX) else tasks.get(name, 1.0)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.multigpu and not dist.launched_by_torchrun():
        return relaunch_per_gpu(argv)
    setup_logging()
    return engine.run_main(args, run_name, train)


def train(args, cfg, resume: engine.Resume | None, run_dir: Path) -> int:
    check_tasks(cfg)
    if engine.nothing_to_do(cfg.SOLVER.MAX_STEPS, "SOLVER.MAX_STEPS"):
        return 0
    device = dist.pick_device(cfg.RUN.DEVICE)
    # --precision onto RUN.AMP / RUN.CHANNELS_LAST: auto is bf16 + channels_last on a GPU
    # with bf16, the reference fp32 on a CPU; keys set in the config win over auto
    precision = apply_precision(cfg, resolve_precision(args.precision, device, "train",
                                                       reference=True), args.precision)
    logging.info("precision: RUN.AMP=%s RUN.CHANNELS_LAST=%s (%s)", cfg.RUN.AMP,
                 cfg.RUN.CHANNELS_LAST, precision.reason)
    dist.init_distributed(device, cfg.RUN.DDP_BACKEND)
    world, rank = dist.world_size(), dist.rank()
    check_batches(cfg, build_tasks(cfg), world)
    local_batch = cfg.SOLVER.BATCH_SIZE // world
    finals = ["model_final.pth"] + (["ema_final.pth"] if cfg.EMA.ENABLE else [])
    with engine.Run(run_dir, cfg, resume, device, args.overwrite, finals) as run:
        log.info("run folder %s; %d process(es) on %s; batch %d per process", run_dir, world,
                 device, local_batch)
        return train_loop(cfg, resume, run, device, local_batch, world, rank)


# -- the run: its parts, then the loop --

def build_parts(cfg, resume, device, local_batch: int, world: int,
                rank: int) -> tuple[step.Parts, engine.Progress]:
    """The trainer on ``device`` and its optimization, then the loaders, the student and the
    zero-shot views; resuming, each takes its state from the checkpoint."""
    memory_format = step.memory_format(cfg)
    trainer = build_trainer(cfg, resume)
    trainer.to(device, memory_format=memory_format)
    named_params = step.trainable(trainer)
    optimizer = step.build_optimizer([p for _, p in named_params], cfg.SOLVER)
    scheduler = ReferenceSchedule(optimizer, cfg.SOLVER)
    scaler = step.grad_scaler(cfg, device)
    progress = engine.Progress()
    if resume is not None:                # the lr, momentum and weight decay: the current SOLVER.*
        progress = step.restore_state(resume.checkpoint, trainer, optimizer, scheduler, scaler,
                                      momentum=cfg.SOLVER.MOMENTUM,
                                      weight_decay=cfg.SOLVER.WEIGHT_DECAY)
        log.info("resumed at step %d", progress.step)
    net = step.wrap_ddp(trainer)
    pin = device.type == "cuda"
    list_file = require_file(cfg.FACE.SRC_TRAIN_FILE, "FACE.SRC_TRAIN_FILE")
    dataset = build_train_dataset(cfg, list_file, cfg.FACE.DATA_ROOT, cfg.RUN.SEED)
    loader, sampler = build_detection_loader(cfg, dataset, local_batch, rank, world, pin)
    ssl_loaders = build_ssl_loaders(trainer.tasks, cfg, cfg.SSL.BATCH_SIZE, rank, world, pin)
    if resume is not None:
        engine.restore_loaders(ssl_loaders, resume.checkpoint.get("ssl_loaders", {}))
    student = build_student(cfg, trainer.net, resume, rank, world, pin)
    zero_shot = build_zero_shot(cfg, student.spec)          # None unless ZERO_SHOT.ENABLE
    return step.Parts(trainer, net, named_params, optimizer, scheduler, scaler, loader, sampler,
                      ssl_loaders, student, zero_shot, memory_format), progress


def last_step(cfg, parts: step.Parts, local_batch: int) -> int:
    """SOLVER.MAX_STEPS, or with SOLVER.STOP_AT_EPOCH_END the end of its epoch (the reference's
    epoch-granular stop)."""
    steps_per_epoch = math.ceil(parts.sampler.per_rank / local_batch)
    max_steps = cfg.SOLVER.MAX_STEPS
    if cfg.SOLVER.STOP_AT_EPOCH_END:
        max_steps = math.ceil(max_steps / steps_per_epoch) * steps_per_epoch
    log.info("%d images, %d steps per epoch, stopping at step %d", len(parts.loader.dataset),
             steps_per_epoch, max_steps)
    return max_steps


def train_loop(cfg, resume, run: engine.Run, device, local_batch: int, world: int,
               rank: int) -> int:
    torch.manual_seed(cfg.RUN.SEED)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    parts, progress = build_parts(cfg, resume, device, local_batch, world, rank)
    optimizer, student = parts.optimizer, parts.student
    criterion = build_criterion(cfg)
    validate = build_validation(cfg, parts.trainer, device)
    weight_of = loss_weights(parts.trainer, cfg)            # detection terms: 1
    max_steps = last_step(cfg, parts, local_batch)
    meters, stop = run.metrics(max_steps), engine.StopRequest()
    parts.net.train()
    try:
        while progress.step < max_steps and progress.epoch < cfg.SOLVER.EPOCHES:
            parts.sampler.set_epoch(progress.epoch, skip=progress.epoch_step * local_batch)
            t_data = time.perf_counter()
            for images, targets, skipped in parts.loader:
                batch = step.next_batches(parts, images, targets, progress.step, rank, device)
                data_time = time.perf_counter() - t_data
                loss_dict = step.detection_losses(parts, criterion, batch, device, cfg.RUN.AMP)
                loss = sum(weight_of(k) * v for k, v in loss_dict.items())
                stopping = engine.check_loss(progress.step + 1, loss, loss_dict, device, stop)

                step.backward_step(progress.step + 1, loss, loss_dict, optimizer, parts.scaler,
                                   parts.named_params, cfg.SOLVER.GRAD_CLIP)
                parts.scheduler.step()
                student.update(parts.trainer.net)        # the EMA teacher, if any
                progress.step += 1
                progress.epoch_step += 1
                progress.skipped += skipped + batch.skipped

                step.record(meters, loss, loss_dict, data_time=data_time,
                            **pseudo_counts(batch.pl))
                last = progress.step == max_steps
                run.log_step(progress.step, last, lr=optimizer.param_groups[0]["lr"],
                             epoch=progress.epoch, skipped_images=progress.skipped)
                if validate is not None:
                    run.evaluate(progress, validate, parts.state)
                due = progress.step % cfg.RUN.CKPT_EVERY == 0 or last
                if step.checkpoint_or_stop(run, progress, parts.state, stop, stopping, due, log):
                    return 0
                if progress.step >= max_steps:
                    break
                t_data = time.perf_counter()
            else:
                progress.epoch += 1
                progress.epoch_step = 0
        save_finals(run, parts, progress.step)
        return 0
    finally:
        stop.restore()


def save_finals(run: engine.Run, parts: step.Parts, steps: int) -> None:
    final = run.save_final(parts.trainer.net.state_dict(), "model_final.pth", steps)
    log.info("done: %d steps; detector weights in %s", steps, final)
    if parts.student.ema is not None:
        final = run.save_final(parts.student.ema.module.state_dict(), "ema_final.pth", steps)
        log.info("mean teacher (EMA) weights in %s", final)


if __name__ == "__main__":
    raise SystemExit(main())
