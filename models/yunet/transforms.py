"""YuNet's training pipeline (libfacedetection.train ``yunet_n.py`` / ``yunet_s.py``).

``LoadImageFromFile(to_float32)`` -> ``RandomSquareCrop(crop_choice)`` -> ``Resize(640x640,
keep_ratio=False)`` -> ``RandomFlip(0.5)`` -> ``Normalize(mean 0, std 1, to_rgb=False)``: the
network sees BGR float32 in 0..255. The official semantics, step by step:

* (ours, off by default) **low light**: with probability ``AUG.lowlight_prob`` the image is
  replaced by its simulated low-light copy first, by ``data.augmentations.maybe_low_light``
  exactly as the DSFD pipeline does (its own child generator, so the other draws are unchanged
  and probability 0 leaves every sample as it was).

* **RandomSquareCrop**: the side is ``int(scale * min(W, H))`` with ``scale`` drawn from
  ``crop_choice``; the top-left corner is uniform over the integer positions that keep the
  square inside the image (``[0, W - side]``) or, for a square larger than the image, that keep
  the image inside the square (``[W - side, 0]``; the outside is filled with 128). A draw is
  accepted when the centre of at least one face lies strictly inside the square, else redrawn
  (250 positions per scale; then a new scale, or ``1.2 x`` the last one when no choice exceeds
  1). The faces whose centre is outside are dropped; the others' boxes and landmarks are
  clipped to the square and shifted.
* **Resize** to ``size x size`` with bilinear interpolation (cv2), boxes and landmarks scaled
  and clipped to ``[0, size]``.
* **RandomFlip** with probability 0.5: ``x -> size - x``, the box corners swapped, the landmarks
  re-ordered (left/right eye, nose, left/right mouth corner: ``[1, 0, 2, 4, 3]``).

Landmarks that are not annotated (-1) stay -1 throughout (the official code carries a
visibility flag instead). Every draw comes from ``np.random.default_rng([seed, epoch, index])``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from data.augmentations import maybe_low_light
from data.lowlight_model import camera_spec
from data.samplers import KeyedDataset

logger = logging.getLogger(__name__)

PAD_VALUE = 128.0           # RandomSquareCrop's fill outside the image
TRIES_PER_SCALE = 250
MAX_SCALES = 40             # the official loop never ends for an image without a usable face
FLIP_ORDER = [1, 0, 2, 4, 3]
MISSING = -1.0


def visible_points(points: np.ndarray) -> np.ndarray:
    """``[n, 5]`` bool: the annotated landmarks (a missing one has both coordinates -1)."""
    return ~(points == MISSING).all(-1)


def _offset(rng: np.random.Generator, image_side: int, crop_side: int) -> int:
    """The crop's left (top) edge: inclusive integer ranges, as Python's random.randint."""
    if image_side == crop_side:
        return 0
    lo, hi = sorted((0, image_side - crop_side))
    return int(rng.integers(lo, hi + 1))


def random_square_crop(img: np.ndarray, boxes: np.ndarray, points: np.ndarray,
                       crop_choice: Sequence[float], rng: np.random.Generator):
    """``img [H, W, 3]`` float32, ``boxes [n, 4]`` px, ``points [n, 5, 2]`` px (-1 missing) ->
    ``(crop [S, S, 3], boxes [m, 4], points [m, 5, 2], kept [n] bool)``, or None when no draw
    keeps a face (``MAX_SCALES`` scales of 250 positions)."""
    if len(boxes) == 0:
        return None
    h, w = img.shape[:2]
    short = min(w, h)
    max_scale = max(crop_choice)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    scale = None
    for attempt in range(MAX_SCALES):
        if attempt == 0 or max_scale > 1.0:
            scale = float(rng.choice(crop_choice))
        else:
            scale *= 1.2
        side = int(scale * short)
        for _ in range(TRIES_PER_SCALE):
            left, top = _offset(rng, w, side), _offset(rng, h, side)
            right, bottom = left + side, top + side
            kept = ((centres[:, 0] > left) & (centres[:, 1] > top)
                    & (centres[:, 0] < right) & (centres[:, 1] < bottom))
            if kept.any():
                return _apply_crop(img, boxes, points, kept, left, top, side), kept
    return None


def _apply_crop(img, boxes, points, kept, left, top, side):
    lo, hi = np.array([left, top], np.float64), np.array([left + side, top + side], np.float64)
    b = boxes[kept].astype(np.float64).copy()
    b[:, :2] = np.maximum(b[:, :2], lo)
    b[:, 2:] = np.minimum(b[:, 2:], hi)
    b -= np.tile(lo, 2)
    p = points[kept].astype(np.float64).copy()
    vis = visible_points(p)
    p[vis] = np.clip(p[vis], lo, hi) - lo
    canvas = np.full((side, side, 3), PAD_VALUE, dtype=img.dtype)
    h, w = img.shape[:2]
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(left + side, w), min(top + side, h)
    canvas[y0 - top:y1 - top, x0 - left:x1 - left] = img[y0:y1, x0:x1]
    return canvas, b, p


def resize_square(img: np.ndarray, boxes: np.ndarray, points: np.ndarray, size: int):
    """``Resize(img_scale=(size, size), keep_ratio=False)``: bilinear, coordinates clipped."""
    h, w = img.shape[:2]
    factor = np.array([size / w, size / h])
    out = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
    boxes = np.clip(boxes * np.tile(factor, 2), 0, size)
    vis = visible_points(points)
    points = points.copy()
    points[vis] = np.clip(points[vis] * factor, 0, size)
    return out, boxes, points


def hflip(img: np.ndarray, boxes: np.ndarray, points: np.ndarray):
    """Mirror a ``[S, S', 3]`` image: ``x -> W - x``, landmarks re-ordered left/right."""
    w = img.shape[1]
    img = img[:, ::-1]
    boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
    points = points[:, FLIP_ORDER].copy()
    vis = visible_points(points)
    points[..., 0] = np.where(vis, w - points[..., 0], MISSING)
    return img, boxes, points


def read_bgr(path: str) -> np.ndarray | None:
    """BGR uint8 as mmcv's ``imread`` (cv2, EXIF orientation applied); None when unreadable."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    return cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None


def low_light_bgr(img: np.ndarray, prob: float, rng: np.random.Generator,
                  camera=None) -> np.ndarray:
    """:func:`data.augmentations.maybe_low_light` on a BGR uint8 image (it simulates RGB)."""
    return np.ascontiguousarray(maybe_low_light(img[..., ::-1], prob, rng, camera)[..., ::-1])


def yunet_sample(img: np.ndarray, boxes: np.ndarray, points: np.ndarray, labels: np.ndarray,
                 crop_choice: Sequence[float], size: int, flip_ratio: float,
                 rng: np.random.Generator, lowlight_prob: float = 0.0, camera=None):
    """The whole pipeline on a BGR uint8 image -> ``(image [3, S, S] float32, target [m, 15])``
    or None when the crop finds no face (``camera``: AUG.lowlight_model's, None = the toy)."""
    img = low_light_bgr(img, lowlight_prob, rng, camera)
    cropped = random_square_crop(img.astype(np.float32), boxes, points, crop_choice, rng)
    if cropped is None:
        return None
    (img, boxes, points), kept = cropped
    img, boxes, points = resize_square(img, boxes, points, size)
    if rng.random() < flip_ratio:
        img, boxes, points = hflip(img, boxes, points)
    vis = visible_points(points)
    norm = np.where(vis[..., None], points / size, MISSING).reshape(len(points), -1)
    target = np.concatenate([boxes / size, labels[kept, None].astype(np.float64), norm], 1)
    image = np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)
    return image, target.astype(np.float32)


class YuNetTrainDataset(KeyedDataset):
    """Augmented YuNet training samples from :class:`data.annotations.FaceRecord` records.

    ``dataset[index]`` or ``dataset[(epoch, index)]`` -> ``(image [3, S, S] float32 BGR 0..255,
    target [n, 15] float32, skipped)``, conventions of ``data/widerface.py``: all randomness from
    ``np.random.default_rng([seed, epoch, index])``, integer keys use :attr:`epoch`
    (:meth:`set_epoch`); unreadable images are logged, counted in ``skipped`` and replaced by a
    random other record, as is an image whose crop keeps no face. Records without a face are
    dropped (the official dataset drops them in training).
    """

    def __init__(self, records: list, crop_choice: Sequence[float], size: int = 640,
                 flip_ratio: float = 0.5, seed: int = 0, lowlight_prob: float = 0.0,
                 camera=None):
        self.records = [r for r in records if len(r.boxes)]
        if not self.records:
            raise ValueError("no annotation record with a face to train on")
        self.crop_choice = [float(c) for c in crop_choice]
        self.size, self.flip_ratio, self.seed = int(size), float(flip_ratio), int(seed)
        self.lowlight_prob = float(lowlight_prob)
        self.camera = camera                 # AUG.lowlight_model's camera (None: the toy model)
        self.epoch = 0

    def read(self, record):
        img = read_bgr(record.path)
        if img is None:
            logger.warning("skipping unreadable image %s", record.path)
        return img

    def transform(self, img, record, rng):
        return yunet_sample(img, np.asarray(record.boxes, np.float64),
                            np.asarray(record.landmarks, np.float64),
                            np.asarray(record.labels), self.crop_choice, self.size,
                            self.flip_ratio, rng, self.lowlight_prob, self.camera)


def build_yunet_dataset(cfg, list_file: str | Path, root, seed: int,
                        records=None) -> YuNetTrainDataset:
    """The training dataset of ``yunet_n`` / ``yunet_s`` (its entry's ``train_dataset``):
    ``records`` (FaceRecords), or those of ``list_file`` read as FACE.SRC_FORMAT; the YUNET
    section's augmentation, AUG.lowlight_prob's simulated low light (AUG.lowlight_model)."""
    if records is None:
        from data.annotations import read_training_records
        records = read_training_records(cfg, list_file, root)
    y = cfg.YUNET
    return YuNetTrainDataset(records, y.CROP_CHOICE, y.INPUT_SIZE, y.FLIP_RATIO, seed,
                             cfg.AUG.lowlight_prob, camera_spec(cfg))
