"""What the detection scripts read and write: the images to run on, and one result file each.

Shared by test.py, tools/make_pseudo_boxes.py, tools/make_pseudo_labels.py and the demo, so that
no tool imports an entry point.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from data.image_folder import IMAGE_EXTENSIONS, read_rgb, write_bytes_atomic


def list_images(spec: str | Path, root: str | Path = ".") -> list[Path]:
    """The images of ``spec``: a folder (searched recursively, sorted), a single image file, or
    a text list with one image path per line (its first token, so WIDER-format list files
    work; relative paths are joined to ``root``)."""
    path = Path(spec)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not path.is_file():
        raise FileNotFoundError(f"--images {spec}: no such folder, image or list file")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return [path]
    images = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[:exc.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (expected one image path per "
                         f"line)") from None
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            p = Path(line.split()[0])
            images.append(p if p.is_absolute() else Path(root) / p)
    return images


class ImageFiles(Dataset):
    """Decodes images in DataLoader workers; an unreadable file yields ``None`` and the error."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return self.paths[i], read_rgb(self.paths[i]), None
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            return self.paths[i], None, str(exc)


def format_detections(dets: np.ndarray) -> str:
    """``x1 y1 x2 y2 score [landmarks]`` lines of float64 values, written as the reference
    writes them (Python's shortest round-trip repr)."""
    return "".join(" ".join(repr(float(v)) for v in row) + "\n" for row in dets)


def format_wider(name: str, dets: np.ndarray) -> str:
    """The WIDER FACE prediction layout: name, count, ``x y w h score [landmarks]`` lines."""
    xywh = dets.copy()
    xywh[:, 2:4] -= xywh[:, 0:2]
    return f"{name}\n{len(dets)}\n" + format_detections(xywh)


class Outputs:
    """Where each image's result goes, in the chosen format (``darkface``: ``<stem>.txt``;
    ``wider``: ``<event folder>/<stem>.txt``)."""

    def __init__(self, folder: Path, fmt: str):
        self.folder, self.fmt = Path(folder), fmt

    def path(self, image: Path) -> Path:
        if self.fmt == "wider":
            return self.folder / image.parent.name / f"{image.stem}.txt"
        return self.folder / f"{image.stem}.txt"

    def write(self, image: Path, dets: np.ndarray) -> None:
        text = format_wider(image.stem, dets) if self.fmt == "wider" else format_detections(dets)
        write_bytes_atomic(text.encode(), self.path(image))
