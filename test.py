"""Detect faces in a folder or list of images and write one txt per image.

    python test.py --weights W --images DIR_OR_LIST --output DIR [--scale S] [KEY.SUB=VALUE ...]

Each ``<image stem>.txt`` holds one line ``x1 y1 x2 y2 score`` per detection, in original-image
pixels (the DARK FACE submission format); an image without detections gets an empty file.
``--weights`` takes our training checkpoints (their config decides the network width) and the
reference's plain state dicts (``Face-Detector.pth``, ``dsfd_vgg_0.880.pth``, ``trainer_*.pth``).
At ``--scale S`` the image is resized by S with cv2 INTER_LINEAR before detection, as the
reference's single-scale mode does.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from data import config as config_lib
from models.factory import build_detector
from models.inference import FaceDetector
from utils import dist
from utils.checkpoint import detector_state_dict, load_file

log = logging.getLogger("test")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def list_images(spec: str, root: str = ".") -> list[Path]:
    """A folder (searched recursively) or a text file with one image path per line (the first
    token, so WIDER-format list files work; relative paths are joined to ``root``)."""
    path = Path(spec)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not path.is_file():
        raise FileNotFoundError(f"--images {spec}: no such folder or list file")
    images = []
    for line in path.read_text().splitlines():
        if line.strip():
            p = Path(line.split()[0])
            images.append(p if p.is_absolute() else Path(root) / p)
    return images


def read_rgb(path: Path) -> np.ndarray:
    """HxWx3 uint8 RGB, decoded with PIL as the reference does."""
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


def resize(rgb: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1:
        return rgb
    return cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)


class ImageFolder(Dataset):
    """Decodes and rescales images in DataLoader workers; a bad file yields ``None``."""

    def __init__(self, paths: list[Path], scale: float):
        self.paths, self.scale = paths, scale

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            rgb = read_rgb(self.paths[i])
        except (OSError, ValueError) as exc:
            return self.paths[i], None, str(exc)
        return self.paths[i], resize(rgb, self.scale), rgb.shape[:2]


def _as_is(sample):
    return sample


def build_detector_from_weights(weights: str, cfg, device: torch.device) -> FaceDetector:
    ckpt = load_file(weights, "--weights")
    if isinstance(ckpt, dict) and isinstance(ckpt.get("config"), dict):
        cfg.MODEL = config_lib.merge_saved(ckpt["config"]).MODEL     # our checkpoint: its width
    net = build_detector(cfg.MODEL, cfg.NUM_CLASSES)
    net.load_state_dict(detector_state_dict(ckpt))
    return FaceDetector(net, cfg.ANCHOR, cfg.DETECT, cfg.AUG.img_mean, device, cfg.RUN.AMP,
                        cfg.RUN.CHANNELS_LAST)


def format_detections(dets: np.ndarray) -> str:
    """``x1 y1 x2 y2 score`` lines; float32 values written with their shortest exact repr."""
    return "".join(" ".join(np.format_float_positional(v, unique=True, trim="-") for v in row)
                   + "\n" for row in dets.astype(np.float32))


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def to_pixels(dets: torch.Tensor, height: int, width: int) -> np.ndarray:
    """Normalised (x1, y1, x2, y2, score) -> original-image pixels."""
    scale = torch.tensor([width, height, width, height, 1.0])
    return (dets * scale).numpy()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--weights", required=True, help="detector checkpoint")
    p.add_argument("--images", required=True, help="image folder or list file")
    p.add_argument("--output", required=True, help="folder for the <image stem>.txt files")
    p.add_argument("--scale", type=float, default=1.0, help="resize factor before detection")
    p.add_argument("--root", default=None, help="root of relative paths in a list file "
                                                "(default: FACE.DATA_ROOT)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    p.add_argument("--workers", type=int, default=2, help="image-decoding processes")
    p.add_argument("--config", action="append", default=[], metavar="PRESET")
    p.add_argument("opts", nargs="*", metavar="KEY.SUB=VALUE", help="config overrides")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = config_lib.load_config(args.config, args.opts)
    if args.scale <= 0:
        raise ValueError("--scale must be positive")
    device = dist.pick_device(cfg.RUN.DEVICE)
    detector = build_detector_from_weights(args.weights, cfg, device)
    paths = list_images(args.images, args.root or cfg.FACE.DATA_ROOT)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        log.warning("several images share a file stem; their outputs overwrite each other")

    loader = DataLoader(ImageFolder(paths, args.scale), batch_size=None, collate_fn=_as_is,
                        num_workers=args.workers if len(paths) > 1 else 0)
    pending: list = []

    def flush():
        batch = np.stack([img for _, img, _ in pending])
        for (path, _, (h, w)), dets in zip(pending, detector(batch)):
            write_text_atomic(out_dir / f"{path.stem}.txt", format_detections(to_pixels(dets, h, w)))
        pending.clear()

    failed = 0
    for path, img, info in tqdm(loader, total=len(paths), desc="detect", unit="img"):
        if img is None:
            log.warning("skipping unreadable image %s: %s", path, info)
            failed += 1
            continue
        if pending and (len(pending) == args.batch_size or pending[0][1].shape != img.shape):
            flush()
        pending.append((path, img, info))
    if pending:
        flush()
    log.info("wrote %d detection files to %s%s", len(paths) - failed, out_dir,
             f" ({failed} unreadable images skipped)" if failed else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
