"""Pix2pix speed: one training step (D then G) and the generator on a padded WIDER image.

    python bench/bench_pix2pix.py [--batch 8] [--crop 256] [--ngf 64 16] [--threads 2]
                                  [--device cpu|cuda] [--repeat 2] [--apply-size 1280x1536]

The reference schedule is 200 epochs over the 6,000 E(L)_blur / E(L) pairs at batch 8, i.e.
150,000 steps; the estimate printed uses that count. ``--apply-size`` is the padded size of a
typical WIDER image (1024 x ~700 pads to 1280 x 1536).
"""
import argparse

import torch

from bench.timing import timed
from lowlevel.pix2pix import (PatchDiscriminator, UnetGenerator, init_weights,
                              set_test_mode)
from engine.gan import pix2pix_step

REFERENCE_STEPS = 200 * 6000 // 8
N_WIDER_TRAIN = 12880


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--ngf", type=int, nargs="+", default=[64, 16])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--apply-size", default="1280x1536")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device={device} threads={torch.get_num_threads()} batch={args.batch} "
          f"crop={args.crop}")
    for ngf in args.ngf:
        torch.manual_seed(0)
        G, D = UnetGenerator(ngf=ngf).to(device), PatchDiscriminator(ndf=ngf).to(device)
        init_weights(G)
        init_weights(D)
        opt_g = torch.optim.Adam(G.parameters(), 2e-4, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(D.parameters(), 2e-4, betas=(0.5, 0.999))
        a = torch.rand(args.batch, 3, args.crop, args.crop, device=device) * 2 - 1
        b = torch.rand_like(a) * 2 - 1
        step = lambda: pix2pix_step(G, D, opt_g, opt_d, a, b, 100.0)   # noqa: E731
        step()                                                          # warm-up
        t = timed(step, args.repeat, device)
        hours = t * REFERENCE_STEPS / 3600
        print(f"ngf=ndf={ngf:<3} train step {t:7.3f} s  ({args.batch / t:6.2f} img/s); "
              f"reference schedule ({REFERENCE_STEPS:,} steps): {hours:8.1f} h")
        h, w = map(int, args.apply_size.split("x"))
        set_test_mode(G, reference=True)
        x = torch.rand(1, 3, h, w, device=device) * 2 - 1
        with torch.no_grad():
            t = timed(lambda: G(x), args.repeat, device)
        print(f"ngf={ngf:<3} generator on {h}x{w}: {t:7.3f} s/img; {N_WIDER_TRAIN:,} WIDER train "
              f"images: {t * N_WIDER_TRAIN / 3600:6.1f} h")


if __name__ == "__main__":
    main()
