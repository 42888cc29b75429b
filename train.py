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

The run folder (``RUN.OUTPUT_DIR/<run name>/``) and its checkpoints are the engine's
(``utils/engine.py``): ``ckpt_<step>.pth`` every RUN.CKPT_EVERY steps, at the end and on SIGTERM
or Ctrl-C, written atomically and only when every tensor is finite; ``--resume auto`` (or a path)
continues a run exactly (queues and the position of every task loader included) and refuses
config changes outside the resumable keys; a NaN/Inf loss or gradient stops the run naming the
loss terms and tensors, the last good checkpoint kept. RUN.EVAL_EVERY adds a periodic AP on
FACE.SRC_VAL_FILE and keeps ``best.pth``. A checkpoint's ``model`` entry is the HLA trainer
state dict (``net.*`` plus the heads; REFERENCE 12.2).
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from data.files import resolve_path
from data.image_folder import read_rgb
from data.loaders import build_detection_loader, require_file
from data.ssl_tasks import build_ssl_loaders, next_ssl_batches
from data.widerface import parse_list_file
from evaluation.darkface import evaluate_darkface_boxes
from models.factory import build_net, get_entry
from models.hla_trainer import HLATrainer, init_heads, trainer_state_dict
from models.inference import FaceDetector, autocast
from models.ssl_tasks import build_tasks, check_moco_batch, tagged_run_name
from utils import dist, engine
from utils.checkpoint import init_detector
from utils.logger import setup_logging
from utils.schedule import ReferenceSchedule

log = logging.getLogger("train")


def parse_args(argv=None):
    p = engine.run_arguments(__doc__)
    p.add_argument("--multigpu", action="store_true",
                   help="start one DDP process per visible GPU (same as torchrun)")
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
    return tagged_run_name(cfg, base, cfg.TRAIN_WEIGHT)


def check_tasks(cfg) -> None:
    if not cfg.TRAIN.MAIN:
        raise ValueError("config key TRAIN.MAIN=False: detection-free training is done by "
                         "pretrain_fast_headers.py")


def check_batches(cfg, tasks, world: int) -> None:
    for key in ("SOLVER.BATCH_SIZE",) + (("SSL.BATCH_SIZE",) if tasks else ()):
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


def ssl_input_is_bgr(cfg) -> bool:
    """The task loaders normalise RGB pixels by AUG.img_mean (given B, G, R); a BGR detector
    (YuNet, RetinaFace) reads the same tensors with the channels flipped, which is exact when
    its input mean is AUG.img_mean and it does not scale."""
    spec = get_entry(cfg.MODEL.NAME).input_spec(cfg)
    mean = tuple(cfg.AUG.img_mean) if spec.channel_order == "BGR" else tuple(cfg.AUG.img_mean)[::-1]
    if tuple(spec.mean) != mean or any(s != 1 for s in spec.std):
        raise ValueError(f"config key AUG.img_mean={list(cfg.AUG.img_mean)} does not match the "
                         f"input normalisation of MODEL.NAME={cfg.MODEL.NAME} (mean "
                         f"{list(spec.mean)} in {spec.channel_order} order, std "
                         f"{list(spec.std)}); the self-supervised loaders would feed it "
                         f"wrongly normalised images")
    return spec.channel_order == "BGR"


def build_optimizer(params, solver) -> torch.optim.Optimizer:
    """SGD as the reference (REFERENCE 2.6); AdamW for short from-scratch runs such as the
    demo. The schedule sets the lr, starting at WARMUP_LR."""
    if solver.OPTIMIZER == "sgd":                 # the choices are checked at start-up
        return torch.optim.SGD(params, lr=solver.WARMUP_LR, momentum=solver.MOMENTUM,
                               weight_decay=solver.WEIGHT_DECAY)
    return torch.optim.AdamW(params, lr=solver.WARMUP_LR, weight_decay=solver.WEIGHT_DECAY)


def build_validation(cfg, trainer, device):
    """RUN.EVAL_EVERY's evaluation, or None when it is off: the detector at one scale (the
    image as it is) on the first RUN.EVAL_IMAGES images of FACE.SRC_VAL_FILE, scored with the
    DARK FACE protocol (AP at IoU 0.5 against the list's boxes)."""
    if cfg.RUN.EVAL_EVERY <= 0:
        return None
    records = parse_list_file(require_file(cfg.FACE.SRC_VAL_FILE, "FACE.SRC_VAL_FILE"),
                              root=cfg.FACE.DATA_ROOT, keep_empty=True)
    records = records[:cfg.RUN.EVAL_IMAGES or None]

    def evaluate() -> dict:
        detector = FaceDetector.from_config(trainer.net, cfg, device)
        gt, preds = {}, {}
        for i, record in enumerate(records):
            rgb = read_rgb(record.path)
            h, w = rgb.shape[:2]
            dets = detector(rgb[None])[0][:, :5].double().numpy()
            preds[str(i)] = dets * np.array([w, h, w, h, 1.0])        # pixels, score
            gt[str(i)] = record.boxes
        trainer.train()                                # FaceDetector switched it to eval
        return {"val_ap": evaluate_darkface_boxes(gt, preds)["ap"]}
    return evaluate


def checkpoint_state(trainer, optimizer, scheduler, scaler, ssl_loaders) -> dict:
    """What a checkpoint holds besides the engine's progress, config and RNG states; the
    ``model`` entry is the HLA trainer state dict (``net.*`` plus the heads; REFERENCE 12.2)."""
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
    with engine.Run(run_dir, cfg, resume, device, overwrite, ["model_final.pth"]) as run:
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
    loader, sampler = build_detection_loader(cfg, local_batch, rank, world, pin_memory=pin)
    ssl_loaders = build_ssl_loaders(trainer.tasks, cfg, cfg.SSL.BATCH_SIZE, rank, world, pin)
    if resume is not None:
        engine.restore_loaders(ssl_loaders, resume.checkpoint.get("ssl_loaders", {}))
    criterion = build_criterion(cfg)
    validate = build_validation(cfg, trainer, device)
    weights = trainer.loss_weights                   # detection terms: 1
    steps_per_epoch = math.ceil(sampler.per_rank / local_batch)
    max_steps = cfg.SOLVER.MAX_STEPS
    if cfg.SOLVER.STOP_AT_EPOCH_END:                 # the reference's epoch-granular stop
        max_steps = math.ceil(max_steps / steps_per_epoch) * steps_per_epoch
    log.info("%d images, %d steps per epoch, stopping at step %d", len(loader.dataset),
             steps_per_epoch, max_steps)

    meters = run.metrics(max_steps)
    stop = engine.StopRequest()
    state = lambda: checkpoint_state(trainer, optimizer, scheduler, scaler, ssl_loaders)  # noqa
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
                progress.step += 1
                progress.epoch_step += 1
                progress.skipped += skipped + ssl_skipped

                meters.update(loss=loss.detach(), **{k: v.detach() for k, v in loss_dict.items()},
                              data_time=data_time)
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
        return 0
    finally:
        stop.restore()


if __name__ == "__main__":
    raise SystemExit(main())
