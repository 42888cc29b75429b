"""The WIDER FACE list-file dataset of the detection branch (the reference's ``WIDERDetection``).

A list file has one image a line, whitespace-separated::

    <image_path> <N> x y w h label  (x N)

in pixels, top-left + size. :func:`parse_list_file` reads it as the reference does (boxes with
``w <= 0`` or ``h <= 0`` dropped, images left without a box dropped) but refuses malformed lines
(including labels other than 1 and bytes that are not UTF-8) with the file name and line
number. :class:`WIDERDetection` serves augmented samples that are a pure function of
``(seed, epoch, index)``: resume and the number of DataLoader workers do not change what the
network sees.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data.augmentations import train_preprocess, val_preprocess
from data.image_folder import UNREADABLE, load_rgb  # noqa: F401  (re-exported)
from data.samplers import MAX_DRAWS, KeyedDataset  # noqa: F401  (MAX_DRAWS re-exported)
from utils.files import NotUtf8Error, read_utf8_lines

logger = logging.getLogger(__name__)

# The one label a list file may give a box: 1 = face (NUM_CLASSES = 2 with the background).
# Any other value would silently train the background class or index past the classifier.
FACE_LABEL = 1


@dataclass
class Record:
    """One image of a list file: ``boxes`` ``[n, 4]`` float64 pixel x1, y1, x2, y2 (x2 = x + w),
    ``labels`` ``[n]`` int64; ``line`` is the 1-based line number in the list file."""
    path: str
    boxes: np.ndarray
    labels: np.ndarray
    line: int = 0


def _parse_line(tokens: list[str], where: str) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (x1, y1, x2, y2) and labels of one tokenised line, before the w/h filter."""
    try:
        count = int(tokens[1]) if len(tokens) > 1 else None
    except ValueError:
        raise ValueError(f"{where}: face count {tokens[1]!r} is not an integer") from None
    if count is None or count < 0:
        raise ValueError(f"{where}: expected '<image_path> <N> x y w h label ...' with N >= 0")
    if len(tokens) != 2 + 5 * count:
        raise ValueError(f"{where}: N = {count} needs {5 * count} numbers after it, "
                         f"found {len(tokens) - 2}")
    try:
        values = np.array(tokens[2:], dtype=np.float64).reshape(count, 5)
    except ValueError:
        raise ValueError(f"{where}: non-numeric box value") from None
    if not np.isfinite(values).all():
        raise ValueError(f"{where}: non-finite box value")
    if not (values[:, 4] == np.round(values[:, 4])).all():
        raise ValueError(f"{where}: labels must be integers")
    bad = values[:, 4] != FACE_LABEL
    if bad.any():
        raise ValueError(f"{where}: label {values[bad, 4][0]:g} is not the face label "
                         f"{FACE_LABEL}")
    boxes = values[:, :4].copy()
    boxes[:, 2:] += boxes[:, :2]
    return boxes, values[:, 4].astype(np.int64)


def parse_list_file(path: str | Path, root: str | Path = ".",
                    keep_empty: bool = False) -> list[Record]:
    """Read a list file in the format above (also docs/DATASETS.md).

    Relative image paths are joined to ``root``. Boxes with ``w <= 0`` or ``h <= 0`` are dropped;
    so are the images left without a box unless ``keep_empty`` (test-time lists keep every
    image). Blank lines are ignored. A malformed line raises ``ValueError`` naming the file and
    its 1-based line number.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"list file {path} does not exist")
    root = Path(root)
    records = []
    for number, line in enumerate(read_list_lines(path), start=1):
        tokens = line.split()
        if not tokens:
            continue
        boxes, labels = _parse_line(tokens, f"{path}, line {number}")
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if valid.any() or keep_empty:
            records.append(Record(str(root / tokens[0]), boxes[valid], labels[valid], number))
    return records


def read_list_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (LF, CRLF or CR ends, as Python's text mode reads them).
    A leading UTF-8 BOM is dropped (editors on Windows add one; it would otherwise become part
    of the first image path); bytes that are not UTF-8 raise ``ValueError`` naming the file and
    the line."""
    try:
        return read_utf8_lines(path)
    except NotUtf8Error as exc:
        raise ValueError(f"{path}, line {exc.line}: byte 0x{exc.byte:02x} is not UTF-8 "
                         f"(save the list file as UTF-8)") from None


class WIDERDetection(KeyedDataset):
    """WIDER (or any list file) detection samples, augmented as the reference's training loader.

    ``dataset[index]`` or ``dataset[(epoch, index)]`` returns ``(image [3, H, W] float32,
    target [n, 5] float32 = normalised x1, y1, x2, y2, label, skipped)``. All randomness comes
    from ``np.random.default_rng([seed, epoch, index])``; a plain integer key uses
    :attr:`epoch` (see :meth:`set_epoch`). ``skipped`` counts the unreadable images met while
    producing the sample (they are logged and replaced by another random draw, as are images
    whose faces all vanish in augmentation).
    """

    def __init__(self, list_file: str | Path, aug, root: str | Path = ".", train: bool = True,
                 seed: int = 0, records: list | None = None, camera=None):
        self.list_file = str(list_file)
        self.aug = aug
        self.camera = camera                 # AUG.lowlight_model's camera (None: the toy model)
        self.train = train
        self.seed = int(seed)
        self.epoch = 0
        # ``records``: annotations read elsewhere (another format, pseudo labels), else the list
        self.records = parse_list_file(list_file, root=root) if records is None else records
        if not self.records:
            raise ValueError(f"list file {list_file} has no image with a valid box")

    def read(self, record):
        try:
            return load_rgb(record.path)
        except UNREADABLE as exc:
            logger.warning("skipping unreadable image %s (%s: %s)", record.path,
                           type(exc).__name__, exc)
            return None

    def transform(self, img, record, rng):
        width, height = img.size
        boxes = record.boxes / np.array([width, height, width, height], dtype=np.float64)
        if self.train:
            image, boxes, labels = train_preprocess(img, boxes, record.labels, self.aug, rng,
                                                    self.camera)
            if len(boxes) == 0:               # no face survived: the reference draws again
                return None
        else:
            image, boxes, labels = val_preprocess(img, boxes, record.labels, self.aug)
        target = np.concatenate([boxes, labels.astype(np.float32)[:, None]], axis=1)
        return image, target.astype(np.float32)

    def no_sample_message(self, skipped: int) -> str:
        return (f"{self.list_file}: no usable sample after {MAX_DRAWS} draws "
                f"({skipped} unreadable images); check the image paths")


def detection_collate(batch):
    """Stack the images, keep the per-image targets as a list, sum the skipped counts.

    Returns ``(images [B, 3, H, W], [targets [n_i, 5]], skipped: int)``.
    """
    images, targets, skipped = zip(*batch)
    return torch.stack(images, 0), list(targets), int(sum(skipped))
