"""Pseudo-label files: the teachers' fused boxes on unlabelled images, with their scores.

The WIDER list line (``<path> N x y w h label ...``) has no room for a score, and
:func:`data.widerface.parse_list_file` refuses a line with extra numbers, so pseudo labels have
their own format, ``pseudo`` (docs/DATASETS.md, "Pseudo labels")::

    #pseudo-labels 1
    # ./DarkFace/images/train/1.png 1080 720
    412.5 300.25 430 322.75 0.93
    101 88.5 109.25 99 0.41 102.5 92 106.5 92 104.5 94.5 103 97 106 97
    # ./DarkFace/images/train/2.png 1080 720

The first line names the format and its version. Each image is a ``# <path> <W> <H>`` line
(the path may contain blanks; W, H its size in pixels) followed by one line per box: pixel
corners ``x1 y1 x2 y2`` (``x2 = x + w``, the project's convention), the fused score in [0, 1],
then optionally the 5 landmarks as ``x y`` pairs (``-1 -1`` for a missing point), 5 or 15
numbers. Boxes are written best first; an image without boxes is a header alone (the teachers
saw it and found nothing, which is not the same as not having run). Numbers are float32, written
in their shortest exact form, so a file read and written again is byte-identical. Files joined
with ``cat`` read as one (a repeated first line is skipped).

``tools/make_pseudo_labels.py`` writes one such file per image (its resumable cache) and the
merged list. Training splits the boxes by score with :func:`to_targets`: positives, boxes to
ignore (label -1: neither face nor background in the loss) and boxes dropped.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import numpy as np

from utils.files import write_text_atomic

logger = logging.getLogger(__name__)

MAGIC = "#pseudo-labels"
VERSION = 1
NUM_LANDMARKS = 5
MISSING = -1.0              # landmark coordinate marker of "no landmark"
WIDTHS = (5, 5 + 2 * NUM_LANDMARKS)
POSITIVE, IGNORE = 1, -1    # the target labels of to_targets (models/dsfd/loss.py)
_BOM = "\ufeff"


class PseudoLabelError(ValueError):
    """A malformed pseudo-label file; the message starts with ``file:line:``."""

    def __init__(self, path, line: int | None, message: str):
        self.path, self.line = str(path), line
        super().__init__(f"{path}:{line}: {message}" if line else f"{path}: {message}")


@dataclass(eq=False)
class PseudoRecord:
    """One image: ``boxes`` ``[n, 4]`` float64 pixel x1, y1, x2, y2, ``scores`` ``[n]``,
    ``landmarks`` ``[n, 5, 2]`` (all -1 for a box without), ``size`` ``(W, H)``; ``line`` is
    the header's 1-based line in the file it was read from (0 when made in memory)."""
    path: str
    size: tuple[int, int]
    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray
    line: int = 0

    @classmethod
    def from_detections(cls, path: str, size: tuple[int, int], dets: np.ndarray) -> "PseudoRecord":
        """From ``[n, 5]`` or ``[n, 15]`` pixel detections (``x1 y1 x2 y2 score`` + landmarks)."""
        dets = np.asarray(dets, dtype=np.float64).reshape(len(dets), -1) if len(dets) else \
            np.zeros((0, 5))
        if dets.shape[1] not in WIDTHS:
            raise ValueError(f"{path}: detections need 5 or 15 columns, got {dets.shape[1]}")
        lms = dets[:, 5:].reshape(-1, NUM_LANDMARKS, 2) if dets.shape[1] > 5 else \
            np.full((len(dets), NUM_LANDMARKS, 2), MISSING)
        order = np.argsort(-dets[:, 4], kind="stable")
        return cls(str(path), (int(size[0]), int(size[1])), dets[order, :4].copy(),
                   dets[order, 4].copy(), lms[order].copy())

    def has_landmarks(self) -> np.ndarray:
        """``[n]`` bool: the boxes with at least one landmark coordinate that is not -1."""
        return ~(self.landmarks == MISSING).all(axis=(1, 2))


# ---- writing -----------------------------------------------------------------------------------

def _number(value: float) -> str:
    text = str(np.float32(value))           # shortest form that reads back as the same float32
    return text[:-2] if text.endswith(".0") else text


def format_block(record: PseudoRecord) -> str:
    """The ``# <path> <W> <H>`` line and the box lines of one record."""
    if "\n" in record.path or "\r" in record.path:
        raise ValueError(f"image path {record.path!r} contains a line break")
    lines = [f"# {record.path} {int(record.size[0])} {int(record.size[1])}"]
    has = record.has_landmarks()
    for box, score, lm, with_lm in zip(record.boxes, record.scores, record.landmarks, has):
        values = [*box, score] + (list(lm.reshape(-1)) if with_lm else [])
        lines.append(" ".join(_number(v) for v in values))
    return "\n".join(lines) + "\n"


def format_pseudo_labels(records: Iterable[PseudoRecord]) -> str:
    return f"{MAGIC} {VERSION}\n" + "".join(format_block(r) for r in records)


def write_pseudo_labels(path: str | Path, records: Iterable[PseudoRecord]) -> Path:
    """Write ``records`` as one pseudo-label file, atomically."""
    return write_text_atomic(format_pseudo_labels(records), path)


def merge_pseudo_labels(files: Sequence[str | Path], out: str | Path) -> int:
    """Read the per-image files ``files`` (each is checked) and write them, in that order, as
    one list file ``out``; returns the number of images."""
    records = [r for f in files for r in read_pseudo_labels(f)]
    write_pseudo_labels(out, records)
    return len(records)


# ---- reading -----------------------------------------------------------------------------------

def _text_lines(path: Path) -> list[str]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].replace(b"\r\n", b"\n").replace(b"\r", b"\n").count(b"\n") + 1
        raise PseudoLabelError(path, line, f"byte 0x{data[exc.start]:02x} is not UTF-8") from None
    return text.removeprefix(_BOM).replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _header(text: str, path: Path, number: int) -> tuple[str, tuple[int, int]]:
    parts = text[1:].strip().rsplit(None, 2)
    try:
        if len(parts) != 3:
            raise ValueError
        w, h = int(parts[1]), int(parts[2])
        if w <= 0 or h <= 0:
            raise ValueError
    except ValueError:
        raise PseudoLabelError(path, number, "expected an image header '# <path> <W> <H>' with "
                                             "positive integer W and H") from None
    return parts[0], (w, h)


def _rows(rows: list[str], numbers: list[int], path: Path) -> np.ndarray:
    """[n, 15] float64 (landmarks -1 for 5-number rows), checked."""
    out = np.full((len(rows), WIDTHS[1]), MISSING)
    for i, (text, number) in enumerate(zip(rows, numbers)):
        tokens = text.split()
        if len(tokens) not in WIDTHS:
            raise PseudoLabelError(path, number, f"expected 5 numbers (x1 y1 x2 y2 score) or 15 "
                                                 f"(and 5 landmarks x y), found {len(tokens)}")
        try:
            values = np.array(tokens, dtype=np.float64)
        except ValueError:
            raise PseudoLabelError(path, number, "not a number") from None
        if not np.isfinite(values).all():
            raise PseudoLabelError(path, number, "non-finite number")
        if not 0.0 <= values[4] <= 1.0:
            raise PseudoLabelError(path, number, f"score {values[4]:g} is outside [0, 1]")
        out[i, :len(values)] = values
    return out


def _record(path: Path, header: tuple, rows: list[str], numbers: list[int], root) -> PseudoRecord:
    (image, size), line = header
    values = _rows(rows, numbers, path)
    valid = (values[:, 2] > values[:, 0]) & (values[:, 3] > values[:, 1])
    if not valid.all():
        logger.warning("%s:%d: %d empty box(es) (x2 <= x1 or y2 <= y1) dropped", path, line,
                       int((~valid).sum()))
        values = values[valid]
    if root is not None and not Path(image).is_absolute():
        image = str(Path(root) / image)
    return PseudoRecord(image, size, values[:, :4].copy(), values[:, 4].copy(),
                        values[:, 5:].reshape(-1, NUM_LANDMARKS, 2).copy(), line)


def read_pseudo_labels(path: str | Path, root: str | Path | None = None) -> list[PseudoRecord]:
    """Read a pseudo-label file (per-image or merged). Relative image paths are joined to
    ``root`` when given, else kept as written. A malformed line raises
    :class:`PseudoLabelError` (a ``ValueError``) naming ``file:line``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pseudo-label file {path} does not exist")
    lines = [(n, t.strip()) for n, t in enumerate(_text_lines(path), start=1) if t.strip()]
    if not lines or lines[0][1].split()[:1] != [MAGIC]:
        raise PseudoLabelError(path, lines[0][0] if lines else None,
                               f"not a pseudo-label file (expected a first line "
                               f"'{MAGIC} {VERSION}')")
    magic = lines[0][1].split()
    if magic[1:2] != [str(VERSION)]:
        raise PseudoLabelError(path, lines[0][0], f"version {' '.join(magic[1:])!r} is not "
                                                  f"the supported {VERSION}")
    records, header, rows, numbers = [], None, [], []
    for number, text in lines[1:]:
        if text.split()[:2] == magic[:2]:
            continue                    # files joined with `cat` read as one
        if text.startswith("#"):
            if header is not None:
                records.append(_record(path, header, rows, numbers, root))
            header, rows, numbers = (_header(text, path, number), number), [], []
        elif header is None:
            raise PseudoLabelError(path, number, "a box line before the first '# <path> <W> <H>'"
                                                 " header")
        else:
            rows.append(text)
            numbers.append(number)
    if header is not None:
        records.append(_record(path, header, rows, numbers, root))
    return records


# ---- training targets --------------------------------------------------------------------------

class PseudoTargets(NamedTuple):
    boxes: np.ndarray       # [k, 4] pixels
    labels: np.ndarray      # [k] int64: POSITIVE (1) or IGNORE (-1)
    scores: np.ndarray      # [k]
    landmarks: np.ndarray   # [k, 5, 2], -1 where absent


def to_targets(record: PseudoRecord, high: float, low: float | None = None) -> PseudoTargets:
    """Split a record's boxes by score: ``score >= high`` are positives (label 1),
    ``low <= score < high`` are ignored (label -1: the loss treats their anchors as neither
    face nor background), ``score < low`` are dropped (background). ``low`` defaults to
    ``high`` (no ignore band: plain thresholding). Order is kept (best first)."""
    low = high if low is None else low
    if not 0.0 <= low <= high:
        raise ValueError(f"pseudo-label thresholds need 0 <= low <= high, got low={low}, "
                         f"high={high}")
    positive = record.scores >= high
    keep = positive | (record.scores >= low)
    labels = np.where(positive, POSITIVE, IGNORE)[keep].astype(np.int64)
    return PseudoTargets(record.boxes[keep], labels, record.scores[keep],
                         record.landmarks[keep])


def to_face_record(record: PseudoRecord, high: float, low: float | None = None):
    """:func:`to_targets` as a :class:`data.annotations.FaceRecord` (labels 1 / -1), the record
    type the detectors' training datasets are built from."""
    from data.annotations import FaceRecord
    t = to_targets(record, high, low)
    return FaceRecord(record.path, t.boxes, t.landmarks, t.labels, tuple(record.size))


def relative_image_path(image: str | Path, data_root: str | Path) -> str:
    """How an image is named in a list file: ``./<path below data_root>``, or absolute when it
    lies outside (the convention of tools/make_pseudo_boxes.py)."""
    try:
        rel = Path(image).resolve().relative_to(Path(data_root).resolve())
    except ValueError:
        return str(Path(image).resolve())
    return f"./{rel.as_posix()}"


# ---- the student's batches (train.py, PSEUDO.* / EMA.*) -----------------------------------------

def detections_to_targets(dets, high: float, low: float | None = None):
    """A teacher's detections ``[k, 5 + 2L]`` (normalised ``x1 y1 x2 y2 score`` + landmarks, the
    registry's ``postprocess`` format) -> training target rows ``[m, 5 + 2L]`` (box, label,
    landmarks; models/interface.py), split by score as :func:`to_targets`: ``>= high`` label 1,
    ``[low, high)`` label -1, the rest dropped. Boxes are clipped to the image; boxes left
    empty are dropped. A torch function (it runs on the teacher's device)."""
    import torch
    low = high if low is None else low
    scores = dets[:, 4]
    boxes = dets[:, :4].clamp(0, 1)
    keep = (scores >= low) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    labels = torch.where(scores >= high, float(POSITIVE), float(IGNORE))
    rows = torch.cat((boxes, labels[:, None], dets[:, 5:]), 1)
    return rows[keep].float()


def pseudo_label_loader(dataset, global_batch: int, rank: int, world: int, seed: int,
                        num_workers: int = 0, pin_memory: bool = False):
    """Endless, rank-sharded batches of a detector's training dataset built on pseudo labels:
    :class:`data.ssl_datasets.CyclingLoader` (its resumable ``state_dict``, shuffle, drop_last)
    with the detection collate (per-image targets of different lengths; batches are
    ``(images [B, 3, S, S], [targets [n_i, C]], skipped)``)."""
    from data.ssl_datasets import CyclingLoader
    from data.widerface import detection_collate
    return CyclingLoader(dataset, global_batch, rank, world, seed, num_workers=num_workers,
                         pin_memory=pin_memory, name="PSEUDO.BATCH_SIZE",
                         collate_fn=detection_collate)
