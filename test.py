"""Detect faces in a folder or list of images and write one txt per image.

    python test.py --weights W --images DIR_OR_LIST --output DIR
                   [--mode multi|single] [--scale S] [--no-enhance | --enhance NAME]
                   [--format darkface|wider]

The reference's protocol (docs/EVALUATION.md): each image is brightened by the illumination
enhancer E(L) (``--enhancer``/``--el-weights``, default ENHANCE.WEIGHTS; ``--no-enhance`` skips
it) and quantised to uint8, then detected either with the multi-scale plan (``--mode multi``,
the default: scale 1, flipped 1, shrink, enlarge and pyramid passes with their size filters,
box voting at IoU 0.3, top 750) or at one scale (``--mode single --scale S``; the reference's
ablation uses 2).

Night mode: ``--enhance NAME`` replaces that step by any enhancer of
``lowlevel/enhancers.py`` (``none``, ``auto``: decided per image, ``gamma``, ``clahe``, ...);
without it the default stays E(L) (``--enhance el``), or none with ``--no-enhance``.

Output: ``--format darkface`` (default) writes ``<image stem>.txt`` with one line
``x1 y1 x2 y2 score`` per detection in original-image pixels (the DARK FACE submission format;
an image without detections gets an empty file). ``--format wider`` writes
``<event>/<image stem>.txt`` with the image name, the count and ``x y w h score`` lines (the
WIDER FACE layout; the event is the image's folder name). Images whose output exists are
skipped unless ``--overwrite``, so an interrupted run resumes.

``--precision auto|fp32|bf16`` (``utils/precision.py``): ``auto`` runs the exact fp32 path on a
CPU (the reference protocol) and bf16 + channels_last on a GPU with bf16; ``fp32`` everywhere
is the reference.

``--weights`` takes our training checkpoints (their config decides the network and its width),
the reference's plain state dicts (``Face-Detector.pth``, ``dsfd_vgg_0.880.pth``,
``trainer_*.pth``) and, with ``MODEL.NAME=yunet_n|yunet_s|retinaface_mnet|retinaface_r50``, the
released YuNet and Pytorch_Retinaface files. ``--landmarks`` (single mode) appends the five
landmarks of such detectors to every line.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np

from data.config_check import validate
from data.predictions import Outputs, list_images
from engine.cli import SameSizeBatches, parse_with_config, start_tool
from lowlevel.enhancers import add_enhance_argument, build_enhancer, rule_from_config
from lowlevel.enhancement import enhance_uint8, load_enhancer
from models.inference import build_face_detector
from models.test_time import Pass, TestTimeDetector, reference_passes
from utils import dist
from utils.precision import add_precision_argument, apply_precision, family_of, resolve_precision

log = logging.getLogger("test")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--weights", required=True, help="detector checkpoint")
    p.add_argument("--images", required=True, help="image folder, list file or one image")
    p.add_argument("--output", required=True, help="folder for the result files")
    p.add_argument("--mode", choices=["multi", "single"], default="multi",
                   help="the reference's multi-scale protocol (default) or one scale")
    p.add_argument("--scale", type=float, default=1.0,
                   help="single mode: resize factor before detection; multi mode: the scale "
                        "of the first two passes (the reference's MY_SHRINK)")
    p.add_argument("--no-enhance", action="store_true", help="detect on the images as they are")
    add_enhance_argument(p, default=None, el_aliases=("--enhancer",))
    p.add_argument("--format", choices=["darkface", "wider"], default="darkface")
    p.add_argument("--landmarks", action="store_true",
                   help="detectors with landmarks (YuNet, RetinaFace): append the 5 points "
                        "(x y pairs, pixels) to each line; single mode only (box voting does "
                        "not vote landmarks)")
    p.add_argument("--overwrite", action="store_true", help="redo images that have a result")
    p.add_argument("--no-dummy", action="store_true",
                   help="multi mode: drop the reference's [0 0 0 0 0.001] row of a pass that "
                        "finds nothing")
    p.add_argument("--root", default=None,
                   help="root of relative paths in a list file (default: FACE.DATA_ROOT)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    p.add_argument("--workers", type=int, default=2, help="image-decoding processes")
    add_precision_argument(p)
    return parse_with_config(p, argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = start_tool(args)
    validate(cfg)
    if args.scale <= 0:
        raise ValueError("--scale must be positive")
    device = dist.pick_device(cfg.RUN.DEVICE)
    # the evaluation protocol: auto keeps the exact fp32 path on a CPU (utils/precision.py)
    precision = apply_precision(cfg, resolve_precision(args.precision, device,
                                                       family_of(cfg.MODEL.NAME),
                                                       reference=True), args.precision)
    log.info("precision %s (%s)", precision.name, precision.reason)
    detector = build_face_detector(cfg, args.weights, device, fold_bn=precision.fold_bn)
    if args.landmarks and (detector.num_landmarks == 0 or args.mode != "single"):
        raise ValueError(f"--landmarks needs --mode single and a detector with landmarks "
                         f"(MODEL.NAME={cfg.MODEL.NAME} has {detector.num_landmarks}; mode "
                         f"{args.mode})")
    enhancer = batch_enhancer(args, cfg, device)
    tester = TestTimeDetector(detector, vote=args.mode == "multi",
                              dummy_rows=args.mode == "multi" and not args.no_dummy,
                              iou_thresh=0.3, top_k=cfg.DETECT.TOP_K,
                              landmarks=args.landmarks)
    outputs = Outputs(Path(args.output), args.format)
    paths = list_images(args.images, args.root or cfg.FACE.DATA_ROOT)
    todo = paths if args.overwrite else [p for p in paths if not outputs.path(p).is_file()]
    if len(todo) < len(paths):
        log.info("%d of %d images already have results (--overwrite redoes them)",
                 len(paths) - len(todo), len(paths))
    if len({outputs.path(p) for p in paths}) != len(paths):
        log.warning("several images map to the same result file; they overwrite each other")
    failed = run(todo, tester, enhancer, outputs, args)
    log.info("wrote %d result files to %s%s", len(todo) - failed, args.output,
             f" ({failed} unreadable images skipped)" if failed else "")
    return 0


def enhance_name(args) -> str:
    """``--enhance``, or today's default: E(L), none with ``--no-enhance``."""
    if args.enhance is None:
        return "none" if args.no_enhance else "el"
    if args.no_enhance and args.enhance != "none":
        raise ValueError(f"--no-enhance contradicts --enhance {args.enhance}")
    return args.enhance


def batch_enhancer(args, cfg, device):
    """``fn(list of RGB uint8 images) -> list`` for the chosen enhancer, or None for none. E(L)
    runs the batch in one forward pass, as before night mode; the others run per image."""
    name = enhance_name(args)
    if name == "none":
        return None
    if name == "el":
        net = load_enhancer(args.el_weights or cfg.ENHANCE.WEIGHTS, device,
                            key="--enhancer/--el-weights" if args.el_weights else
                            "ENHANCE.WEIGHTS (or give --no-enhance)")
        return lambda images: list(enhance_uint8(net, np.stack(images)))
    fn = build_enhancer(name, args.el_weights, device, rule_from_config(cfg.NIGHT))
    return lambda images: [np.ascontiguousarray(fn(np.ascontiguousarray(im[..., ::-1]))[..., ::-1])
                           for im in images]


def run(paths: list[Path], tester: TestTimeDetector, enhancer, outputs: Outputs, args) -> int:
    """Detect and write, batching consecutive images of the same size; returns the failures."""
    batches = SameSizeBatches(paths, args.batch_size, args.workers, "detect", log)
    for batch in batches:
        images = [img for _, img in batch]
        if enhancer is not None:
            images = enhancer(images)
        h, w = images[0].shape[:2]
        plan = (reference_passes(h, w, args.scale) if args.mode == "multi"
                else [Pass(args.scale)])
        for (path, _), dets in zip(batch, tester(images, plan)):
            outputs.write(path, dets)
    return batches.failed


if __name__ == "__main__":
    sys.exit(main())
