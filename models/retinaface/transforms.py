"""RetinaFace training augmentation (biubug6/Pytorch_Retinaface ``data/data_augment.py``
``preproc``) and the training dataset over annotation records.

The steps, in the reference's order, on a BGR ``uint8`` image with pixel boxes and landmarks:

0. (ours, off by default) with probability ``AUG.lowlight_prob`` the simulated low-light copy
   of the image, by ``data.augmentations.maybe_low_light`` exactly as the DSFD pipeline does
   (its own child generator: probability 0 leaves every sample as it was).
1. :func:`square_crop`: up to 250 trials of a square of side ``int(scale * short side)``,
   ``scale`` uniform among ``CROP_SCALES`` (0.3, 0.45, 0.6, 0.8, 1.0), at a uniform integer
   position. A trial is taken when some face lies wholly inside it (intersection over the
   face's area, area floored at 1 px, >= 1) and some face has its centre strictly inside and
   passes the size filter (``min(w + 1, h + 1)`` scaled to the training size > ``min_face``;
   the reference's value 0 keeps every face). The faces kept are those with their centre
   inside that pass the filter; boxes are clipped to the crop, landmarks shifted and clamped.
   When no trial is taken the whole image goes on, to be padded in step 3.
2. :func:`distort`: brightness, contrast, saturation and hue jitter in OpenCV's HSV, in one of
   the reference's two orders.
3. :func:`pad_to_square`: only when the crop failed: the image at the top left of a square of
   its long side, filled with the mean.
4. :func:`mirror`: horizontal flip with p = 0.5, the landmark points 0/1 (eyes) and 3/4 (mouth
   corners) swapped.
5. :func:`resize_subtract_mean`: resize to ``S x S`` with one of five OpenCV interpolations
   drawn uniformly, subtract the BGR mean, HWC -> CHW.

All randomness comes from one ``numpy.random.Generator``; the 250 crop trials are drawn at once
and the first acceptable one is taken, as the reference's loop takes it (same distribution,
not the same number of draws). A face "has landmarks" when its first landmark x is >= 0 (the
reference's label rule); in the output its ten landmark values are -1 otherwise.
"""
from __future__ import annotations

import logging
from typing import NamedTuple, Sequence

import cv2
import numpy as np

from data.augmentations import maybe_low_light
from data.lowlight_model import camera_spec
from data.samplers import MAX_DRAWS, KeyedDataset

logger = logging.getLogger(__name__)

CROP_SCALES = (0.3, 0.45, 0.6, 0.8, 1.0)
CROP_TRIALS = 250
INTERPOLATIONS = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA, cv2.INTER_NEAREST,
                  cv2.INTER_LANCZOS4)
# mirror: left eye <-> right eye, left mouth corner <-> right mouth corner (nose stays)
MIRROR_POINTS = [1, 0, 2, 4, 3]


class Faces(NamedTuple):
    """Per-face arrays travelling together: ``boxes [n, 4]`` and ``landms [n, 5, 2]`` float64
    pixels, ``has_landm [n]`` bool, ``labels [n]``."""
    boxes: np.ndarray
    landms: np.ndarray
    has_landm: np.ndarray
    labels: np.ndarray

    def take(self, keep: np.ndarray) -> "Faces":
        return Faces(self.boxes[keep], self.landms[keep], self.has_landm[keep], self.labels[keep])


# ---- step 1: crop --------------------------------------------------------------------------------

class CropTrials(NamedTuple):
    side: np.ndarray      # [T] int, square side in pixels
    left: np.ndarray      # [T] int
    top: np.ndarray       # [T] int


def draw_crop_trials(rng: np.random.Generator, width: int, height: int,
                     scales: Sequence[float] = CROP_SCALES,
                     trials: int = CROP_TRIALS) -> CropTrials:
    """The reference's draws for ``trials`` attempts: a scale, then ``randrange(W - w)`` and
    ``randrange(H - h)`` (0 when the square spans the side)."""
    scale = np.asarray(scales, dtype=np.float64)[rng.integers(len(scales), size=trials)]
    side = (scale * min(width, height)).astype(np.int64)                  # int() truncation
    u = rng.random((2, trials))
    left = np.where(side < width, np.floor(u[0] * np.maximum(width - side, 1)), 0)
    top = np.where(side < height, np.floor(u[1] * np.maximum(height - side, 1)), 0)
    return CropTrials(side, left.astype(np.int64), top.astype(np.int64))


def _clipped(boxes: np.ndarray, roi: np.ndarray) -> np.ndarray:
    """Boxes ``[..., n, 4]`` clipped to rois ``[..., 1, 4]``, in roi coordinates."""
    lo = np.maximum(boxes[..., :2], roi[..., :2]) - roi[..., :2]
    hi = np.minimum(boxes[..., 2:], roi[..., 2:]) - roi[..., :2]
    return np.concatenate([lo, hi], -1)


def square_crop(image: np.ndarray, faces: Faces, img_dim: int, trials: CropTrials,
                min_face: float = 0.0) -> tuple[np.ndarray, Faces, bool]:
    """Step 1 with the trials given: ``(image, faces, pad)``; ``pad`` is True when no trial was
    acceptable (the image and faces are then unchanged)."""
    boxes = faces.boxes                                                      # [n, 4]
    roi = np.stack([trials.left, trials.top, trials.left + trials.side,
                    trials.top + trials.side], 1).astype(np.float64)[:, None, :]   # [T, 1, 4]
    # the reference's matrix_iof(boxes, roi) >= 1 for some face
    lt = np.maximum(boxes[None, :, :2], roi[..., :2])
    rb = np.minimum(boxes[None, :, 2:], roi[..., 2:])
    inter = np.prod(rb - lt, axis=2) * (lt < rb).all(axis=2)                # [T, n]
    area = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    inside = (inter / np.maximum(area, 1) >= 1).any(1)                      # [T]
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    centred = ((roi[..., :2] < centres) & (centres < roi[..., 2:])).all(2)  # [T, n]
    clipped = _clipped(boxes[None], roi)                                     # [T, n, 4]
    side = trials.side[:, None].astype(np.float64)
    b_w = (clipped[..., 2] - clipped[..., 0] + 1) / side * img_dim
    b_h = (clipped[..., 3] - clipped[..., 1] + 1) / side * img_dim
    keep = centred & (np.minimum(b_w, b_h) > min_face)                       # [T, n]
    ok = np.flatnonzero(inside & keep.any(1))
    if len(ok) == 0:
        return image, faces, True
    k = ok[0]
    l, t, s = int(trials.left[k]), int(trials.top[k]), int(trials.side[k])
    kept = faces.take(keep[k])
    landms = np.clip(kept.landms - np.array([l, t]), 0, s)                   # [m, 5, 2]
    return (image[t:t + s, l:l + s], Faces(clipped[k][keep[k]], landms, kept.has_landm,
                                           kept.labels), False)


# ---- steps 2-5 -----------------------------------------------------------------------------------

def _convert(image: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> None:
    """In place: ``image * alpha + beta`` clamped to [0, 255] and truncated to uint8."""
    image[:] = np.clip(image.astype(np.float64) * alpha + beta, 0, 255)


def distort(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Step 2 on a BGR uint8 image (a copy): each jitter with p = 1/2, brightness
    U(-32, 32), contrast and saturation U(0.5, 1.5), hue + randint(-18, 18) mod 180; contrast
    before the HSV part in one order (p = 1/2), after it in the other."""
    image = image.copy()
    contrast_first = bool(rng.integers(2))
    if rng.integers(2):
        _convert(image, beta=rng.uniform(-32, 32))
    if contrast_first and rng.integers(2):
        _convert(image, alpha=rng.uniform(0.5, 1.5))
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    if rng.integers(2):
        _convert(hsv[:, :, 1], alpha=rng.uniform(0.5, 1.5))
    if rng.integers(2):
        hsv[:, :, 0] = (hsv[:, :, 0].astype(np.int64) + int(rng.integers(-18, 19))) % 180
    image = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if not contrast_first and rng.integers(2):
        _convert(image, alpha=rng.uniform(0.5, 1.5))
    return image


def pad_to_square(image: np.ndarray, mean: Sequence[float], pad: bool) -> np.ndarray:
    """Step 3: when ``pad``, the image at the top left of a ``long x long`` square of ``mean``."""
    if not pad:
        return image
    h, w = image.shape[:2]
    out = np.empty((max(h, w), max(h, w), 3), dtype=image.dtype)
    out[:, :] = mean
    out[:h, :w] = image
    return out


def mirror(image: np.ndarray, faces: Faces, rng: np.random.Generator) -> tuple[np.ndarray, Faces]:
    """Step 4: with p = 1/2, ``x -> W - x`` for boxes (x1 and x2 swapped) and landmarks, and
    the left/right landmark points exchanged."""
    if not rng.integers(2):
        return image, faces
    w = image.shape[1]
    boxes = faces.boxes.copy()
    boxes[:, [0, 2]] = w - faces.boxes[:, [2, 0]]
    landms = faces.landms[:, MIRROR_POINTS].copy()
    landms[..., 0] = w - landms[..., 0]
    return image[:, ::-1], Faces(boxes, landms, faces.has_landm, faces.labels)


def resize_subtract_mean(image: np.ndarray, size: int, mean: Sequence[float],
                         rng: np.random.Generator) -> np.ndarray:
    """Step 5: ``[3, size, size]`` float32, BGR minus ``mean``."""
    interpolation = INTERPOLATIONS[int(rng.integers(len(INTERPOLATIONS)))]
    out = cv2.resize(np.ascontiguousarray(image), (size, size), interpolation=interpolation)
    out = out.astype(np.float32) - np.asarray(mean, dtype=np.float32)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def preproc(image: np.ndarray, faces: Faces, img_dim: int, mean: Sequence[float],
            rng: np.random.Generator, scales: Sequence[float] = CROP_SCALES,
            min_face: float = 0.0, lowlight_prob: float = 0.0,
            camera=None) -> tuple[np.ndarray, np.ndarray]:
    """Steps 0-5: BGR uint8 ``[H, W, 3]`` + faces (at least one) -> ``(image [3, S, S] float32,
    target [m, 15] float32)``, target rows ``x1, y1, x2, y2, label, 5 x (x, y)`` normalised by
    the (cropped or padded) image size, landmarks -1 for faces without them."""
    if len(faces.boxes) == 0:
        raise ValueError("preproc needs at least one face (the reference asserts it)")
    # maybe_low_light simulates on RGB; camera: AUG.lowlight_model's (None: the toy model)
    image = np.ascontiguousarray(maybe_low_light(image[..., ::-1], lowlight_prob, rng,
                                                 camera)[..., ::-1])
    h, w = image.shape[:2]
    image, faces, pad = square_crop(image, faces, img_dim, draw_crop_trials(rng, w, h, scales),
                                    min_face)
    image = pad_to_square(distort(image, rng), mean, pad)
    image, faces = mirror(image, faces, rng)
    h, w = image.shape[:2]
    out = resize_subtract_mean(image, img_dim, mean, rng)
    boxes = faces.boxes / np.array([w, h, w, h])
    landms = (faces.landms / np.array([w, h])).reshape(-1, 10)
    landms[~faces.has_landm] = -1.0
    target = np.concatenate([boxes, faces.labels.astype(np.float64)[:, None], landms], 1)
    return out, target.astype(np.float32)


# ---- the dataset ---------------------------------------------------------------------------------

def record_faces(record) -> Faces:
    """:class:`Faces` of a ``data.annotations.FaceRecord``."""
    landms = np.asarray(record.landmarks, dtype=np.float64).reshape(-1, 5, 2)
    return Faces(np.asarray(record.boxes, dtype=np.float64).reshape(-1, 4), landms,
                 landms[:, 0, 0] >= 0, np.asarray(record.labels).reshape(-1))


class RetinaFaceDataset(KeyedDataset):
    """Augmented RetinaFace training samples over ``FaceRecord``s.

    ``dataset[index]`` or ``dataset[(epoch, index)]`` returns ``(image [3, S, S] float32 BGR
    minus the mean, target [n, 15] float32, skipped)``; every random draw comes from
    ``np.random.default_rng([seed, epoch, index])`` (an integer key uses :attr:`epoch`, see
    :meth:`set_epoch`). Unreadable images are logged, counted in ``skipped`` and replaced by a
    random other record. Records without a face are dropped at construction (the reference's
    preproc asserts there is one).
    """

    def __init__(self, records, image_size: int = 640, mean: Sequence[float] = (104, 117, 123),
                 seed: int = 0, scales: Sequence[float] = CROP_SCALES, min_face: float = 0.0,
                 lowlight_prob: float = 0.0, camera=None):
        records = list(records)
        self.records = [r for r in records if len(r.boxes)]
        if len(self.records) < len(records):
            logger.info("dropped %d images without a face", len(records) - len(self.records))
        if not self.records:
            raise ValueError("no annotation record with a face")
        self.image_size = int(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.seed = int(seed)
        self.scales = tuple(scales)
        self.min_face = float(min_face)
        self.lowlight_prob = float(lowlight_prob)
        self.camera = camera
        self.epoch = 0

    def read(self, record):
        image = cv2.imread(str(record.path), cv2.IMREAD_COLOR)
        if image is None:
            logger.warning("skipping unreadable image %s", record.path)
        return image

    def transform(self, image, record, rng):
        return preproc(image, record_faces(record), self.image_size, self.mean, rng, self.scales,
                       self.min_face, self.lowlight_prob, self.camera)

    def no_sample_message(self, skipped: int) -> str:
        return (f"no readable image after {MAX_DRAWS} draws ({skipped} unreadable); "
                "check the image paths")


def build_retinaface_dataset(cfg, list_file, root=None, seed: int = 0,
                             records=None) -> RetinaFaceDataset:
    """RetinaFace's training dataset (its entry's ``train_dataset``): ``records``
    (FaceRecords), or those of ``list_file`` read as FACE.SRC_FORMAT."""
    if records is None:
        from data.annotations import read_training_records
        records = read_training_records(cfg, list_file, root)
    r = cfg.RETINAFACE
    return RetinaFaceDataset(records, r.IMAGE_SIZE, cfg.AUG.img_mean, seed, r.CROP_SCALES,
                             r.MIN_FACE_PX, cfg.AUG.lowlight_prob, camera_spec(cfg))
