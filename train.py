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

import copy
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from torch.nn.parallel import DistributedDataParallel

from adapt.zero_shot import build_zero_shot
from data.darkface import drop_held_out, held_out_ids
from models.registry import build_train_dataset
from utils.files import resolve_path
from data.loaders import build_detection_loader, require_file
from adapt.pseudo.labels import (detections_to_targets, pseudo_label_loader, read_pseudo_labels,
                                to_face_record)
from data.ssl_datasets import stream_seed
from adapt.hla.sources import build_ssl_loaders, next_ssl_batches
from adapt.pseudo.strong_view import StrongAugParams, sample_generators, strong_augment
from engine.validation import build_validation
from models.registry import build_net, get_entry, ssl_input_is_bgr
from adapt.hla.trainer import (HLATrainer, average_batchnorm_statistics, init_heads,
                                trainer_state_dict)
from adapt.pseudo.ema import ModelEMA
from models.inference import autocast
from adapt.hla.tasks import build_tasks, check_moco_batch, tagged_run_name
from utils import dist
from engine import run as engine
from utils.checkpoint import init_detector
from utils.logger import setup_logging
from utils.schedule import ReferenceSchedule
from utils.precision import add_precision_argument, apply_precision, resolve_precision

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


# -- the detector-specific parts: trainer, criterion, optimizer, validation --

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
    return get_entry(cfg.MODEL.NAME).criterion(cfg)


def build_optimizer(params, solver) -> torch.optim.Optimizer:
    """SGD as the reference (momentum 0.9, wd 5e-4); AdamW for short from-scratch runs such as the
    demo. The schedule sets the lr, starting at WARMUP_LR."""
    if solver.OPTIMIZER == "sgd":                 # the choices are checked at start-up
        return torch.optim.SGD(params, lr=solver.WARMUP_LR, momentum=solver.MOMENTUM,
                               weight_decay=solver.WEIGHT_DECAY)
    return torch.optim.AdamW(params, lr=solver.WARMUP_LR, weight_decay=solver.WEIGHT_DECAY)


def checkpoint_state(trainer, optimizer, scheduler, scaler, ssl_loaders) -> dict:
    """What a checkpoint holds besides the engine's progress, config and RNG states; the
    ``model`` entry is the HLA trainer state dict (``net.*`` plus the heads, the layout of
    the reference's ``trainer_<it>.pth``)."""
    return {"model": trainer.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "ssl_loaders": {name: loader.state_dict() for name, loader in ssl_loaders.items()}}

def restore_checkpoint(ckpt, trainer, optimizer, scheduler, scaler, cfg) -> engine.Progress:
    trainer.load_state_dict(trainer_state_dict(ckpt))
    optimizer.load_state_dict(ckpt["optimizer"])
    engine.apply_optimizer_config(optimizer, momentum=cfg.SOLVER.MOMENTUM,
                                  weight_decay=cfg.SOLVER.WEIGHT_DECAY)
    scheduler.load_state_dict(ckpt["scheduler"])      # the lr follows the current SOLVER.*
    scaler.load_state_dict(ckpt["scaler"])
    log.info("resumed at step %d", ckpt["step"])
    return engine.restore(ckpt)

# -- the student (PSEUDO.*, EMA.*; docs/DUAL_TEACHER.md): pseudo-labelled target batches, their
#    weak and strong views, the mean teacher --

PL_PREFIX = "pl_"                        # the loss terms of the target batch: pl_loc_pal2, ...
# Every registry detector's loss takes ignore rows (label -1): models/dsfd/loss.py,
# models/retinaface/loss.py, models/yunet/loss.py.


def loss_weights(trainer: HLATrainer, cfg) -> Callable[[str], float]:
    """The weight of a loss term: the task's for self-supervised terms, PSEUDO.WEIGHT for the
    target batch's, 1 for the detection terms."""
    tasks, pl = trainer.loss_weights, cfg.PSEUDO.WEIGHT
    return lambda name: pl if name.startswith(PL_PREFIX) else tasks.get(name, 1.0)


def build_pseudo_loader(cfg, rank: int, world: int, pin: bool):
    """The images of PSEUDO.LIST (held-out DARK FACE ids dropped) with their boxes split by
    PSEUDO.HIGH / LOW into faces and ignore regions, in MODEL.NAME's training augmentation (the
    weak view) without AUG.lowlight_prob (they are dark already); endless and resumable.
    Images left without any box are dropped: the detection losses mine negatives per positive,
    so an image without boxes would add nothing."""
    p = cfg.PSEUDO
    path = require_file(p.LIST, "PSEUDO.LIST")
    records = drop_held_out_ids(cfg, read_pseudo_labels(path, root=cfg.FACE.DATA_ROOT))
    faces = [f for f in (to_face_record(r, p.HIGH, p.LOW) for r in records) if len(f.boxes)]
    if not faces:
        raise ValueError(f"{path} (config key PSEUDO.LIST): no image has a box scoring at least "
                         f"PSEUDO.LOW={p.LOW}")
    positives = sum(int((f.labels == 1).sum()) for f in faces)
    log.info("PSEUDO.LIST: %d of %d images with boxes, %d faces (score >= %g), %d ignore "
             "regions", len(faces), len(records), positives, p.HIGH,
             sum(len(f.labels) for f in faces) - positives)
    weak = copy.deepcopy(cfg)
    weak.AUG.lowlight_prob = 0.0
    seed = stream_seed(cfg.RUN.SEED, "pseudo")
    dataset = build_train_dataset(weak, path, cfg.FACE.DATA_ROOT, seed, records=faces)
    return pseudo_label_loader(dataset, p.BATCH_SIZE, rank, world, seed, cfg.RUN.NUM_WORKERS,
                               pin)


def drop_held_out_ids(cfg, records: list) -> list:
    """PSEUDO.LIST's records without the held-out DARK FACE ids (DARKFACE.FILTER_TRAIN), as the
    self-supervised target list (adapt/hla/sources.py)."""
    if not cfg.DARKFACE.FILTER_TRAIN:
        return records
    if not cfg.DARKFACE.VAL_IDS and not Path(cfg.DARKFACE.IMAGE_DIR).is_dir():
        log.warning("DARKFACE.VAL_IDS is empty and DARKFACE.IMAGE_DIR=%s does not exist: "
                    "PSEUDO.LIST is NOT filtered against a held-out split, so do not evaluate "
                    "on its images (or set DARKFACE.FILTER_TRAIN=False to silence this)",
                    cfg.DARKFACE.IMAGE_DIR)
        return records
    kept = drop_held_out(records, held_out_ids(cfg))
    log.info("PSEUDO.LIST: %d of %d images kept after removing the held-out DARK FACE split",
             len(kept), len(records))
    return kept


class PseudoBatch(NamedTuple):
    images: torch.Tensor      # the student's view [B, 3, S, S]
    targets: list             # per image [n, 5 + 2L]: label 1 (face) or -1 (ignore)
    skipped: int              # unreadable images met


@dataclass
class Student:
    """What a pseudo-label run adds to the detection run: the target loader (PSEUDO.ENABLE)
    and the mean teacher (EMA.ENABLE, refreshing the labels with EMA.REFRESH)."""
    cfg: Any
    loader: Any = None                   # data.ssl_datasets.CyclingLoader
    ema: ModelEMA | None = None
    postprocess: Callable | None = None  # the registry's: (out, size) -> [k, 5 + 2L] rows
    spec: Any = None                     # models.interface.InputSpec

    def batch(self, step: int, rank: int, device, memory_format) -> PseudoBatch | None:
        """The target batch of optimizer step ``step + 1``: the weak view's labels (the fixed
        pseudo labels, or the EMA teacher's detections on it), the strong view's images."""
        if self.loader is None:
            return None
        weak, targets, skipped = next(self.loader)
        weak = weak.to(device, non_blocking=True, memory_format=memory_format)
        targets = [t.to(device, non_blocking=True) for t in targets]
        if self.cfg.EMA.REFRESH and step >= self.cfg.EMA.REFRESH_AFTER:
            targets = self.teacher_targets(weak)
        images = self.strong_view(weak, step, rank) if self.cfg.PSEUDO.STRONG_AUG else weak
        return PseudoBatch(images.contiguous(memory_format=memory_format), targets, skipped)

    @torch.no_grad()
    def teacher_targets(self, weak: torch.Tensor) -> list:
        """The EMA teacher's detections on the weak view, split by PSEUDO.HIGH / LOW (with
        the teacher's landmarks when the detector has them)."""
        with autocast(weak.device, self.cfg.RUN.AMP):
            out = self.ema.module(weak)
        dets = self.postprocess(out, tuple(weak.shape[-2:]))
        return [detections_to_targets(d, self.cfg.PSEUDO.HIGH, self.cfg.PSEUDO.LOW)
                for d in dets]

    def strong_view(self, weak: torch.Tensor, step: int, rank: int) -> torch.Tensor:
        """Photometric only (adapt/pseudo/strong_view.py), so the weak view's boxes stay valid. Each
        image draws from (RUN.SEED, step, its position in the global batch) alone: a resumed
        run is exact and N processes draw what one process draws."""
        n = len(weak)
        gens = sample_generators(self.cfg.RUN.SEED, step, rank * n, n, weak.device)
        params = StrongAugParams(lowlight_prob=self.cfg.PSEUDO.STRONG_LOWLIGHT_PROB)
        return strong_augment(weak, self.spec.channel_order, self.spec.mean, self.spec.std,
                              gens, params)

    def update(self, net) -> None:
        """After each optimizer step: the mean teacher follows the student."""
        if self.ema is not None:
            self.ema.update(net)

    def state_dict(self) -> dict:
        state = {}
        if self.loader is not None:
            state["pseudo_loader"] = self.loader.state_dict()
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, ckpt) -> None:
        for key, part in (("pseudo_loader", self.loader), ("ema", self.ema)):
            if part is None:
                continue
            if key in ckpt:
                part.load_state_dict(ckpt[key])
            else:
                log.warning("the checkpoint has no %s state: starting it anew", key)


def build_student(cfg, net, resume, rank: int, world: int, pin: bool) -> Student:
    """The :class:`Student` of ``cfg``; the EMA teacher copies ``net`` (the detector, weights
    loaded or restored), then takes the checkpoint's state when resuming."""
    entry = get_entry(cfg.MODEL.NAME)
    student = Student(cfg, postprocess=entry.postprocess(cfg), spec=entry.input_spec(cfg))
    if cfg.PSEUDO.ENABLE:
        student.loader = build_pseudo_loader(cfg, rank, world, pin)
    if cfg.EMA.ENABLE:
        student.ema = ModelEMA(net, cfg.EMA.DECAY, cfg.EMA.TAU)
    if resume is not None:
        student.load_state_dict(resume.checkpoint)
    return student


def pseudo_losses(criterion, out, batch: PseudoBatch | None) -> dict:
    """The detection loss of the target batch, terms prefixed ``pl_`` (weighted PSEUDO.WEIGHT
    in the sum)."""
    if batch is None:
        return {}
    losses = criterion(out, batch.targets, tuple(batch.images.shape[-2:]))
    return {PL_PREFIX + k: v for k, v in losses.items()}


def pseudo_counts(batch: PseudoBatch | None) -> dict:
    """Faces and ignore regions per target image, for the log."""
    if batch is None:
        return {}
    labels = torch.cat([t[:, 4] for t in batch.targets]) if batch.targets else torch.zeros(0)
    n = max(len(batch.targets), 1)
    return {"pl_faces": float((labels == 1).sum()) / n,
            "pl_ignored": float((labels == -1).sum()) / n}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.multigpu and not dist.launched_by_torchrun():
        return relaunch_per_gpu(argv)
    setup_logging()
    run_dir = None
    try:
        cfg, resume, run_dir = engine.resolve_run(args, run_name)
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
        return train(cfg, resume, run_dir, device, args.overwrite)
    except engine.RunError as exc:
        return engine.report_failure(exc, run_dir)
    finally:
        dist.cleanup()

def train(cfg, resume: engine.Resume | None, run_dir: Path, device: torch.device,
          overwrite: bool = False) -> int:
    world, rank = dist.world_size(), dist.rank()
    check_batches(cfg, build_tasks(cfg), world)
    local_batch = cfg.SOLVER.BATCH_SIZE // world
    finals = ["model_final.pth"] + (["ema_final.pth"] if cfg.EMA.ENABLE else [])
    with engine.Run(run_dir, cfg, resume, device, overwrite, finals) as run:
        log.info("run folder %s; %d process(es) on %s; batch %d per process", run_dir, world,
                 device, local_batch)
        return train_loop(cfg, resume, run, device, local_batch, world, rank)

def train_loop(cfg, resume, run: engine.Run, device, local_batch: int, world: int,
               rank: int) -> int:
    torch.manual_seed(cfg.RUN.SEED)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    memory_format = torch.channels_last if cfg.RUN.CHANNELS_LAST else torch.contiguous_format
    trainer = build_trainer(cfg, resume)
    trainer.to(device, memory_format=memory_format)
    named_params = [(n, p) for n, p in trainer.named_parameters() if p.requires_grad]
    params = [p for _, p in named_params]                   # not the MoCo key parts
    optimizer = build_optimizer(params, cfg.SOLVER)
    scheduler = ReferenceSchedule(optimizer, cfg.SOLVER)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.RUN.AMP == "fp16")
    progress = engine.Progress()
    if resume is not None:
        progress = restore_checkpoint(resume.checkpoint, trainer, optimizer, scheduler, scaler,
                                      cfg)
    # one wrapper around detector + heads syncs every gradient; the queues stay identical
    # through the gathered enqueue, so DDP must not overwrite them with rank 0's buffers
    net = DistributedDataParallel(trainer, broadcast_buffers=False) if dist.is_distributed() \
        else trainer

    pin = device.type == "cuda"
    dataset = build_train_dataset(cfg, require_file(cfg.FACE.SRC_TRAIN_FILE, "FACE.SRC_TRAIN_FILE"),
                                  cfg.FACE.DATA_ROOT, cfg.RUN.SEED)
    loader, sampler = build_detection_loader(cfg, dataset, local_batch, rank, world, pin_memory=pin)
    ssl_loaders = build_ssl_loaders(trainer.tasks, cfg, cfg.SSL.BATCH_SIZE, rank, world, pin)
    if resume is not None:
        engine.restore_loaders(ssl_loaders, resume.checkpoint.get("ssl_loaders", {}))
    student = build_student(cfg, trainer.net, resume, rank, world, pin)
    zero_shot = build_zero_shot(cfg, student.spec)          # None unless ZERO_SHOT.ENABLE
    criterion = build_criterion(cfg)
    validate = build_validation(cfg, trainer, device)
    weight_of = loss_weights(trainer, cfg)           # detection terms: 1
    steps_per_epoch = math.ceil(sampler.per_rank / local_batch)
    max_steps = cfg.SOLVER.MAX_STEPS
    if cfg.SOLVER.STOP_AT_EPOCH_END:                 # the reference's epoch-granular stop
        max_steps = math.ceil(max_steps / steps_per_epoch) * steps_per_epoch
    log.info("%d images, %d steps per epoch, stopping at step %d", len(loader.dataset),
             steps_per_epoch, max_steps)

    meters = run.metrics(max_steps)
    stop = engine.StopRequest()
    state = lambda: {**checkpoint_state(trainer, optimizer, scheduler, scaler,  # noqa: E731
                                        ssl_loaders), **student.state_dict()}
    net.train()
    try:
        while progress.step < max_steps and progress.epoch < cfg.SOLVER.EPOCHES:
            sampler.set_epoch(progress.epoch, skip=progress.epoch_step * local_batch)
            t_data = time.perf_counter()
            for images, targets, skipped in loader:
                ssl_batches, ssl_skipped = next_ssl_batches(ssl_loaders, device, memory_format)
                # the pseudo-labelled target batch, or None (with EMA.REFRESH the teacher's
                # pass counts as data time)
                pl = student.batch(progress.step, rank, device, memory_format)
                if zero_shot is not None:     # + camera-model dark copies, same boxes (CPU)
                    images, targets, n_clean = zero_shot.views(images, targets, progress.step,
                                                               rank)
                data_time = time.perf_counter() - t_data
                images = images.to(device, non_blocking=True, memory_format=memory_format)
                targets = [t.to(device, non_blocking=True) for t in targets]
                with autocast(device, cfg.RUN.AMP):
                    out, ssl_losses = net(images, ssl_batches)
                    # the target batch through the detector itself: DDP's gradient hooks sit on
                    # the parameters, so the one backward below reduces both passes
                    pl_out = trainer.net(pl.images) if pl is not None else None
                    zs_losses = zero_shot.losses(trainer.net, images, n_clean) \
                        if zero_shot is not None else {}
                if pl_out is not None:        # this pass ran outside the trainer: its BN
                    average_batchnorm_statistics(trainer.net)     # statistics, as the others'
                loss_dict = {**criterion(out, targets, tuple(images.shape[-2:])), **ssl_losses,
                             **pseudo_losses(criterion, pl_out, pl), **zs_losses}
                loss = sum(weight_of(k) * v for k, v in loss_dict.items())
                stopping = engine.check_loss(progress.step + 1, loss, loss_dict, device, stop)

                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                norm = None
                if cfg.SOLVER.GRAD_CLIP > 0:
                    scaler.unscale_(optimizer)
                    norm = torch.nn.utils.clip_grad_norm_(params, cfg.SOLVER.GRAD_CLIP)
                if not scaler.is_enabled():              # fp16 skips inf steps by itself
                    engine.check_gradients(progress.step + 1, named_params, loss_dict, norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                student.update(trainer.net)              # the EMA teacher, if any
                progress.step += 1
                progress.epoch_step += 1
                progress.skipped += skipped + ssl_skipped + (pl.skipped if pl else 0)

                meters.update(loss=loss.detach(), **{k: v.detach() for k, v in loss_dict.items()},
                              data_time=data_time, **pseudo_counts(pl))
                last = progress.step == max_steps
                run.log_step(progress.step, last, lr=optimizer.param_groups[0]["lr"],
                             epoch=progress.epoch, skipped_images=progress.skipped)
                if validate is not None:
                    run.evaluate(progress, validate, state)
                if progress.step % cfg.RUN.CKPT_EVERY == 0 or stopping or last:
                    run.save_checkpoint(progress, state, reason=stop.requested)
                if stopping:
                    log.warning("stopped at step %d; resume with --resume auto", progress.step)
                    return 0
                if progress.step >= max_steps:
                    break
                t_data = time.perf_counter()
            else:
                progress.epoch += 1
                progress.epoch_step = 0
        final = run.save_final(trainer.net.state_dict(), "model_final.pth", progress.step)
        log.info("done: %d steps; detector weights in %s", progress.step, final)
        if student.ema is not None:
            final = run.save_final(student.ema.module.state_dict(), "ema_final.pth",
                                   progress.step)
            log.info("mean teacher (EMA) weights in %s", final)
        return 0
    finally:
        stop.restore()

if __name__ == "__main__":
    raise SystemExit(main())
