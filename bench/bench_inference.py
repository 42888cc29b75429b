"""Inference speed: forward and post-processing timed separately.

    python bench/bench_inference.py [--sizes 640x640 720x1080] [--width 1.0] [--batch 1]
                                    [--device cpu|cuda] [--amp none|bf16|fp16] [--channels-last]
                                    [--repeat 5]

Post-processing is timed on two kinds of outputs: ``worst`` (every anchor scores above the
threshold, so NMS gets the full NMS_TOP_K = 5000 candidates) and ``typical`` (a few hundred
candidates, as with a trained detector).
"""
import argparse

import torch

from bench.timing import timed
from data.config import default_config
from models.dsfd.anchors import make_anchors, vgg_feature_sizes
from models.dsfd.postprocess import postprocess
from models.dsfd.net import DSFD
from models.inference import FaceDetector


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["640x640", "720x1080"])
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--skip-forward", action="store_true", help="post-processing only")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    cfg = default_config()
    torch.manual_seed(0)
    det = FaceDetector(DSFD(width=args.width), cfg.ANCHOR, cfg.DETECT, cfg.AUG.img_mean, device,
                       args.amp, args.channels_last)
    print(f"device={device} threads={torch.get_num_threads()} width={args.width} "
          f"batch={args.batch} amp={args.amp} channels_last={args.channels_last}")
    for spec in args.sizes:
        h, w = map(int, spec.split("x"))
        fs = vgg_feature_sizes(h, w)
        priors = make_anchors((h, w), fs, cfg.ANCHOR.STEPS, cfg.ANCHOR.ANCHOR_SIZES2).to(device)
        P = len(priors)
        line = f"{h}x{w} ({P} anchors):"
        if not args.skip_forward:
            x = det.to_input(torch.randint(0, 255, (args.batch, h, w, 3), dtype=torch.uint8))
            det.forward(x)                                   # warm-up
            t_fwd = timed(lambda: det.forward(x), args.repeat, device)
            line += f" forward {t_fwd * 1e3:8.1f} ms ({args.batch / t_fwd:6.2f} img/s)"
        gen = torch.Generator().manual_seed(1)
        loc = (torch.randn(args.batch, P, 4, generator=gen) * 0.3).to(device)
        worst = torch.zeros(args.batch, P, 2, device=device)        # all scores 0.5
        typical = torch.randn(args.batch, P, 2, generator=gen).to(device)
        typical[..., 1] -= 6.0                                      # ~ a few hundred > 0.05
        d = cfg.DETECT
        run = lambda conf: postprocess(loc, conf, priors, cfg.ANCHOR.VARIANCE, d.CONF_THRESH,  # noqa: E731
                                       d.NMS_THRESH, d.NMS_TOP_K, d.TOP_K)
        run(worst)
        n_typ = int((torch.softmax(typical, -1)[..., 1] > d.CONF_THRESH).sum()) // args.batch
        t_worst = timed(lambda: run(worst), args.repeat, device)
        t_typ = timed(lambda: run(typical), args.repeat, device)
        line += (f"  post-processing per image: worst {t_worst * 1e3 / args.batch:6.2f} ms, "
                 f"typical ({n_typ} candidates) {t_typ * 1e3 / args.batch:6.2f} ms")
        print(line)


if __name__ == "__main__":
    main()
