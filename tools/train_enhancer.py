"""Train the illumination enhancer E(L) (docs/LOW_LEVEL.md) on any folder of images.

    python tools/train_enhancer.py [--config PRESET] [--resume auto|CKPT] [--max-steps N]
                                   [KEY.SUB=VALUE ...]

The reference trained on the Zero-DCE training set (ENHANCE.TRAIN_DIR): every image resized to
ENHANCE.SIZE squared (PIL Lanczos) and scaled to [0, 1], no other augmentation; Adam (ENHANCE.LR
2e-4, ENHANCE.WEIGHT_DECAY 1e-4), gradient-norm clip ENHANCE.GRAD_CLIP 0.1, batch
ENHANCE.BATCH_SIZE 8, ENHANCE.EPOCHS 200 with the rate multiplied by ENHANCE.LR_DECAY 0.95 after
each epoch; loss 200 TV + 1 spatial + 5 colour + 10 exposure (towards 0.55).

ENHANCE.TRAIN_CAMERA=True (ours) trains on night copies instead: after the resize, every image is
replaced by its camera-model copy (data/camera.py with CAMERA.PRESET and the CAMERA.* ranges),
seeded by (RUN.SEED, epoch, image index), so each epoch sees new darkness and noise and a resumed
run the same ones. Point ENHANCE.TRAIN_DIR at daylight photos (docs/LOW_LEVEL.md).

Runs go to ``RUN.OUTPUT_DIR/<RUN.NAME or "enhancer">/``, a run folder of the engine
(``engine/run.py``) like train.py's: ``config.yaml``, ``log.txt``, ``metrics.jsonl``,
TensorBoard, a checkpoint ``ckpt_<step>.pth`` at the end of every epoch, every RUN.CKPT_EVERY
steps and on SIGTERM / Ctrl-C (atomic, finite; ``--resume auto`` continues exactly), and
``enhancer_final.pth``: a plain 14-tensor state dict in the format of
``Illumination-Enhancer.pth``. One process (CPU or one GPU): the network is small.
"""
from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:                 # run as `python tools/train_enhancer.py`
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from utils.files import resolve_path  # noqa: E402
from data.image_folder import UNREADABLE, list_image_files, load_rgb  # noqa: E402
from data.lowlight_model import camera_spec, darken_tensor  # noqa: E402
from data.samplers import ResumableSampler  # noqa: E402
from lowlevel.losses import EnhanceLoss  # noqa: E402
from lowlevel.enhancement import EnhanceNet, init_weights  # noqa: E402
from engine import run as engine  # noqa: E402
from utils.logger import setup_logging  # noqa: E402

log = logging.getLogger("train_enhancer")


def parse_args(argv=None):
    p = engine.run_arguments(__doc__)
    p.add_argument("--max-steps", type=int, default=0, metavar="N",
                   help="stop after N optimizer steps in all (checkpointed, resumable); "
                        "0: no limit")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# data


class TrainImages(Dataset):
    """Images resized to ``size`` x ``size`` (PIL Lanczos, the reference's ANTIALIAS), as
    [3, size, size] float in [0, 1]; ``None`` for an unreadable file. Keys are
    ``(epoch, index)`` from :class:`ResumableSampler`."""

    def __init__(self, paths: list[Path], size: int, camera=None, seed: int = 0):
        self.paths, self.size = paths, size
        self.camera, self.seed = camera, seed     # ENHANCE.TRAIN_CAMERA: night copies

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        epoch, index = key
        try:
            im = load_rgb(self.paths[index]).resize((self.size, self.size), Image.LANCZOS)
        except UNREADABLE as exc:
            log.warning("skipping unreadable image %s: %s", self.paths[index], exc)
            return None
        x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float().div_(255.0)
        if self.camera is None:
            return x
        seed = np.random.SeedSequence([self.seed, epoch, index]).generate_state(1, np.uint64)[0]
        return darken_tensor(x[None], self.camera, [int(seed) & (2 ** 62 - 1)])[0]


def collate_images(samples):
    good = [s for s in samples if s is not None]
    return (torch.stack(good) if good else None), len(samples) - len(good)


def build_loader(cfg, device: torch.device):
    paths = list_image_files(resolve_path(cfg.ENHANCE.TRAIN_DIR), "ENHANCE.TRAIN_DIR")
    if not paths:
        raise FileNotFoundError(f"no images in {cfg.ENHANCE.TRAIN_DIR} (set by config key "
                                f"ENHANCE.TRAIN_DIR)")
    camera = camera_spec(cfg, force=True) if cfg.ENHANCE.TRAIN_CAMERA else None
    dataset = TrainImages(paths, cfg.ENHANCE.SIZE, camera, cfg.RUN.SEED)
    sampler = ResumableSampler(len(dataset), cfg.ENHANCE.BATCH_SIZE, shuffle=True,
                               seed=cfg.RUN.SEED)
    loader = DataLoader(dataset, batch_size=cfg.ENHANCE.BATCH_SIZE, sampler=sampler,
                        num_workers=cfg.RUN.NUM_WORKERS, collate_fn=collate_images,
                        pin_memory=device.type == "cuda", drop_last=False,
                        # its own generator: making an iterator must not draw from the global
                        # RNG, or a resumed run's random stream would shift
                        generator=torch.Generator().manual_seed(cfg.RUN.SEED))
    return loader, sampler


# ---------------------------------------------------------------------------------------------
# the run


def restore_checkpoint(ckpt, net, optimizer, scheduler, cfg) -> engine.Progress:
    net.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scheduler.gamma = cfg.ENHANCE.LR_DECAY
    engine.apply_optimizer_config(optimizer, scheduler, lr=cfg.ENHANCE.LR,
                                  weight_decay=cfg.ENHANCE.WEIGHT_DECAY)
    log.info("resumed at step %d (epoch %d)", ckpt["step"], ckpt["epoch"])
    return engine.restore(ckpt)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging()
    run_dir = None
    try:
        cfg, resume, run_dir = engine.resolve_run(args, lambda c: c.RUN.NAME or "enhancer")
        if engine.nothing_to_do(cfg.ENHANCE.EPOCHS, "ENHANCE.EPOCHS"):
            return 0
        device = engine.single_process_device(cfg)
        with engine.Run(run_dir, cfg, resume, device, args.overwrite,
                        ["enhancer_final.pth"]) as run:
            return train(cfg, resume, run, device, args.max_steps)
    except engine.RunError as exc:
        return engine.report_failure(exc, run_dir)


def train(cfg, resume, run: engine.Run, device: torch.device, max_steps: int = 0) -> int:
    E = cfg.ENHANCE
    torch.manual_seed(cfg.RUN.SEED)
    net = EnhanceNet()
    init_weights(net)
    net.to(device)
    named_params = list(net.named_parameters())
    optimizer = torch.optim.Adam(net.parameters(), lr=E.LR, weight_decay=E.WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=E.LR_DECAY)
    progress = engine.Progress()
    if resume is not None:
        progress = restore_checkpoint(resume.checkpoint, net, optimizer, scheduler, cfg)
    criterion = EnhanceLoss(E.W_TV, E.W_SPA, E.W_COL, E.W_EXP, E.EXPOSURE)
    loader, sampler = build_loader(cfg, device)
    steps_per_epoch = math.ceil(len(loader.dataset) / E.BATCH_SIZE)
    total = steps_per_epoch * E.EPOCHS
    log.info("run folder %s on %s: %d images, %d steps per epoch, %d epochs", run.dir, device,
             len(loader.dataset), steps_per_epoch, E.EPOCHS)

    meters = run.metrics(total)
    stop = engine.StopRequest()
    state = lambda: {"model": net.state_dict(), "optimizer": optimizer.state_dict(),  # noqa
                     "scheduler": scheduler.state_dict()}
    net.train()
    try:
        while progress.epoch < E.EPOCHS:
            sampler.set_epoch(progress.epoch, skip=progress.epoch_step * E.BATCH_SIZE)
            t_data = time.perf_counter()
            for images, skipped in loader:
                data_time = time.perf_counter() - t_data
                progress.epoch_step += 1
                progress.skipped += skipped
                stopping = bool(stop.requested)
                if images is not None:
                    x = images.to(device, non_blocking=True)
                    y, maps = net(x)
                    loss_dict = criterion(x, y, maps)
                    loss = sum(loss_dict.values())
                    stopping = engine.check_loss(progress.step + 1, loss, loss_dict, device,
                                                 stop)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    norm = torch.nn.utils.clip_grad_norm_(net.parameters(), E.GRAD_CLIP)
                    engine.check_gradients(progress.step + 1, named_params, loss_dict, norm)
                    optimizer.step()
                    progress.step += 1
                    meters.update(loss=loss.detach(), data_time=data_time,
                                  **{k: v.detach() for k, v in loss_dict.items()})
                    run.log_step(progress.step, progress.step == total,
                                 lr=optimizer.param_groups[0]["lr"], epoch=progress.epoch,
                                 skipped_images=progress.skipped)
                if progress.epoch_step == steps_per_epoch:          # epoch done
                    progress.epoch += 1
                    progress.epoch_step = 0
                    scheduler.step()                                # lr x LR_DECAY
                stopping = (stopping or bool(stop.requested)
                            or bool(max_steps and progress.step >= max_steps))
                if (progress.epoch_step == 0 or stopping
                        or (images is not None and progress.step % cfg.RUN.CKPT_EVERY == 0)):
                    run.save_checkpoint(progress, state, reason=stop.requested)
                if stopping:
                    log.warning("stopped at step %d; resume with --resume auto", progress.step)
                    return 0
                if progress.epoch_step == 0:
                    break
                t_data = time.perf_counter()
        final = run.save_final(net.state_dict(), "enhancer_final.pth", progress.step)
        log.info("done: %d steps; enhancer weights in %s", progress.step, final)
        return 0
    finally:
        stop.restore()


if __name__ == "__main__":
    raise SystemExit(main())
