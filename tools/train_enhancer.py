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
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from utils.files import resolve_path
from data.image_folder import UNREADABLE, list_image_files, load_rgb
from data.lowlight_model import camera_spec, darken_tensor
from data.samplers import ResumableSampler
from lowlevel.losses import EnhanceLoss
from lowlevel.enhancement import EnhanceNet, init_weights
from engine import run as engine
from engine.cli import TrainerEpochs, run_trainer, trainer_arguments

log = logging.getLogger("train_enhancer")


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
    progress = engine.restore(ckpt, model=net, optimizer=optimizer, scheduler=scheduler)
    scheduler.gamma = cfg.ENHANCE.LR_DECAY
    engine.apply_optimizer_config(optimizer, scheduler, lr=cfg.ENHANCE.LR,
                                  weight_decay=cfg.ENHANCE.WEIGHT_DECAY)
    log.info("resumed at step %d (epoch %d)", ckpt["step"], ckpt["epoch"])
    return progress


def main(argv=None) -> int:
    args = trainer_arguments(__doc__).parse_args(argv)
    return run_trainer(args, "enhancer", "enhancer_final.pth",
                       lambda cfg: (cfg.ENHANCE.EPOCHS, "ENHANCE.EPOCHS"), train)


def build_training(cfg, resume, device: torch.device):
    """E(L) (initialised as the reference, or resumed), Adam and its exponential decay, and
    the progress to go on from."""
    E = cfg.ENHANCE
    torch.manual_seed(cfg.RUN.SEED)
    net = EnhanceNet()
    init_weights(net)
    net.to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=E.LR, weight_decay=E.WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=E.LR_DECAY)
    progress = engine.Progress()
    if resume is not None:
        progress = restore_checkpoint(resume.checkpoint, net, optimizer, scheduler, cfg)
    return net, optimizer, scheduler, progress


def enhance_step(net, criterion, optimizer, x: torch.Tensor, step: int, grad_clip: float,
                 named_params: list) -> tuple[torch.Tensor, dict]:
    """One update of E(L) on the batch ``x`` (the ``step``-th, for the non-finite checks);
    returns the loss and its terms."""
    y, maps = net(x)
    loss_dict = criterion(x, y, maps)
    loss = sum(loss_dict.values())
    engine.check_loss(step, loss, loss_dict, x.device)      # a stop is the loop's to see
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    engine.check_gradients(step, named_params, loss_dict, norm)
    optimizer.step()
    return loss, loss_dict


def train(cfg, resume, run: engine.Run, device: torch.device, max_steps: int = 0) -> int:
    E = cfg.ENHANCE
    net, optimizer, scheduler, progress = build_training(cfg, resume, device)
    named_params = list(net.named_parameters())
    criterion = EnhanceLoss(E.W_TV, E.W_SPA, E.W_COL, E.W_EXP, E.EXPOSURE)
    loader, sampler = build_loader(cfg, device)
    state = lambda: {"model": net.state_dict(), "optimizer": optimizer.state_dict(),  # noqa
                     "scheduler": scheduler.state_dict()}
    # the scheduler steps at each epoch end: lr x LR_DECAY
    loop = TrainerEpochs(run, progress, loader, sampler, E.EPOCHS, state, [scheduler],
                         max_steps, log)
    log.info("run folder %s on %s: %d images, %d steps per epoch, %d epochs", run.dir, device,
             len(loader.dataset), loop.steps_per_epoch, E.EPOCHS)

    net.train()
    with loop:
        for (images, _), data_time in loop:
            if images is None:
                continue
            loss, loss_dict = enhance_step(net, criterion, optimizer,
                                           images.to(device, non_blocking=True),
                                           progress.step + 1, E.GRAD_CLIP, named_params)
            loop.meters.update(loss=loss.detach(), data_time=data_time,
                               **{k: v.detach() for k, v in loss_dict.items()})
            loop.step_done(lr=optimizer.param_groups[0]["lr"])
        loop.finish(net.state_dict(), "enhancer_final.pth", "enhancer weights")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
