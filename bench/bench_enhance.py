"""Enhancement speed at DARK FACE resolution: E(L) (whole image and tiled) and the baselines.

    python bench/bench_enhance.py [--size 720x1080] [--batch 1] [--threads 1 2]
                                  [--device cpu|cuda] [--repeat 3] [--tile 512] [--no-baselines]

Prints images/s of ``enhance_uint8`` (uint8 in, uint8 out, quantisation included; decoding and
PNG writing are timed separately) and the estimated time for the 6,000 DARK FACE train images.
On a GPU the batch of ``--batch`` images goes through in one forward pass.
"""
import argparse

import numpy as np
import torch

from bench.timing import timed
from lowlevel import classic as baselines
from data.image_folder import encode_image
from lowlevel.enhancement import EnhanceNet, enhance_uint8

N_DARK_FACE = 6000


def report(name, seconds, images):
    per_image = seconds / images
    print(f"{name:<34} {images / seconds:8.3f} img/s  {per_image:8.3f} s/img  "
          f"6,000 images: {per_image * N_DARK_FACE / 3600:7.2f} h")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", default="720x1080")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--no-baselines", action="store_true")
    args = ap.parse_args(argv)
    h, w = map(int, args.size.split("x"))
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = EnhanceNet().eval().to(device)
    rgb = np.random.default_rng(0).integers(0, 60, (args.batch, h, w, 3), dtype=np.uint8)
    print(f"device={device} size={h}x{w} batch={args.batch}")
    for threads in (args.threads if device.type == "cpu" else [torch.get_num_threads()]):
        torch.set_num_threads(threads)
        enhance_uint8(net, rgb[:1, :64, :64], device)                 # warm-up
        t = timed(lambda: enhance_uint8(net, rgb, device), args.repeat, device)
        report(f"E(L) whole image, {threads} thread(s)", t, args.batch)
        t = timed(lambda: enhance_uint8(net, rgb, device, tile=args.tile), args.repeat, device)
        report(f"E(L) {args.tile}px tiles, {threads} thread(s)", t, args.batch)
    out = enhance_uint8(net, rgb[0], device)
    t = timed(lambda: encode_image(out, ".png"), args.repeat, torch.device("cpu"))
    report("PNG encode (cv2, lossless)", t, 1)
    if args.no_baselines:
        return
    for name, fn in baselines.BASELINES.items():
        t = timed(lambda: fn(rgb[0]), 1 if name == "lime" else args.repeat, torch.device("cpu"))
        report(f"baseline {name}", t, 1)


if __name__ == "__main__":
    main()
