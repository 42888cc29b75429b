"""Folder-to-folder image jobs: listing, mirroring, resumable skipping, reading and writing.

The low-level tools (enhancement, blurring, noise synthesis) all read a folder of images and
write one output per input. A job is a list of ``(source, destination)`` pairs; outputs are
written atomically (:mod:`utils.files`), so an output that exists is complete, and an interrupted
run resumes by skipping the pairs already done.

This module holds the project's one list of image extensions and its one image decoder
(:func:`load_rgb` / :func:`read_rgb`, with :data:`UNREADABLE`, what a bad file raises).
"""
from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
from PIL import Image

from utils.files import remove_stale_temps, write_bytes_atomic  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
JPEG_QUALITY = 95           # cv2.imwrite's default, which the reference's scripts used


def list_image_files(folder: str | Path, key: str = "") -> list[Path]:
    """Every image below ``folder`` (recursive, sorted). A missing folder raises naming ``key``."""
    folder = Path(folder)
    if not folder.is_dir():
        where = f" (set by {key})" if key else ""
        raise FileNotFoundError(f"image folder {folder} does not exist{where}")
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                  and not p.name.startswith("."))


def mirror_pairs(sources: Sequence[Path], in_root: Path, out_root: Path,
                 suffix: str | None = ".png", flat: bool = False) -> list[tuple[Path, Path]]:
    """Destination of each source: the same path relative to ``in_root`` under ``out_root``
    (or just the file name when ``flat``), with the extension replaced by ``suffix`` (None
    keeps it). Two sources mapping to one destination raise."""
    pairs, seen = [], {}
    for src in sources:
        rel = Path(src.name) if flat else Path(src).relative_to(in_root)
        dst = Path(out_root) / (rel.with_suffix(suffix) if suffix else rel)
        if dst in seen:
            raise ValueError(f"{src} and {seen[dst]} would both be written to {dst}")
        seen[dst] = src
        pairs.append((Path(src), dst))
    return pairs


def pending(pairs: Iterable[tuple[Path, Path]], overwrite: bool = False) -> list[tuple[Path, Path]]:
    """The pairs whose destination does not exist yet (all of them with ``overwrite``)."""
    return [(s, d) for s, d in pairs if overwrite or not d.exists()]


def default_output(input_dir: str | Path, old: str = "images", new: str = "images_enhanced"
                   ) -> Path | None:
    """The reference's layout: the input path with its last ``images`` component replaced by
    ``images_enhanced`` (``.../DarkFace/images/train`` -> ``.../DarkFace/images_enhanced/train``);
    None when the path has no such component."""
    parts = list(Path(input_dir).parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == old:
            parts[i] = new
            return Path(*parts)
    return None


# What a missing, truncated or corrupt image file can raise while decoding.
UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image fully (so a truncated file fails here, raising one of
    :data:`UNREADABLE`) and convert it to RGB with PIL (the reference's reader)."""
    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")


def read_rgb(path: str | Path) -> np.ndarray:
    """HxWx3 uint8 RGB of :func:`load_rgb`."""
    return np.array(load_rgb(path))


def encode_image(rgb: np.ndarray, suffix: str, jpeg_quality: int = JPEG_QUALITY) -> bytes:
    """PNG (lossless) or JPEG bytes of an HxWx3 uint8 RGB array."""
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if suffix.lower() in (".jpg", ".jpeg") \
        else []
    ok, buf = cv2.imencode(suffix, bgr, params)
    if not ok:
        raise ValueError(f"cv2 could not encode an image as {suffix}")
    return buf.tobytes()


def through_file(rgb: np.ndarray, suffix: str, jpeg_quality: int = JPEG_QUALITY) -> np.ndarray:
    """``rgb`` as it reads back after :func:`write_image_atomic` to a ``suffix`` file and
    :func:`read_rgb` (a JPEG's loss included), without touching the disk."""
    if suffix.lower() not in (".jpg", ".jpeg"):
        return rgb                                   # lossless formats read back unchanged
    with Image.open(io.BytesIO(encode_image(rgb, suffix, jpeg_quality))) as im:
        return np.array(im.convert("RGB"))


def write_image_atomic(rgb: np.ndarray, path: str | Path, jpeg_quality: int = JPEG_QUALITY
                       ) -> Path:
    """Save HxWx3 uint8 RGB to ``path`` (format from the extension) atomically."""
    path = Path(path)
    return write_bytes_atomic(encode_image(rgb, path.suffix, jpeg_quality), path)
