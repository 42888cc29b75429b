"""Train the illumination enhancer E(L) (REFERENCE 8) on any folder of images.

    python tools/train_enhancer.py [--config PRESET] [--resume auto|CKPT] [--max-steps N]
                                   [KEY.SUB=VALUE ...]

The reference trained on the Zero-DCE training set (ENHANCE.TRAIN_DIR): every image resized to
ENHANCE.SIZE squared (PIL Lanczos) and scaled to [0, 1], no other augmentation; Adam (ENHANCE.LR
2e-4, ENHANCE.WEIGHT_DECAY 1e-4), gradient-norm clip ENHANCE.GRAD_CLIP 0.1, batch
ENHANCE.BATCH_SIZE 8, ENHANCE.EPOCHS 200 with the rate multiplied by ENHANCE.LR_DECAY 0.95 after
each epoch; loss 200 TV + 1 spatial + 5 colour + 10 exposure (towards 0.55).

Runs go to ``RUN.OUTPUT_DIR/<RUN.NAME or "enhancer">/`` like train.py's: ``config.yaml``,
``log.txt``, ``metrics.jsonl``, TensorBoard, a checkpoint ``ckpt_<step>.pth`` at the end of every
epoch, every RUN.CKPT_EVERY steps and on SIGTERM / Ctrl-C (atomic writes; ``--resume auto``
continues exactly), and ``enhancer_final.pth``: a plain 14-tensor state dict in the format of
``Illumination-Enhancer.pth``. One process (CPU or one GPU): the network is small.
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

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:                 # run as `python tools/train_enhancer.py`
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from data import config as config_lib  # noqa: E402
from data.image_folder import list_image_files  # noqa: E402
from data.loaders import resolve_path  # noqa: E402
from data.samplers import ResumableSampler  # noqa: E402
from utils.runs import StopRequest, resolve_run  # noqa: E402
from layers.enhance_losses import EnhanceLoss  # noqa: E402
from models.enhancement import EnhanceNet, init_weights  # noqa: E402
from utils import dist  # noqa: E402
from utils.checkpoint import (atomic_save, load_file,  # noqa: E402
                              prune_checkpoints, rng_state, set_rng_state)
from utils.logger import MetricLogger, setup_logging  # noqa: E402

log = logging.getLogger("train_enhancer")


# ---------------------------------------------------------------------------------------------
# plumbing shared with tools/train_noise.py


@dataclass
class Progress:
    step: int = 0           # optimizer steps taken
    epoch: int = 0
    epoch_step: int = 0     # batches consumed in the current epoch
    skipped: int = 0        # unreadable images met so far


def parse_args(argv=None, doc: str = __doc__) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", action="append", default=[], metavar="PRESET",
                   help="YAML/JSON preset file(s), applied in order before the overrides")
    p.add_argument("--resume", default="", metavar="CKPT|auto",
                   help="continue from a checkpoint, or 'auto' for the newest in the run folder")
    p.add_argument("--max-steps", type=int, default=0, metavar="N",
                   help="stop after N optimizer steps in all (checkpointed, resumable); "
                        "0: no limit")
    p.add_argument("opts", nargs="*", metavar="KEY.SUB=VALUE", help="config overrides")
    return p.parse_args(argv)


def resolve_run_config(args, default_name: str):
    """(config, checkpoint to resume or None, run folder), as train.py resolves them."""
    return resolve_run(args, lambda cfg: cfg.RUN.NAME or default_name)


def single_process_device(cfg) -> torch.device:
    if dist.launched_by_torchrun() and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise RuntimeError("the low-level trainers run in one process; start them with python")
    return dist.pick_device(cfg.RUN.DEVICE)


def non_finite(loss_dict: dict) -> bool:
    return not all(torch.isfinite(v).all() for v in loss_dict.values())


# ---------------------------------------------------------------------------------------------
# data


class TrainImages(Dataset):
    """Images resized to ``size`` x ``size`` (PIL Lanczos, the reference's ANTIALIAS), as
    [3, size, size] float in [0, 1]; ``None`` for an unreadable file. Keys are
    ``(epoch, index)`` from :class:`ResumableSampler`."""

    def __init__(self, paths: list[Path], size: int):
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        _, index = key
        try:
            with Image.open(self.paths[index]) as im:
                im = im.convert("RGB").resize((self.size, self.size), Image.LANCZOS)
                rgb = np.asarray(im)
        except (OSError, ValueError) as exc:
            log.warning("skipping unreadable image %s: %s", self.paths[index], exc)
            return None
        return torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().div_(255.0)


def collate_images(samples):
    good = [s for s in samples if s is not None]
    return (torch.stack(good) if good else None), len(samples) - len(good)


def build_loader(cfg, device: torch.device):
    paths = list_image_files(resolve_path(cfg.ENHANCE.TRAIN_DIR), "ENHANCE.TRAIN_DIR")
    if not paths:
        raise FileNotFoundError(f"no images in {cfg.ENHANCE.TRAIN_DIR} (set by config key "
                                f"ENHANCE.TRAIN_DIR)")
    dataset = TrainImages(paths, cfg.ENHANCE.SIZE)
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


def save_checkpoint(path: Path, net, optimizer, scheduler, progress: Progress, cfg) -> None:
    atomic_save({"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "step": progress.step,
                 "epoch": progress.epoch, "epoch_step": progress.epoch_step,
                 "skipped": progress.skipped, "config": config_lib.to_dict(cfg),
                 "rng": rng_state()}, path)
    log.info("saved %s", path)


def load_checkpoint(path: Path, net, optimizer, scheduler) -> Progress:
    ckpt = load_file(path, "checkpoint")
    net.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_state(ckpt["rng"])
    log.info("resumed from %s at step %d (epoch %d)", path, ckpt["step"], ckpt["epoch"])
    return Progress(ckpt["step"], ckpt["epoch"], ckpt["epoch_step"], ckpt.get("skipped", 0))


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging()
    cfg, resume, run_dir = resolve_run_config(args, "enhancer")
    device = single_process_device(cfg)
    return train(cfg, resume, run_dir, device, args.max_steps)


def train(cfg, resume: Path | None, run_dir: Path, device: torch.device, max_steps: int = 0
          ) -> int:
    E = cfg.ENHANCE
    run_dir.mkdir(parents=True, exist_ok=True)
    config_lib.dump(cfg, run_dir / "config.yaml")
    setup_logging(run_dir)
    torch.manual_seed(cfg.RUN.SEED)

    net = EnhanceNet()
    init_weights(net)
    net.to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=E.LR, weight_decay=E.WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=E.LR_DECAY)
    progress = Progress()
    if resume is not None:
        progress = load_checkpoint(resume, net, optimizer, scheduler)
    criterion = EnhanceLoss(E.W_TV, E.W_SPA, E.W_COL, E.W_EXP, E.EXPOSURE)
    loader, sampler = build_loader(cfg, device)
    steps_per_epoch = math.ceil(len(loader.dataset) / E.BATCH_SIZE)
    total = steps_per_epoch * E.EPOCHS
    log.info("run folder %s on %s: %d images, %d steps per epoch, %d epochs", run_dir, device,
             len(loader.dataset), steps_per_epoch, E.EPOCHS)

    meters = MetricLogger(run_dir, total, cfg.RUN.TENSORBOARD)
    stop = StopRequest()
    net.train()
    try:
        while progress.epoch < E.EPOCHS:
            sampler.set_epoch(progress.epoch, skip=progress.epoch_step * E.BATCH_SIZE)
            t_data = time.perf_counter()
            for images, skipped in loader:
                data_time = time.perf_counter() - t_data
                progress.epoch_step += 1
                progress.skipped += skipped
                if images is not None:
                    x = images.to(device, non_blocking=True)
                    y, maps = net(x)
                    loss_dict = criterion(x, y, maps)
                    if non_finite(loss_dict):
                        log.error("non-finite loss at step %d: %s; stopping (the last checkpoint "
                                  "is kept)", progress.step + 1,
                                  {k: float(v.detach()) for k, v in loss_dict.items()})
                        return 1
                    loss = sum(loss_dict.values())
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(net.parameters(), E.GRAD_CLIP)
                    optimizer.step()
                    progress.step += 1
                    meters.update(loss=loss.detach(), data_time=data_time,
                                  **{k: v.detach() for k, v in loss_dict.items()})
                    if progress.step % cfg.RUN.LOG_EVERY == 0:
                        meters.write(progress.step, {**meters.averages(),
                                                     "lr": optimizer.param_groups[0]["lr"],
                                                     "epoch": progress.epoch,
                                                     "skipped_images": progress.skipped})
                if progress.epoch_step == steps_per_epoch:          # epoch done
                    progress.epoch += 1
                    progress.epoch_step = 0
                    scheduler.step()                                # lr x LR_DECAY
                stopping = stop.requested or (max_steps and progress.step >= max_steps)
                if (progress.epoch_step == 0 or stopping
                        or (images is not None and progress.step % cfg.RUN.CKPT_EVERY == 0)):
                    save_checkpoint(run_dir / f"ckpt_{progress.step}.pth", net, optimizer,
                                    scheduler, progress, cfg)
                    prune_checkpoints(run_dir, cfg.RUN.KEEP_CKPTS)
                if stopping:
                    log.warning("stopped at step %d; resume with --resume auto", progress.step)
                    return 0
                if progress.epoch_step == 0:
                    break
                t_data = time.perf_counter()
        atomic_save(net.state_dict(), run_dir / "enhancer_final.pth")
        log.info("done: %d steps; enhancer weights in %s", progress.step,
                 run_dir / "enhancer_final.pth")
        return 0
    finally:
        stop.restore()
        meters.close()


if __name__ == "__main__":
    raise SystemExit(main())
