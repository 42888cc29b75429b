"""Train the pix2pix that synthesises low-light noise, E(L)_blur -> E(L) (REFERENCE 9, item 2).

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

Runs go to ``RUN.OUTPUT_DIR/<RUN.NAME or "noise_pix2pix">/`` with train.py's conventions
(config.yaml, log.txt, metrics.jsonl, TensorBoard, ``ckpt_<step>.pth`` at epoch ends, every
RUN.CKPT_EVERY steps and on SIGTERM / Ctrl-C; ``--resume auto``); ``G_final.pth`` is the plain
generator state dict that ``tools/synthesize_noise.py`` reads (NOISE.GENERATOR_WEIGHTS).
Real training needs a GPU (docs/LOW_LEVEL.md has the CPU step time).
"""
from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:                 # run as `python tools/train_noise.py`
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from data import config as config_lib  # noqa: E402
from data.image_folder import list_image_files  # noqa: E402
from data.loaders import resolve_path  # noqa: E402
from data.noise_synthesis import PairedCrops, collate_pairs  # noqa: E402
from data.samplers import ResumableSampler  # noqa: E402
from models.pix2pix import PatchDiscriminator, UnetGenerator, init_weights  # noqa: E402
from tools.train_enhancer import (Progress, StopRequest, non_finite, parse_args,  # noqa: E402
                                  resolve_run_config, single_process_device)
from utils.checkpoint import (atomic_save, load_file, prune_checkpoints, rng_state,  # noqa: E402
                              set_rng_state)
from utils.logger import MetricLogger, setup_logging  # noqa: E402

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


def gan_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Vanilla GAN loss: BCE of every patch logit against 1 (real) or 0 (fake)."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


def pix2pix_step(G, D, opt_g, opt_d, real_a, real_b, lambda_l1: float) -> dict:
    """One pix2pix update (D, then G). Returns the loss terms, detached; the D terms carry their
    0.5 weight, G_L1 its lambda. Raises FloatingPointError, before any update, on a NaN."""
    fake_b = G(real_a)
    D.requires_grad_(True)
    d_terms = {"D_fake": 0.5 * gan_loss(D(torch.cat([real_a, fake_b.detach()], 1)), False),
               "D_real": 0.5 * gan_loss(D(torch.cat([real_a, real_b], 1)), True)}
    if non_finite(d_terms):
        raise FloatingPointError({k: float(v) for k, v in d_terms.items()})
    opt_d.zero_grad(set_to_none=True)
    sum(d_terms.values()).backward()
    opt_d.step()

    D.requires_grad_(False)                    # G's step does not touch D's gradients
    g_terms = {"G_GAN": gan_loss(D(torch.cat([real_a, fake_b], 1)), True),
               "G_L1": lambda_l1 * F.l1_loss(fake_b, real_b)}
    if non_finite(g_terms):
        raise FloatingPointError({k: float(v) for k, v in g_terms.items()})
    opt_g.zero_grad(set_to_none=True)
    sum(g_terms.values()).backward()
    opt_g.step()
    D.requires_grad_(True)
    return {k: v.detach() for k, v in {**d_terms, **g_terms}.items()}


def linear_decay(n_epochs: int, n_decay: int):
    """pix2pix's 'linear' policy: factor 1 for the first ``n_epochs`` epochs (0-based epoch
    e < n_epochs), then ``1 - (e + 1 - n_epochs) / (n_decay + 1)``."""
    return lambda e: 1.0 - max(0, e + 1 - n_epochs) / float(n_decay + 1)


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


def save_checkpoint(path, nets, progress: Progress, cfg) -> None:
    G, D, opt_g, opt_d, (s_g, s_d) = nets
    atomic_save({"G": G.state_dict(), "D": D.state_dict(), "opt_G": opt_g.state_dict(),
                 "opt_D": opt_d.state_dict(), "sched_G": s_g.state_dict(),
                 "sched_D": s_d.state_dict(), "step": progress.step, "epoch": progress.epoch,
                 "epoch_step": progress.epoch_step, "skipped": progress.skipped,
                 "config": config_lib.to_dict(cfg), "rng": rng_state()}, path)
    log.info("saved %s", path)


def load_checkpoint(path, nets) -> Progress:
    G, D, opt_g, opt_d, (s_g, s_d) = nets
    ckpt = load_file(path, "checkpoint")
    for obj, key in ((G, "G"), (D, "D"), (opt_g, "opt_G"), (opt_d, "opt_D"), (s_g, "sched_G"),
                     (s_d, "sched_D")):
        obj.load_state_dict(ckpt[key])
    set_rng_state(ckpt["rng"])
    log.info("resumed from %s at step %d (epoch %d)", path, ckpt["step"], ckpt["epoch"])
    return Progress(ckpt["step"], ckpt["epoch"], ckpt["epoch_step"], ckpt.get("skipped", 0))


def main(argv=None) -> int:
    args = parse_args(argv, __doc__)
    setup_logging()
    cfg, resume, run_dir = resolve_run_config(args, "noise_pix2pix")
    device = single_process_device(cfg)
    return train(cfg, resume, run_dir, device, args.max_steps)


def train(cfg, resume, run_dir: Path, device: torch.device, max_steps: int = 0) -> int:
    N = cfg.NOISE
    run_dir.mkdir(parents=True, exist_ok=True)
    config_lib.dump(cfg, run_dir / "config.yaml")
    setup_logging(run_dir)
    torch.manual_seed(cfg.RUN.SEED)
    nets = build_nets(cfg, device)
    G, D, opt_g, opt_d, scheds = nets
    progress = load_checkpoint(resume, nets) if resume is not None else Progress()

    dataset = PairedCrops(find_pairs(cfg), N.CROP, cfg.RUN.SEED)
    sampler = ResumableSampler(len(dataset), N.BATCH_SIZE, shuffle=True, seed=cfg.RUN.SEED)
    loader = DataLoader(dataset, batch_size=N.BATCH_SIZE, sampler=sampler,
                        num_workers=cfg.RUN.NUM_WORKERS, collate_fn=collate_pairs,
                        pin_memory=device.type == "cuda",
                        # its own generator: making an iterator must not draw from the global
                        # RNG (dropout's), or a resumed run would diverge
                        generator=torch.Generator().manual_seed(cfg.RUN.SEED))
    epochs = N.EPOCHS + N.EPOCHS_DECAY
    steps_per_epoch = math.ceil(len(dataset) / N.BATCH_SIZE)
    log.info("run folder %s on %s: %d pairs, %d steps per epoch, %d + %d epochs", run_dir,
             device, len(dataset), steps_per_epoch, N.EPOCHS, N.EPOCHS_DECAY)

    meters = MetricLogger(run_dir, steps_per_epoch * epochs, cfg.RUN.TENSORBOARD)
    stop = StopRequest()
    G.train()
    D.train()
    try:
        while progress.epoch < epochs:
            sampler.set_epoch(progress.epoch, skip=progress.epoch_step * N.BATCH_SIZE)
            t_data = time.perf_counter()
            for real_a, real_b, dropped in loader:
                data_time = time.perf_counter() - t_data
                progress.epoch_step += 1
                progress.skipped += dropped
                if real_a is not None:
                    try:
                        losses = pix2pix_step(G, D, opt_g, opt_d, real_a.to(device),
                                              real_b.to(device), N.LAMBDA_L1)
                    except FloatingPointError as exc:
                        log.error("non-finite loss at step %d: %s; stopping (the last "
                                  "checkpoint is kept)", progress.step + 1, exc)
                        return 1
                    progress.step += 1
                    meters.update(data_time=data_time, **losses)
                    if progress.step % cfg.RUN.LOG_EVERY == 0:
                        meters.write(progress.step, {**meters.averages(),
                                                     "lr": opt_g.param_groups[0]["lr"],
                                                     "epoch": progress.epoch,
                                                     "skipped_images": progress.skipped})
                if progress.epoch_step == steps_per_epoch:          # epoch done
                    progress.epoch += 1
                    progress.epoch_step = 0
                    for s in scheds:
                        s.step()
                stopping = stop.requested or (max_steps and progress.step >= max_steps)
                if (progress.epoch_step == 0 or stopping
                        or (real_a is not None and progress.step % cfg.RUN.CKPT_EVERY == 0)):
                    save_checkpoint(run_dir / f"ckpt_{progress.step}.pth", nets, progress, cfg)
                    prune_checkpoints(run_dir, cfg.RUN.KEEP_CKPTS)
                if stopping:
                    log.warning("stopped at step %d; resume with --resume auto", progress.step)
                    return 0
                if progress.epoch_step == 0:
                    break
                t_data = time.perf_counter()
        atomic_save(G.state_dict(), run_dir / "G_final.pth")
        log.info("done: %d steps; generator weights in %s", progress.step, run_dir / "G_final.pth")
        return 0
    finally:
        stop.restore()
        meters.close()


if __name__ == "__main__":
    raise SystemExit(main())
