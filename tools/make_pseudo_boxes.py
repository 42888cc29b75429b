"""Make the target-domain pseudo-box list (``mf_dsfd_dark_face_train.txt``) with our detector.

    python tools/make_pseudo_boxes.py --weights DETECTOR [--images DIR] [--output FILE]
                                      [--threshold 0.5] [--min-boxes 1]
                                      [--mode multi|single] [--scale 1] [KEY.SUB=VALUE ...]

The boxes only centre the self-supervised crops on the enhanced DARK FACE images (so that the
crops do not land on pure-black sky); their labels are never detection targets. This runs any
detector checkpoint that test.py accepts on the *enhanced* images (``--images``, default
ENHANCE.ENHANCED_DIR), with test.py's protocol (``--mode multi``: the multi-scale plan and box
voting; ``--mode single``: one pass at ``--scale``), and writes the list file (default
FACE.TAR_TRAIN_FILE) in the WIDER list format (docs/DATASETS.md), one image a line::

    ./dataset/DarkFace/images_enhanced/train/<id>.png N x y w h 1 x y w h 1 ...

Paths are written relative to FACE.DATA_ROOT with a leading ``./`` (absolute when the images
lie outside it; ``--path-prefix`` writes ``<prefix>/<path below --images>`` instead). Boxes are
integer pixels (x, y rounded; w, h = rounded x2 - x1, y2 - y1, at least 1), not clipped to the
image, best score first. Detections scoring >= ``--threshold`` are kept; an image with fewer
than ``--min-boxes`` of them keeps its best ``--min-boxes`` detections whatever their score
(the shipped file has at least one box on every image); an image with no detection at all is
written with N = 0 (the loader skips it).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from data.image_folder import write_bytes_atomic
from data.loaders import resolve_path
from data.predictions import list_images
from engine.cli import SameSizeBatches, parse_with_config, start_tool
from models.inference import build_face_detector
from models.test_time import Pass, TestTimeDetector, reference_passes
from utils import dist

log = logging.getLogger("make_pseudo_boxes")


def select_boxes(dets: np.ndarray, threshold: float, min_boxes: int) -> np.ndarray:
    """Rows of ``dets`` [n, 5] (x1, y1, x2, y2, score) to keep, best score first."""
    dets = dets[np.argsort(-dets[:, 4], kind="stable")]
    keep = int((dets[:, 4] >= threshold).sum())
    return dets[:max(keep, min(min_boxes, len(dets)))]


def format_line(path: str, dets: np.ndarray) -> str:
    """``<path> N x y w h 1 ...`` with integer pixel boxes."""
    x1, y1 = np.round(dets[:, 0]), np.round(dets[:, 1])
    w = np.maximum(1, np.round(dets[:, 2] - dets[:, 0]))
    h = np.maximum(1, np.round(dets[:, 3] - dets[:, 1]))
    boxes = " ".join(f"{int(a)} {int(b)} {int(c)} {int(d)} 1" for a, b, c, d in zip(x1, y1, w, h))
    return f"{path} {len(dets)}" + (f" {boxes}" if len(dets) else "")


def list_path(image: Path, images_root: Path, data_root: Path, prefix: str | None) -> str:
    """How ``image`` is written in the list file (see the module docstring)."""
    if prefix is not None:
        return f"{prefix.rstrip('/')}/{image.relative_to(images_root).as_posix()}"
    try:
        rel = image.resolve().relative_to(data_root.resolve())
    except ValueError:
        return str(image.resolve())
    return f"./{rel.as_posix()}"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--weights", required=True, help="detector checkpoint (as for test.py)")
    p.add_argument("--images", default=None,
                   help="enhanced images: folder or list file (default: ENHANCE.ENHANCED_DIR)")
    p.add_argument("--output", default=None, help="list file (default: FACE.TAR_TRAIN_FILE)")
    p.add_argument("--threshold", type=float, default=0.5, help="minimum score of a box")
    p.add_argument("--min-boxes", type=int, default=1,
                   help="keep at least this many best boxes per image, whatever their score")
    p.add_argument("--mode", choices=("multi", "single"), default="multi",
                   help="test.py's multi-scale plan with box voting, or one pass at --scale")
    p.add_argument("--scale", type=float, default=1.0, help="base resize factor")
    p.add_argument("--path-prefix", default=None, help="write <prefix>/<path below --images>")
    p.add_argument("--workers", type=int, default=2, help="image-decoding processes")
    return parse_with_config(p, argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = start_tool(args)
    if args.scale <= 0:
        raise ValueError("--scale must be positive")
    images = Path(args.images) if args.images else resolve_path(cfg.ENHANCE.ENHANCED_DIR)
    if not images.exists():
        raise FileNotFoundError(f"{images} does not exist (set by "
                                f"{'--images' if args.images else 'ENHANCE.ENHANCED_DIR'})")
    output = Path(args.output) if args.output else resolve_path(cfg.FACE.TAR_TRAIN_FILE)
    data_root = resolve_path(cfg.FACE.DATA_ROOT)
    paths = list_images(str(images), str(data_root))
    images_root = images if images.is_dir() else data_root
    device = dist.pick_device(cfg.RUN.DEVICE)
    tester = TestTimeDetector(build_face_detector(cfg, args.weights, device),
                              vote=args.mode == "multi", dummy_rows=False, iou_thresh=0.3,
                              top_k=cfg.DETECT.TOP_K)
    decoded = SameSizeBatches(paths, 1, args.workers, "pseudo boxes", log)   # one image each

    lines, n_boxes = [], 0
    for [(path, img)] in decoded:
        h, w = img.shape[:2]
        plan = reference_passes(h, w, args.scale) if args.mode == "multi" else [Pass(args.scale)]
        dets = tester([img], plan)[0]
        kept = select_boxes(dets, args.threshold, args.min_boxes)
        n_boxes += len(kept)
        lines.append(format_line(list_path(path, images_root, data_root, args.path_prefix), kept))
    write_bytes_atomic(("\n".join(lines) + "\n").encode(), output)
    failed = decoded.failed
    log.info("wrote %s: %d images, %d boxes (%.1f per image)%s", output, len(lines), n_boxes,
             n_boxes / max(len(lines), 1),
             f"; {failed} unreadable images skipped" if failed else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
