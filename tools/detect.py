"""Detect faces in images, folders, list files, videos or a camera; write predictions and
annotated pictures or video.

    python tools/detect.py --weights W [--model NAME] --input SRC --output DIR
        [--format jsonl|darkface|wider ...] [--save-vis] [--batch 8] [--every SECONDS]
        [--max-frames N] [--mode single|multi] [--scale S] [--threshold 0.5] [--landmarks]
        [--enhance auto|none|gamma|clahe|el|...] [--el-weights W]
        [--precision auto|fp32|bf16] [--threads N] [--config PRESET] [KEY.SUB=VALUE ...]

``--input``: an image, a folder (recursive), a list file (one path per line), a video file or
a camera index such as ``0`` (``data/media.py``); ``--every`` samples a video every so many
seconds, ``--max-frames`` stops early. ``--weights``: any checkpoint ``test.py`` takes (our
runs, the reference's, the released YuNet and Pytorch_Retinaface files) with ``--model`` /
``MODEL.NAME``, or an ONNX export (``*.onnx``, run by onnxruntime with the same decoding,
``models/onnx_runner.py``).

Consecutive frames of the same size are detected together, ``--batch`` per forward pass (the
results equal one image at a time). ``--enhance`` brightens each frame first
(``lowlevel/enhancers.py``; E(L)'s weights: ``--el-weights`` or ENHANCE.WEIGHTS; the
detections and the pictures are of the enhanced frame).
``--precision`` (``utils/precision.py``) picks the numeric path; ``fp32`` is the exact reference.

Outputs under ``--output`` (``--format``, any of):

* ``jsonl``: ``detections.jsonl``, one line per frame: ``{"name", "width", "height",
  "detections": [{"box": [x1, y1, x2, y2], "score", "landmarks": [[x, y] x 5]?}]}``;
* ``darkface``: ``darkface/<stem>.txt``, ``x1 y1 x2 y2 score`` lines (DARK FACE submission);
* ``wider``: ``wider/<event>/<stem>.txt`` (name, count, ``x y w h score`` lines; the event is
  the image's folder, or the video's name);

``--landmarks`` appends the 5 points to the txt lines. Every detection the detector keeps
(``DETECT.CONF_THRESH`` and up) is written; ``--threshold`` only decides what is drawn.
``--save-vis``: ``vis/<stem>.jpg`` per image, or ``<video stem>_det.mp4`` for a video or camera.
Unreadable images and frames are skipped, counted and reported at the end.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from data import config as config_lib
from data.config_check import validate
from data.image_folder import write_image_atomic
from data.media import FrameStats, iter_frames, probe
from data.predictions import format_detections, format_wider
from engine.cli import load_detector, make_tester, plan_for
from lowlevel.enhancers import add_enhance_argument, build_enhancer, rule_from_config
from models.test_time import TestTimeDetector
from utils import dist
from utils.precision import add_precision_argument
from utils.visualize import draw_detections

log = logging.getLogger("detect")
FORMATS = ("jsonl", "darkface", "wider")


def add_detector_arguments(p: argparse.ArgumentParser) -> None:
    """The detector options shared by detect.py and detect_image.py."""
    p.add_argument("--weights", required=True, help="checkpoint, or an ONNX export (*.onnx)")
    p.add_argument("--model", default=None, help="MODEL.NAME (e.g. yunet_n, retinaface_mnet; "
                                                 "default: the checkpoint's or the config's)")
    p.add_argument("--threshold", type=float, default=0.5, help="draw boxes above this score")
    p.add_argument("--mode", choices=["single", "multi"], default="single",
                   help="one scale, or the reference's multi-scale plan with box voting")
    p.add_argument("--scale", type=float, default=1.0, help="resize factor before detection")
    p.add_argument("--threads", type=int, default=0,
                   help="torch / onnxruntime threads (0: torch's default)")
    add_precision_argument(p)
    p.add_argument("--config", action="append", default=[], metavar="PRESET")
    p.add_argument("opts", nargs="*", metavar="KEY.SUB=VALUE", help="config overrides")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--input", required=True,
                   help="image, folder, list file, video file or camera index (e.g. 0)")
    p.add_argument("--output", required=True, type=Path, help="folder for the results")
    p.add_argument("--format", action="append", choices=FORMATS, default=None,
                   help="output format, repeatable (default: jsonl)")
    p.add_argument("--save-vis", action="store_true", help="write annotated images / video")
    p.add_argument("--batch", type=int, default=1, help="frames per forward pass")
    p.add_argument("--every", type=float, default=None, help="video: seconds between frames")
    p.add_argument("--max-frames", type=int, default=None, help="stop after N frames")
    p.add_argument("--landmarks", action="store_true",
                   help="append the 5 landmarks to the txt lines (detectors that have them)")
    p.add_argument("--root", default=".", help="root of relative paths in a list file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_enhance_argument(p)
    add_detector_arguments(p)
    args = p.parse_args(argv)
    if args.batch < 1 or args.scale <= 0:
        p.error("--batch must be >= 1 and --scale > 0")
    args.format = sorted(set(args.format or ["jsonl"]), key=FORMATS.index)
    return args


def load_tool_config(args):
    """The config of presets, ``--model`` and overrides, validated."""
    overrides = ([f"MODEL.NAME={args.model!r}"] if args.model else []) + list(args.opts)
    cfg = config_lib.load_config(args.config, overrides)
    validate(cfg)
    return cfg


def detection_record(name: str, shape, dets: np.ndarray) -> dict:
    """One JSON-lines record (pixels, floats rounded to 1e-3 px / 1e-5 score)."""
    faces = []
    for row in dets:
        face = {"box": [round(float(v), 3) for v in row[:4]], "score": round(float(row[4]), 5)}
        if len(row) > 5:
            face["landmarks"] = [[round(float(x), 3), round(float(y), 3)]
                                 for x, y in row[5:].reshape(-1, 2)]
        faces.append(face)
    return {"name": name, "height": int(shape[0]), "width": int(shape[1]), "detections": faces}


class Writers:
    """Writes each frame's detections in the chosen formats, and the annotated frame."""

    def __init__(self, out: Path, formats, landmarks: bool, threshold: float, vis: bool,
                 video: str | None = None, fps: float | None = None):
        self.out, self.formats, self.landmarks = out, set(formats), landmarks
        self.threshold, self.vis, self.video_name, self.fps = threshold, vis, video, fps
        out.mkdir(parents=True, exist_ok=True)
        self.jsonl = (out / "detections.jsonl").open("w") if "jsonl" in self.formats else None
        self.video = None
        self.files: list[Path] = []
        self.faces = 0

    def write(self, name: str, bgr: np.ndarray, dets: np.ndarray) -> None:
        stem, event = Path(name).stem, Path(name).parent.name
        self.faces += int((dets[:, 4] >= self.threshold).sum())
        rows = dets if self.landmarks else dets[:, :5]
        if "darkface" in self.formats:
            self._text(self.out / "darkface" / f"{stem}.txt", format_detections(rows))
        if "wider" in self.formats:
            self._text(self.out / "wider" / event / f"{stem}.txt", format_wider(stem, rows))
        if self.jsonl is not None:
            self.jsonl.write(json.dumps(detection_record(name, bgr.shape, dets)) + "\n")
        if self.vis:
            rgb = np.asarray(draw_detections(np.ascontiguousarray(bgr[..., ::-1]), dets,
                                             self.threshold))
            if self.video_name is None:
                write_image_atomic(rgb, self.out / "vis" / f"{stem}.jpg")
            else:
                self._video_frame(np.ascontiguousarray(rgb[..., ::-1]))

    def _text(self, path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def _video_frame(self, bgr: np.ndarray) -> None:
        if self.video is None:
            h, w = bgr.shape[:2]
            for suffix, codec in ((".mp4", "mp4v"), (".avi", "MJPG")):
                path = self.out / f"{self.video_name}_det{suffix}"
                self.video = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec),
                                             self.fps or 25.0, (w, h))
                if self.video.isOpened():
                    self.files.append(path)
                    break
            else:
                raise OSError(f"OpenCV cannot write a video in {self.out} (mp4v nor MJPG)")
        self.video.write(bgr)

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
        if self.video is not None:
            self.video.release()


def run(frames, tester: TestTimeDetector, enhancer, writers: Writers, args, bar) -> int:
    """Detect and write, batching consecutive frames of the same size; returns the count."""
    pending: list[tuple[str, np.ndarray]] = []
    done = 0

    def flush():
        rgbs = [np.ascontiguousarray(bgr[..., ::-1]) for _, bgr in pending]
        plan = plan_for(rgbs[0].shape, args.mode, args.scale)
        for (name, bgr), dets in zip(pending, tester(rgbs, plan)):
            writers.write(name, bgr, dets)
        bar.update(len(pending))
        pending.clear()

    for name, bgr in frames:
        bgr = enhancer(bgr)
        if pending and (len(pending) == args.batch or pending[0][1].shape != bgr.shape):
            flush()
        pending.append((name, bgr))
        done += 1
    if pending:
        flush()
    return done


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    info = probe(args.input, args.every, args.max_frames, args.root)    # names a bad source
    cfg = load_tool_config(args)
    device = dist.pick_device(cfg.RUN.DEVICE)
    detector = load_detector(args, cfg, device, log=log)
    if args.landmarks and getattr(detector, "num_landmarks", 0) == 0:
        raise ValueError(f"--landmarks: MODEL.NAME={cfg.MODEL.NAME} has no landmarks")
    el_weights = args.el_weights or (cfg.ENHANCE.WEIGHTS if args.enhance == "el" else None)
    enhancer = build_enhancer(args.enhance, el_weights, device, rule_from_config(cfg.NIGHT))
    tester = make_tester(detector, args.mode)
    video = Path(str(args.input)).stem if info.kind == "video" else (
        f"camera{args.input}" if info.kind == "camera" else None)
    writers = Writers(args.output, args.format, args.landmarks, args.threshold, args.save_vis,
                      video, info.fps)
    stats = FrameStats()
    frames = iter_frames(args.input, args.every, args.max_frames, stats, args.root)
    with tqdm(total=info.count, desc="detect", unit="frame", disable=args.no_progress) as bar:
        try:
            with torch.inference_mode():
                n = run(frames, tester, enhancer, writers, args, bar)
        finally:
            writers.close()
    print(f"{n} frames of {args.input}: {writers.faces} faces >= {args.threshold}; results in "
          f"{args.output} ({', '.join(args.format)}"
          f"{', annotated ' + ('video' if video else 'images') if args.save_vis else ''}); "
          f"{stats.skipped} unreadable frames skipped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
