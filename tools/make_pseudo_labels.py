"""Run one or more teacher detectors on unlabelled (dark) images and write fused pseudo labels.

    python tools/make_pseudo_labels.py --teacher WEIGHTS[:MODEL.NAME[:WEIGHT[:INPUT]]] ...
        --out DIR [--images DIR_OR_LIST] [--list FILE] [--enhance] [--enhancer W]
        [--flip] [--scales 1.0 0.5 ...] [--fusion wbf|nms] [--iou 0.55]
        [--score-thresh 0.3] [--skip-thresh 0.0] [--min-agree 1] [--overwrite]
        [--config PRESET] [KEY.SUB=VALUE ...]

(``--scales`` takes every number after it: give the overrides before it, or after ``--``.)

Each ``--teacher`` (repeatable) names a checkpoint, optionally the registry entry that reads it
(``MODEL.NAME``; empty or omitted: the config's, and our checkpoints carry their own), its weight
in the fusion (default 1) and the images it sees (``raw``, ``el`` = brightened by E(L) as test.py
does it, or ``both``; default ``el`` with ``--enhance``, else ``raw``). Examples:
``--teacher main.pth --teacher yunet.pth:yunet_n:0.5``,
``--teacher dsfd.pth::1:raw --teacher dsfd_el.pth::1:el``.

Per image, each teacher runs every pass of the plan (each ``--scales`` factor, and its mirrored
copy with ``--flip``; landmarks are mapped back and their left/right points swapped), on each of
its inputs; its passes are merged by ``--fusion`` as one model (WBF: the score-weighted mean box
and mean score of each cluster; NMS: the best box), then the teachers are fused with ``--fusion``
across teachers with their weights (layers/box_fusion.py), fused boxes supported by fewer than
``--min-agree`` teachers are dropped, and so are those scoring below ``--score-thresh``. Keep
that threshold at the *low* end of the score band the student will use (docs/DUAL_TEACHER.md):
boxes between it and the student's positive threshold become ignore regions.

Output: ``DIR/labels/<image path below the image root>.txt`` per image (the pseudo-label format
of adapt/pseudo/labels.py, written atomically; an image without boxes gets a file with its header
only), ``DIR/settings.json`` (what made them) and the merged list ``--list`` (default
``DIR/pseudo_labels.txt``), rebuilt from the per-image files at the end of every run, in image
order, paths relative to ``FACE.DATA_ROOT``. A re-run skips the images whose file exists
(``--overwrite`` redoes all); it refuses to mix settings: with other teachers, passes or
thresholds than ``settings.json`` records, give ``--overwrite`` or another ``--out``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from data import config as config_lib
from utils.files import remove_stale_temps, resolve_path, write_text_atomic
from adapt.pseudo.labels import (PseudoRecord, merge_pseudo_labels,
                                 relative_image_path, write_pseudo_labels)
from layers.box_fusion import FUSION, fuse_teachers
from models.test_time import Pass, TestTimeDetector
from models.test_time import merged_passes as teacher_detections  # noqa:F401
from engine.cli import SameSizeBatches, parse_with_config, start_tool
from utils import dist

log = logging.getLogger("make_pseudo_labels")
INPUTS = ("raw", "el", "both")
SETTINGS_FILE = "settings.json"


@dataclass(frozen=True)
class Teacher:
    weights: str
    name: str           # MODEL.NAME; '' = the config's (or the checkpoint's)
    weight: float
    input: str          # raw | el | both


def parse_teacher(spec: str, default_input: str) -> Teacher:
    """``WEIGHTS[:MODEL.NAME[:WEIGHT[:INPUT]]]``."""
    parts = spec.split(":")
    if len(parts) > 4 or not parts[0]:
        raise ValueError(f"--teacher {spec!r}: expected WEIGHTS[:MODEL.NAME[:WEIGHT[:INPUT]]]")
    name = parts[1] if len(parts) > 1 else ""
    try:
        weight = float(parts[2]) if len(parts) > 2 and parts[2] else 1.0
    except ValueError:
        raise ValueError(f"--teacher {spec!r}: weight {parts[2]!r} is not a number") from None
    source = parts[3] if len(parts) > 3 and parts[3] else default_input
    if source not in INPUTS:
        raise ValueError(f"--teacher {spec!r}: input {source!r} is not one of {INPUTS}")
    if weight < 0:
        raise ValueError(f"--teacher {spec!r}: the weight must be >= 0")
    return Teacher(parts[0], name, weight, source)


def make_plan(scales, flip: bool) -> list[Pass]:
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"--scales must be positive, got {scales}")
    return [Pass(float(s)) for s in scales] + ([Pass(float(s), flip=True) for s in scales]
                                               if flip else [])


def load_teachers(teachers: list[Teacher], args, device) -> list[TestTimeDetector]:
    """One pass runner per teacher, each with its own config (MODEL.NAME and its preset)."""
    from models import inference              # looked up here: tests replace the builder
    runners = []
    for t in teachers:
        opts = [*args.opts] + ([f"MODEL.NAME={t.name}"] if t.name else [])
        cfg = config_lib.load_config(args.config, opts)
        detector = inference.build_face_detector(cfg, t.weights, device,
                                                 key=f"--teacher {t.weights}")
        runners.append(TestTimeDetector(detector, vote=False, dummy_rows=False,
                                        landmarks=getattr(detector, "num_landmarks", 0) > 0))
        log.info("teacher %s (MODEL.NAME=%s, weight %g, input %s)", t.weights,
                 cfg.MODEL.NAME, t.weight, t.input)
    return runners


class LabelFiles:
    """Where each image's pseudo-label file goes: ``<out>/labels/<path below root>.txt``."""

    def __init__(self, out: Path, images_root: Path):
        self.folder, self.root = out / "labels", images_root

    def path(self, image: Path) -> Path:
        try:
            rel = image.resolve().relative_to(self.root.resolve())
        except ValueError:
            rel = Path(image.name)
        return self.folder / rel.with_suffix(".txt")


def settings_of(args, teachers: list[Teacher]) -> dict:
    """What decides the labels; a re-run into the same folder must have the same."""
    return {"version": 1, "teachers": [asdict(t) for t in teachers], "fusion": args.fusion,
            "iou": args.iou, "score_thresh": args.score_thresh, "skip_thresh": args.skip_thresh,
            "min_agree": args.min_agree, "scales": [float(s) for s in args.scales],
            "flip": args.flip,
            # RUN.* says how the teachers run (device, precision), not what they find
            "overrides": [o for o in args.opts if not o.strip().startswith("RUN.")],
            "enhancer": args.enhancer if any(t.input != "raw" for t in teachers) else None}


def check_settings(out: Path, settings: dict, overwrite: bool) -> None:
    path = out / SETTINGS_FILE
    if path.is_file() and not overwrite:
        old = json.loads(path.read_text())
        changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if changed:
            raise ValueError(f"{out} holds pseudo labels made with other settings "
                             f"({', '.join(changed)} differ from {path}); give --overwrite to "
                             f"redo them all, or another --out")
    write_text_atomic(json.dumps(settings, indent=2) + "\n", path)


def label_batch(images: list[np.ndarray], runners, teachers, enhancer, plan, args):
    """Fused pixel detections ``[m, 5 or 15]`` per image of a batch of same-sized images."""
    bright = None
    if any(t.input != "raw" for t in teachers):
        from lowlevel.enhancement import enhance_uint8
        bright = list(enhance_uint8(enhancer, np.stack(images)))
    per_teacher = []
    for runner, t in zip(runners, teachers):
        sources = {"raw": [images], "el": [bright], "both": [images, bright]}[t.input]
        per_teacher.append(teacher_detections(runner, sources, plan, args.fusion, args.iou))
    weights = [t.weight for t in teachers]
    return [fuse_teachers([d[i] for d in per_teacher], args.fusion, weights, args.iou,
                          args.skip_thresh, args.score_thresh, args.min_agree).dets
            for i in range(len(images))]


def run(todo: list[Path], files: LabelFiles, label, data_root: Path, args) -> tuple[int, int]:
    """Label and write ``todo``, batching consecutive same-sized images; returns (failed,
    boxes written)."""
    batches = SameSizeBatches(todo, args.batch_size, args.workers, "pseudo labels", log)
    boxes = 0
    for batch in batches:
        for (path, img), dets in zip(batch, label([img for _, img in batch])):
            record = PseudoRecord.from_detections(relative_image_path(path, data_root),
                                                  (img.shape[1], img.shape[0]), dets)
            write_pseudo_labels(files.path(path), [record])
            boxes += len(dets)
    return batches.failed, boxes


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--teacher", action="append", required=True,
                   metavar="WEIGHTS[:MODEL.NAME[:WEIGHT[:INPUT]]]", help="a teacher (repeatable)")
    p.add_argument("--images", default=None,
                   help="image folder or list file (default: ENHANCE.DARK_DIR, the raw dark "
                        "images)")
    p.add_argument("--out", required=True, help="output folder (per-image files, settings)")
    p.add_argument("--list", default=None, help="merged list file (default: OUT/pseudo_labels.txt)")
    p.add_argument("--enhance", action="store_true",
                   help="teachers see E(L)-brightened images unless their spec says otherwise")
    p.add_argument("--enhancer", default=None, help="E(L) weights (default: ENHANCE.WEIGHTS)")
    p.add_argument("--flip", action="store_true", help="add a mirrored pass at every scale")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0], help="resize factors")
    p.add_argument("--fusion", choices=sorted(FUSION), default="wbf")
    p.add_argument("--iou", type=float, default=0.55, help="fusion IoU threshold (> joins)")
    p.add_argument("--score-thresh", type=float, default=0.3,
                   help="drop fused boxes scoring below this (the student's low threshold)")
    p.add_argument("--skip-thresh", type=float, default=0.0,
                   help="teacher boxes scoring below this are not fused")
    p.add_argument("--min-agree", type=int, default=1,
                   help="keep fused boxes found by at least this many teachers")
    p.add_argument("--overwrite", action="store_true", help="redo images that have a file")
    p.add_argument("--root", default=None,
                   help="root of relative paths in a list file (default: FACE.DATA_ROOT)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    p.add_argument("--workers", type=int, default=2, help="image-decoding processes")
    return parse_with_config(p, argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from data.predictions import list_images
    cfg = start_tool(args)
    teachers = [parse_teacher(s, "el" if args.enhance else "raw") for s in args.teacher]
    if not 1 <= args.min_agree <= len(teachers):
        raise ValueError(f"--min-agree {args.min_agree} needs 1 to {len(teachers)} teachers")
    plan = make_plan(args.scales, args.flip)
    images = Path(args.images) if args.images else resolve_path(cfg.ENHANCE.DARK_DIR)
    if not images.exists():
        raise FileNotFoundError(f"{images} does not exist (set by "
                                f"{'--images' if args.images else 'ENHANCE.DARK_DIR'})")
    data_root = resolve_path(args.root or cfg.FACE.DATA_ROOT)
    paths = list_images(images, data_root)
    out = Path(args.out)
    files = LabelFiles(out, images if images.is_dir() else data_root)
    if len({files.path(p) for p in paths}) != len(paths):
        log.warning("several images map to the same label file; they overwrite each other")
    needs_el = any(t.input != "raw" for t in teachers)
    args.enhancer = str(args.enhancer or cfg.ENHANCE.WEIGHTS) if needs_el else args.enhancer
    check_settings(out, settings_of(args, teachers), args.overwrite)
    remove_stale_temps(files.folder)
    todo = paths if args.overwrite else [p for p in paths if not files.path(p).is_file()]
    log.info("%d images, %d to label (%d done before; --overwrite redoes them)", len(paths),
             len(todo), len(paths) - len(todo))
    failed, boxes = 0, 0
    if todo:
        device = dist.pick_device(cfg.RUN.DEVICE)
        runners = load_teachers(teachers, args, device)
        enhancer = None
        if needs_el:
            from lowlevel.enhancement import load_enhancer
            enhancer = load_enhancer(args.enhancer, device, key="--enhancer or ENHANCE.WEIGHTS")

        def label(batch):
            return label_batch(batch, runners, teachers, enhancer, plan, args)

        failed, boxes = run(todo, files, label, data_root, args)
    done = [files.path(p) for p in paths if files.path(p).is_file()]
    listing = Path(args.list) if args.list else out / "pseudo_labels.txt"
    merge_pseudo_labels(done, listing)
    log.info("labelled %d images (%d boxes, %.1f per image)%s; list %s: %d of %d images",
             len(todo) - failed, boxes, boxes / max(len(todo) - failed, 1),
             f", {failed} unreadable skipped" if failed else "", listing, len(done), len(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
