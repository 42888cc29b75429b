"""Train the pix2pix that synthesises low-light noise, E(L)_blur -> E(L) (docs/LOW_LEVEL.md).

    python tools/train_noise.py [--config PRESET] [--resume auto|CKPT] [--max-steps N]
                                [KEY.SUB=VALUE ...]

Pairs: every image of NOISE.BLUR_DIR (made by ``tools/blur_images.py --mode el``) with the
image of the same relative path in ENHANCE.ENHANCED_DIR. Each step takes NOISE.BATCH_SIZE
aligned random NOISE.CROP crops (same window and flip for both), in [-1, 1].

The reference's settings (pix2pix defaults plus HLA-Face's flags): U-Net-256 generator and
70x70 PatchGAN with batch norm, widths NOISE.NGF / NOISE.NDF = 64; vanilla GAN loss
(BCE with logits) plus NOISE.LAMBDA_L1 = 100 x L1; Adam NOISE.LR 2e-4, betas (NOISE.BETA1 0.5,
0.999) for both nets; NOISE.EPOCHS 100 at that rate then NOISE.EPOCHS_DECAY 100 with a linear
decay towards zero; no pool of generated images. Per step: D on (A, G(A)) as fake and (A, B) as
real, each half-weighted; then G with D frozen.

Runs go to ``RUN.OUTPUT_DIR/<RUN.NAME or "noise_pix2pix">/``, a run folder of the engine
(``engine/run.py``) as train.py's (config.yaml, log.txt, metrics.jsonl, TensorBoard,
``ckpt_<step>.pth`` at epoch ends, every RUN.CKPT_EVERY steps and on SIGTERM / Ctrl-C;
``--resume auto``); the update itself is ``engine/gan.py``'s; ``G_final.pth`` is the plain
generator state dict that ``tools/synthesize_noise.py`` reads (NOISE.GENERATOR_WEIGHTS).
Real training needs a GPU (docs/LOW_LEVEL.md has the CPU step time).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from utils.files import resolve_path
from data.image_folder import list_image_files
from lowlevel.noise import PairedCrops, collate_pairs
from data.samplers import ResumableSampler
from lowlevel.pix2pix import PatchDiscriminator, UnetGenerator, init_weights
from engine import run as engine
from engine.cli import TrainerEpochs, run_trainer, trainer_arguments
from engine.gan import linear_decay, pix2pix_step

log = logging.getLogger("train_noise")


def find_pairs(cfg) -> list[tuple[Path, Path]]:
    blur_dir = resolve_path(cfg.NOISE.BLUR_DIR)
    sharp_dir = resolve_path(cfg.ENHANCE.ENHANCED_DIR)
    if not sharp_dir.is_dir():
        raise FileNotFoundError(f"image folder {sharp_dir} does not exist (set by config key "
                                f"ENHANCE.ENHANCED_DIR)")
    pairs, missing = [], 0
    for a in list_image_files(blur_dir, "NOISE.BLUR_DIR"):
        b = sharp_dir / a.relative_to(blur_dir)
        if b.is_file():
            pairs.append((a, b))
        else:
            missing += 1
    if missing:
        log.warning("%d blurred images have no counterpart in %s (ENHANCE.ENHANCED_DIR)",
                    missing, sharp_dir)
    if not pairs:
        raise FileNotFoundError(f"no (blurred, enhanced) pairs between {blur_dir} "
                                f"(NOISE.BLUR_DIR) and {sharp_dir} (ENHANCE.ENHANCED_DIR)")
    return pairs


def build_nets(cfg, device):
    N = cfg.NOISE
    G = UnetGenerator(3, 3, num_downs=8, ngf=N.NGF, dropout=True)
    D = PatchDiscriminator(6, ndf=N.NDF, n_layers=3)
    init_weights(G)
    init_weights(D)
    G.to(device)
    D.to(device)
    betas = (N.BETA1, 0.999)
    opt_g = torch.optim.Adam(G.parameters(), lr=N.LR, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=N.LR, betas=betas)
    rule = linear_decay(N.EPOCHS, N.EPOCHS_DECAY)
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, rule) for o in (opt_g, opt_d)]
    return G, D, opt_g, opt_d, scheds


def checkpoint_state(nets) -> dict:
    G, D, opt_g, opt_d, (s_g, s_d) = nets
    return {"G": G.state_dict(), "D": D.state_dict(), "opt_G": opt_g.state_dict(),
            "opt_D": opt_d.state_dict(), "sched_G": s_g.state_dict(),
            "sched_D": s_d.state_dict()}


def restore_checkpoint(ckpt, nets, cfg) -> engine.Progress:
    G, D, opt_g, opt_d, (s_g, s_d) = nets
    progress = engine.restore(ckpt, G=G, D=D, opt_G=opt_g, opt_D=opt_d, sched_G=s_g,
                              sched_D=s_d)
    for opt, sched in ((opt_g, s_g), (opt_d, s_d)):
        engine.apply_optimizer_config(opt, sched, lr=cfg.NOISE.LR,
                                      betas=(cfg.NOISE.BETA1, 0.999))
    log.info("resumed at step %d (epoch %d)", ckpt["step"], ckpt["epoch"])
    return progress


def main(argv=None) -> int:
    args = trainer_arguments(__doc__).parse_args(argv)
    return run_trainer(args, "noise_pix2pix", "G_final.pth",
                       lambda cfg: (cfg.NOISE.EPOCHS + cfg.NOISE.EPOCHS_DECAY,
                                    "NOISE.EPOCHS + NOISE.EPOCHS_DECAY"), train)


def build_loader(cfg, device: torch.device):
    """The aligned crops of the (blurred, enhanced) pairs, shuffled by a resumable sampler."""
    N = cfg.NOISE
    dataset = PairedCrops(find_pairs(cfg), N.CROP, cfg.RUN.SEED)
    sampler = ResumableSampler(len(dataset), N.BATCH_SIZE, shuffle=True, seed=cfg.RUN.SEED)
    loader = DataLoader(dataset, batch_size=N.BATCH_SIZE, sampler=sampler,
                        num_workers=cfg.RUN.NUM_WORKERS, collate_fn=collate_pairs,
                        pin_memory=device.type == "cuda",
                        # its own generator: making an iterator must not draw from the global
                        # RNG (dropout's), or a resumed run would diverge
                        generator=torch.Generator().manual_seed(cfg.RUN.SEED))
    return loader, sampler


def train(cfg, resume, run: engine.Run, device: torch.device, max_steps: int = 0) -> int:
    N = cfg.NOISE
    torch.manual_seed(cfg.RUN.SEED)
    nets = build_nets(cfg, device)
    G, D, opt_g, opt_d, scheds = nets
    progress = engine.Progress()
    if resume is not None:
        progress = restore_checkpoint(resume.checkpoint, nets, cfg)
    loader, sampler = build_loader(cfg, device)
    loop = TrainerEpochs(run, progress, loader, sampler, N.EPOCHS + N.EPOCHS_DECAY,
                         lambda: checkpoint_state(nets), scheds, max_steps, log)
    log.info("run folder %s on %s: %d pairs, %d steps per epoch, %d + %d epochs", run.dir,
             device, len(loader.dataset), loop.steps_per_epoch, N.EPOCHS, N.EPOCHS_DECAY)

    G.train()
    D.train()
    with loop:
        for (real_a, real_b, _), data_time in loop:
            if real_a is None:
                continue
            losses = pix2pix_step(G, D, opt_g, opt_d, real_a.to(device), real_b.to(device),
                                  N.LAMBDA_L1, progress.step + 1)
            loop.meters.update(data_time=data_time, **losses)
            loop.step_done(lr=opt_g.param_groups[0]["lr"])
        loop.finish(G.state_dict(), "G_final.pth", "generator weights")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
