"""Time the detection loss (both shots: PAL1 + PAL2) on random outputs and faces.

    python bench/bench_loss.py [--batch 8] [--size 640] [--faces 30] [--device cpu] [--repeat 20]

Faces have log-uniform sizes between 6 and 320 px (WIDER-like). Prints milliseconds per call
(median of ``--repeat``), for matching alone and for the whole loss.
"""
import argparse

import torch

from bench.timing import timed
from data.config import default_config
from models.dsfd.anchors import make_anchors, vgg_feature_sizes
from models.dsfd.loss import MultiBoxLoss, match_anchors, pad_targets


def random_faces(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    side = torch.exp(torch.empty(n).uniform_(torch.log(torch.tensor(6.0)),
                                             torch.log(torch.tensor(320.0)), generator=gen))
    x1 = torch.rand(n, generator=gen) * (size - side)
    y1 = torch.rand(n, generator=gen) * (size - side)
    boxes = torch.stack([x1, y1, x1 + side, y1 + side * 1.2], 1).clamp(max=size) / size
    return torch.cat([boxes, torch.ones(n, 1)], 1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--faces", type=int, default=30)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    cfg = default_config()
    gen = torch.Generator().manual_seed(0)
    fs = vgg_feature_sizes(args.size, args.size)
    a = cfg.ANCHOR
    priors = [make_anchors((args.size, args.size), fs, a.STEPS, s).to(device)
              for s in (a.ANCHOR_SIZES1, a.ANCHOR_SIZES2)]
    P = priors[0].shape[0]
    targets = [random_faces(args.faces, args.size, gen).to(device) for _ in range(args.batch)]
    outputs = [(torch.randn(args.batch, P, 4, generator=gen).to(device),
                torch.randn(args.batch, P, 2, generator=gen).to(device)) for _ in range(2)]
    crit = MultiBoxLoss(cfg.FACE.OVERLAP_THRESH, cfg.LOSS.NEG_POS_RATIOS, a.VARIANCE)

    def both_shots():
        padded = pad_targets(targets, device)
        return [crit(loc, conf, pri, padded, fs) for (loc, conf), pri in zip(outputs, priors)]

    def matching_only():
        truths, valid = pad_targets(targets, device)
        for pri in priors:
            match_anchors(truths[..., :4], valid, pri, fs, cfg.FACE.OVERLAP_THRESH)

    both_shots()   # warm-up
    print(f"device={device} threads={torch.get_num_threads()} batch={args.batch} "
          f"size={args.size} faces/image={args.faces} anchors/shot={P}")
    print(f"matching, both shots: {timed(matching_only, args.repeat, device) * 1e3:8.2f} ms")
    print(f"loss, both shots:     {timed(both_shots, args.repeat, device) * 1e3:8.2f} ms")


if __name__ == "__main__":
    main()
