"""Draw a detector's faces (and landmarks, for detectors that have them) on one image.

    python tools/detect_image.py --weights W --image IMG [--out IMG_det.png] [--threshold 0.5]
        [--mode single|multi] [--scale S] [--enhance [NAME]] [--el-weights W]
        [--model NAME] [--precision auto|fp32|bf16] [--config PRESET] [KEY.SUB=VALUE ...]

The one-image form of ``tools/detect.py`` (folders, videos, batches, prediction files).
A bare ``--enhance`` is E(L) as before (weights: ``--el-weights`` or ENHANCE.WEIGHTS); any name
of ``lowlevel/enhancers.py`` works too. ``--weights`` may be an ONNX export (``*.onnx``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from data import config as config_lib
from data.config_check import validate
from data.image_folder import read_rgb
from engine.cli import load_detector, make_tester, plan_for
from lowlevel.enhancers import add_enhance_argument, build_enhancer, rule_from_config
from utils import dist
from utils.precision import add_precision_argument
from utils.visualize import draw_detections


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--weights", required=True, help="checkpoint, or an ONNX export (*.onnx)")
    p.add_argument("--image", required=True, type=Path)
    p.add_argument("--out", type=Path, default=None, help="default: <image>_det.png")
    p.add_argument("--threshold", type=float, default=0.5, help="draw boxes above this score")
    p.add_argument("--mode", choices=["single", "multi"], default="single")
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--model", default=None, help="MODEL.NAME (default: the checkpoint's)")
    add_enhance_argument(p, default="none", const="el")
    add_precision_argument(p)
    p.add_argument("--config", action="append", default=[], metavar="PRESET")
    p.add_argument("opts", nargs="*", metavar="KEY.SUB=VALUE")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    overrides = ([f"MODEL.NAME={args.model!r}"] if args.model else []) + list(args.opts)
    cfg = config_lib.load_config(args.config, overrides)
    validate(cfg)
    device = dist.pick_device(cfg.RUN.DEVICE)
    rgb = read_rgb(args.image)
    if args.enhance != "none":
        el_weights = args.el_weights or (cfg.ENHANCE.WEIGHTS if args.enhance == "el" else None)
        enhance = build_enhancer(args.enhance, el_weights, device, rule_from_config(cfg.NIGHT))
        rgb = np.ascontiguousarray(enhance(np.ascontiguousarray(rgb[..., ::-1]))[..., ::-1])
    detector = load_detector(args, cfg, device)
    # landmarks (YuNet, RetinaFace) are drawn in single mode; voting does not vote them
    tester = make_tester(detector, args.mode)
    with torch.no_grad():
        dets = tester([rgb], plan_for(rgb.shape, args.mode, args.scale))[0]
    out = args.out or args.image.with_name(f"{args.image.stem}_det.png")
    draw_detections(rgb, dets, args.threshold).save(out)
    print(f"{int((dets[:, 4] >= args.threshold).sum())} faces >= {args.threshold} "
          f"(of {len(dets)} detections) drawn in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
