"""Training and validation preprocessing of the WIDER detection loader (the reference's
``WIDERDetection``: augmentation, 640x640 resize, flip, then its input normalisation).

``train_preprocess`` is the reference's ``preprocess(..., mode='train')`` step by step:

0. (ours, off by default) the simulated low-light copy with probability ``lowlight_prob``
   (:func:`maybe_low_light`),
1. colour distortion (:func:`distort_image`),
2. optional SSD expand (:func:`expand_image`, off by default as in the reference),
3. data-anchor-sampling (:func:`data_anchor_sampling`) when a uniform draw exceeds
   ``data_anchor_sampling_prob`` (the reference's comparison; 0.5 makes it a fair coin),
   otherwise the SSD-style square crop (:func:`ssd_square_crop`),
4. resize to ``resize_width x resize_height`` with a random PIL filter (:func:`random_resize`),
5. horizontal flip with p = 0.5 (:func:`random_flip`),
6. normalisation to the detector's input convention (:func:`normalize_image`).

Every random draw comes from an explicit ``numpy.random.Generator``, never from the global
``random`` / ``np.random`` state, so a sample is a pure function of its generator's seed. Where the
reference loops over trials and keeps the first (or every) one that passes, we draw all trials at
once and select the same way: the distribution is identical, the number of draws is not.

Boxes travel as float arrays ``[n, 4]`` of normalised ``x1, y1, x2, y2`` (pixel coordinates only
inside data-anchor-sampling, as in the reference) with a parallel ``labels`` array ``[n]``.
``aug`` is the ``cfg.AUG`` section of ``data/config.py``.
"""
from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image, ImageEnhance

from data.lowlight import simulate_low_light
from data.lowlight_model import CameraSpec, camera_low_light

# Step 3, PyramidBox data-anchor-sampling: the anchor sizes a face is matched to, the cap on the
# resized image area, 50 window trials (valid if a face is inside or IoU > 0.7) and the five
# cv2 interpolations, one drawn at random.
DAS_ANCHORS = np.array([16, 32, 64, 128, 256, 512], dtype=np.float64)
DAS_MAX_SIDE = 12000                      # resized image area is capped at 12000^2 px^2
DAS_TRIALS = 50
DAS_IOU_THRESH = 0.7
CV2_INTERPOLATIONS = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA, cv2.INTER_NEAREST,
                      cv2.INTER_LANCZOS4)
# Step 4, the final resize: a PIL filter drawn uniformly among these five; keep this order, a
# draw is an index into it.
PIL_FILTERS = (Image.Resampling.BILINEAR, Image.Resampling.HAMMING, Image.Resampling.NEAREST,
               Image.Resampling.BICUBIC, Image.Resampling.LANCZOS)


class Sampler(NamedTuple):
    """One SSD batch sampler (the reference's ``sampler(...)``; jaccard limits are all 0)."""
    max_sample: int
    max_trial: int
    min_scale: float
    max_scale: float
    min_aspect_ratio: float
    max_aspect_ratio: float
    min_object_coverage: float
    use_square: bool


# Step 3, the SSD branch: the whole image squared, then four samplers of scale
# U(0.3, 1.0); each keeps at most one crop in which some face has object coverage 1.0.
SSD_SAMPLERS = (
    Sampler(1, 50, 1.0, 1.0, 1.0, 1.0, 1.0, True),
    Sampler(1, 50, 0.3, 1.0, 1.0, 1.0, 1.0, True),
    Sampler(1, 50, 0.3, 1.0, 1.0, 1.0, 1.0, True),
    Sampler(1, 50, 0.3, 1.0, 1.0, 1.0, 1.0, True),
    Sampler(1, 50, 0.3, 1.0, 1.0, 1.0, 1.0, True),
)


def _uniform(rng: np.random.Generator, low, high, size=None):
    """``random.uniform(low, high)``, also valid for ``high < low`` (the reference relies on it)."""
    return low + (high - low) * rng.random(size)


# ---------------------------------------------------------------------------------------------
# step 0 (ours): simulated low light


def lowlight_rng(rng: np.random.Generator) -> np.random.Generator:
    """A generator of its own for the low-light option, derived from ``rng``'s seed: spawning a
    child leaves ``rng``'s stream as it was, so the other augmentations draw exactly what they
    draw without the option. (A generator without a spawnable seed sequence seeds the child
    with one draw of its own instead.)"""
    try:
        return rng.spawn(1)[0]
    except (AttributeError, TypeError, ValueError):
        return np.random.default_rng(int(rng.integers(2 ** 63)))


def maybe_low_light(img, prob: float, rng: np.random.Generator,
                    camera: CameraSpec | None = None):
    """With probability ``prob``, the simulated low-light copy of ``img`` (PIL RGB image or
    HxWx3 uint8 array; returned as the same type) by :func:`data.lowlight.simulate_low_light`
    with its default ranges, or by the camera model ``camera`` (``AUG.lowlight_model=camera``,
    data/lowlight_model.py); the boxes stay valid (same size, same geometry). The decision and
    the simulation draw from :func:`lowlight_rng`, never from ``rng``; ``prob <= 0`` draws
    nothing."""
    if prob <= 0:
        return img
    child = lowlight_rng(rng)
    if child.random() >= prob:
        return img
    arr = np.ascontiguousarray(np.asarray(img))
    dark = simulate_low_light(arr, child) if camera is None else camera_low_light(arr, camera,
                                                                                  child)
    return Image.fromarray(dark) if isinstance(img, Image.Image) else dark


# ---------------------------------------------------------------------------------------------
# step 1: colour distortion


def _random_enhance(img: Image.Image, enhancer, prob: float, delta: float,
                    rng: np.random.Generator) -> Image.Image:
    """Brightness / contrast / saturation: with ``prob``, a PIL enhance of factor 1+U(-d, d)."""
    if rng.random() < prob:
        factor = _uniform(rng, -delta, delta) + 1.0
        img = enhancer(img).enhance(factor)
    return img


def random_hue(img: Image.Image, aug, rng: np.random.Generator) -> Image.Image:
    """Reference ``random_hue``: add U(-hue_delta, hue_delta) to the PIL-HSV H channel (0-255).

    Quirk of the reference, kept: the float sum is stored back into the uint8 H channel,
    i.e. truncated towards zero and wrapped modulo 256 (-3.7 -> 253, 257.2 -> 1).
    """
    if rng.random() < aug.hue_prob:
        delta = _uniform(rng, -aug.hue_delta, aug.hue_delta)
        hsv = np.array(img.convert("HSV"))
        shifted = np.trunc(hsv[:, :, 0].astype(np.float64) + delta).astype(np.int64)
        hsv[:, :, 0] = np.mod(shifted, 256).astype(np.uint8)
        img = Image.frombytes("HSV", img.size, np.ascontiguousarray(hsv).tobytes()).convert("RGB")
    return img


def distort_image(img: Image.Image, aug, rng: np.random.Generator) -> Image.Image:
    """Reference ``distort_image`` (step 1).

    With probability 1/2 the order is brightness, contrast, saturation, hue; otherwise
    brightness, saturation, hue, contrast. Each op fires with its own probability.
    """
    def brightness(im):
        return _random_enhance(im, ImageEnhance.Brightness, aug.brightness_prob,
                               aug.brightness_delta, rng)

    def contrast(im):
        return _random_enhance(im, ImageEnhance.Contrast, aug.contrast_prob,
                               aug.contrast_delta, rng)

    def saturation(im):
        return _random_enhance(im, ImageEnhance.Color, aug.saturation_prob,
                               aug.saturation_delta, rng)

    def hue(im):
        return random_hue(im, aug, rng)

    order = (brightness, contrast, saturation, hue) if rng.random() > 0.5 else \
        (brightness, saturation, hue, contrast)
    for op in order:
        img = op(img)
    return img


# ---------------------------------------------------------------------------------------------
# step 2: expand (disabled in the reference; kept behind AUG.apply_expand)


def _emit_and_project(boxes: np.ndarray, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference ``meet_emit_constraint`` + ``project_bbox``: boxes whose centre lies in
    ``window`` (inclusive), projected into its frame, clipped to [0, 1], area > 0.

    Returns the projected boxes ``[m, 4]`` and the boolean keep mask ``[n]``.
    """
    wx1, wy1, wx2, wy2 = window
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    keep = (cx >= wx1) & (cx <= wx2) & (cy >= wy1) & (cy <= wy2)
    keep &= ~((boxes[:, 0] >= wx2) | (boxes[:, 2] <= wx1) |
              (boxes[:, 1] >= wy2) | (boxes[:, 3] <= wy1))
    scale = np.array([wx2 - wx1, wy2 - wy1, wx2 - wx1, wy2 - wy1])
    proj = np.clip((boxes - np.array([wx1, wy1, wx1, wy1])) / scale, 0.0, 1.0)
    keep &= (proj[:, 2] > proj[:, 0]) & (proj[:, 3] > proj[:, 1])
    return proj[keep], keep


def expand_image(img: Image.Image, boxes: np.ndarray, labels: np.ndarray, aug,
                 rng: np.random.Generator):
    """Reference ``expand_image`` (step 2, SSD zoom-out; only with ``AUG.apply_expand``).

    With ``expand_prob``, paste the image at a random offset on a canvas up to
    ``expand_max_ratio`` times larger, filled with ``img_mean`` written into the RGB array (the
    same BGR-into-RGB quirk as the data-anchor-sampling pad).
    """
    if rng.random() >= aug.expand_prob or aug.expand_max_ratio - 1 < 0.01:
        return img, boxes, labels
    w, h = img.size
    ratio = _uniform(rng, 1.0, aug.expand_max_ratio)
    new_h, new_w = int(h * ratio), int(w * ratio)
    h_off = int(np.floor(_uniform(rng, 0, new_h - h)))
    w_off = int(np.floor(_uniform(rng, 0, new_w - w)))
    canvas = np.empty((new_h, new_w, 3), dtype=np.uint8)
    canvas[...] = np.asarray(aug.img_mean, dtype=np.float64).astype(np.uint8)
    canvas = Image.fromarray(canvas)
    canvas.paste(img, (w_off, h_off))
    window = np.array([-w_off / w, -h_off / h, (new_w - w_off) / w, (new_h - h_off) / h])
    boxes, keep = _emit_and_project(boxes, window)
    return canvas, boxes, labels[keep]


# ---------------------------------------------------------------------------------------------
# step 3a: data-anchor-sampling (PyramidBox)


def _das_ratio(boxes_px: np.ndarray, height: int, width: int,
               rng: np.random.Generator) -> tuple[int, float]:
    """Pick a face and the resize ratio that maps it onto a random smaller-or-near anchor."""
    face = int(rng.integers(len(boxes_px)))
    x1, y1, x2, y2 = boxes_px[face]
    side = np.sqrt((x2 - x1 + 1) * (y2 - y1 + 1))
    nearest = int(np.argmin(np.abs(DAS_ANCHORS - side)))      # ties go to the smaller anchor
    target = DAS_ANCHORS[int(rng.integers(min(nearest + 1, 5) + 1))]
    ratio = float(target / side * 2.0 ** _uniform(rng, -1.0, 1.0))
    if int(height * ratio * width * ratio) > DAS_MAX_SIDE * DAS_MAX_SIDE:
        ratio = (DAS_MAX_SIDE * DAS_MAX_SIDE / (height * width)) ** 0.5
    return face, ratio


def _cv2_rescale(img: np.ndarray, ratio: float, interpolation: int) -> np.ndarray:
    """``cv2.resize(img, None, fx=ratio, fy=ratio)``; a 1-px floor guards degenerate boxes."""
    h, w = img.shape[:2]
    if round(w * ratio) >= 1 and round(h * ratio) >= 1:
        return cv2.resize(img, None, fx=ratio, fy=ratio, interpolation=interpolation)
    size = (max(1, round(w * ratio)), max(1, round(h * ratio)))
    return cv2.resize(img, size, interpolation=interpolation)


def _das_windows(face_box: np.ndarray, height: int, width: int, win_w: int, win_h: int,
                 rng: np.random.Generator) -> np.ndarray:
    """``DAS_TRIALS`` integer windows ``[x1, y1, x2, y2]``.

    When the window is smaller than the image, offsets are sampled so that the chosen face lies
    inside it (or, for a face larger than the window, the window inside the face); otherwise
    they range over ``[size - window, 0]`` and may be negative.
    """
    u = rng.random((DAS_TRIALS, 2))
    if win_w < width or win_h < height:
        xmin, ymin = face_box[0], face_box[1]
        bw = face_box[2] - face_box[0] + 1
        bh = face_box[3] - face_box[1] + 1
        lo_x, hi_x = (xmin + bw - win_w, xmin) if bw <= win_w else (xmin, xmin + bw - win_w)
        lo_y, hi_y = (ymin + bh - win_h, ymin) if bh <= win_h else (ymin, ymin + bh - win_h)
    else:
        lo_x, hi_x, lo_y, hi_y = width - win_w, 0, height - win_h, 0
    w_off = np.floor(lo_x + (hi_x - lo_x) * u[:, 0])
    h_off = np.floor(lo_y + (hi_y - lo_y) * u[:, 1])
    return np.stack([w_off, h_off, w_off + win_w, h_off + win_h], axis=1).astype(np.int64)


def _das_valid(windows: np.ndarray, boxes_px: np.ndarray) -> np.ndarray:
    """[T] bool: some face lies fully inside the window or has IoU > 0.7 with it."""
    w = windows[:, None, :].astype(np.float64)                 # [T, 1, 4]
    b = boxes_px[None, :, :]                                   # [1, n, 4]
    inside = ((w[..., 0] <= b[..., 0]) & (w[..., 1] <= b[..., 1]) &
              (w[..., 2] >= b[..., 2]) & (w[..., 3] >= b[..., 3]))          # [T, n]
    iw = np.clip(np.minimum(w[..., 2], b[..., 2]) - np.maximum(w[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(w[..., 3], b[..., 3]) - np.maximum(w[..., 1], b[..., 1]), 0, None)
    inter = iw * ih                                                         # [T, n]
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    area_w = (w[..., 2] - w[..., 0]) * (w[..., 3] - w[..., 1])
    iou = inter / (area_b + area_w - inter)
    return inside.any(axis=1) | (iou > DAS_IOU_THRESH).any(axis=1)


def _crop_with_pad(img: np.ndarray, window: np.ndarray, pad_value) -> np.ndarray:
    """The window of ``img``; negative offsets are padded with ``pad_value``, the part past the
    right / bottom edge is truncated (so the result may be smaller than the window).

    Equivalent to the reference's pad-the-whole-image-then-slice, without the full-size copy.
    """
    height, width = img.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in window)
    out_w, out_h = min(x1, width) - x0, min(y1, height) - y0
    if x0 >= 0 and y0 >= 0:
        return img[y0:y0 + out_h, x0:x0 + out_w].copy()
    out = np.empty((out_h, out_w, 3), dtype=img.dtype)
    out[...] = pad_value
    sx, sy = max(x0, 0), max(y0, 0)
    out[sy - y0:, sx - x0:] = img[sy:y0 + out_h, sx:x0 + out_w]
    return out


def _min_face_mask(boxes_px: np.ndarray, aug) -> np.ndarray:
    """Reference filter of the data-anchor-sampling branch: keep area > min_face_size^2 px^2."""
    if not aug.filter_min_face:
        return np.ones(len(boxes_px), dtype=bool)
    area = (boxes_px[:, 2] - boxes_px[:, 0]) * (boxes_px[:, 3] - boxes_px[:, 1])
    return area > aug.min_face_size * aug.min_face_size


def data_anchor_sampling(img: np.ndarray, boxes: np.ndarray, labels: np.ndarray, aug,
                         rng: np.random.Generator):
    """Reference ``anchor_crop_image_sampling`` (step 3, PyramidBox data-anchor-sampling).

    ``img`` is an RGB uint8 array, ``boxes`` normalised ``[n >= 1, 4]``. Rescales the image so a
    random face matches a random anchor of at most one size above its nearest one, then crops a
    ``resize_width x resize_height`` window. Returns ``(uint8 array, boxes, labels)``, boxes
    normalised by the returned crop's size (not clipped: a kept face's centre is inside, its
    extent may not be, as in the reference).
    """
    height, width = img.shape[:2]
    boxes_px = boxes * np.array([width, height, width, height], dtype=np.float64)
    face, ratio = _das_ratio(boxes_px, height, width, rng)
    interpolation = CV2_INTERPOLATIONS[int(rng.integers(len(CV2_INTERPOLATIONS)))]
    img = _cv2_rescale(img, ratio, interpolation)
    boxes_px = boxes_px * ratio
    height, width = img.shape[:2]

    windows = _das_windows(boxes_px[face], height, width, int(aug.resize_width),
                           int(aug.resize_height), rng)
    valid = windows[_das_valid(windows, boxes_px)]
    # Annotations outside the image could make a window miss the image entirely: not a crop.
    valid = valid[(valid[:, 0] < width) & (valid[:, 1] < height) &
                  (valid[:, 2] > 0) & (valid[:, 3] > 0)]
    if len(valid) == 0:                       # no valid window: the whole rescaled image
        keep = _min_face_mask(boxes_px, aug)
        scale = np.array([width, height, width, height], dtype=np.float64)
        return img, boxes_px[keep] / scale, labels[keep]

    window = valid[int(rng.integers(len(valid)))]
    cx = (boxes_px[:, 0] + boxes_px[:, 2]) / 2
    cy = (boxes_px[:, 1] + boxes_px[:, 3]) / 2
    keep = (window[0] < cx) & (window[1] < cy) & (window[2] > cx) & (window[3] > cy)
    kept = boxes_px[keep] - np.array([window[0], window[1], window[0], window[1]])
    labels = labels[keep]
    # Quirk of the reference, kept: the BGR mean (104, 117, 123) is written into the RGB
    # array, so the pad colour is R=104, G=117, B=123.
    crop = _crop_with_pad(img, window, np.asarray(aug.img_mean, dtype=np.float64).astype(np.uint8))
    mask = _min_face_mask(kept, aug)
    crop_h, crop_w = crop.shape[:2]
    scale = np.array([crop_w, crop_h, crop_w, crop_h], dtype=np.float64)
    return crop, kept[mask] / scale, labels[mask]


# ---------------------------------------------------------------------------------------------
# step 3b: SSD-style square crop


def _generate_samples(sampler: Sampler, width: int, height: int,
                      rng: np.random.Generator) -> np.ndarray:
    """Reference ``generate_sample`` for all ``max_trial`` trials at once: ``[T, 4]`` normalised."""
    t = sampler.max_trial
    scale = _uniform(rng, sampler.min_scale, sampler.max_scale, t)
    aspect = _uniform(rng, sampler.min_aspect_ratio, sampler.max_aspect_ratio, t)
    aspect = np.minimum(np.maximum(aspect, scale ** 2), 1.0 / scale ** 2)
    bw = scale * np.sqrt(aspect)
    bh = scale / np.sqrt(aspect)
    if sampler.use_square:                    # square in pixels: shrink the longer side
        if height < width:
            bw = bw * height / width
        else:
            bh = bh * width / height
    xmin = rng.random(t) * (1.0 - bw)
    ymin = rng.random(t) * (1.0 - bh)
    return np.stack([xmin, ymin, xmin + bw, ymin + bh], axis=1)


def _object_coverage_ok(samples: np.ndarray, boxes: np.ndarray, min_coverage: float) -> np.ndarray:
    """[T] bool: some face has (intersection / face area) >= ``min_coverage`` with the sample."""
    s = samples[:, None, :]                                    # [T, 1, 4]
    b = boxes[None, :, :]                                      # [1, n, 4]
    iw = np.minimum(s[..., 2], b[..., 2]) - np.maximum(s[..., 0], b[..., 0])
    ih = np.minimum(s[..., 3], b[..., 3]) - np.maximum(s[..., 1], b[..., 1])
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)        # [T, n]
    area = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        coverage = np.where(area > 0, inter / area, 0.0)
    return (coverage >= min_coverage).any(axis=1)


def ssd_square_crop(img: np.ndarray, boxes: np.ndarray, labels: np.ndarray, aug,
                    rng: np.random.Generator):
    """Reference ``generate_batch_samples`` + ``crop_image`` (step 3, SSD branch).

    Each sampler of :data:`SSD_SAMPLERS` contributes its first successful trial; one of the
    found crops is chosen at random, clipped and cut (integer pixel bounds); faces whose centre is
    inside are projected and clipped, and those with ``(w * resize_width) * (h * resize_height)
    < min_face_size^2`` are dropped. With no crop found, the image and boxes are unchanged.
    """
    height, width = img.shape[:2]
    found = []
    for sampler in SSD_SAMPLERS:
        samples = _generate_samples(sampler, width, height, rng)
        ok = np.flatnonzero(_object_coverage_ok(samples, boxes, sampler.min_object_coverage))
        found.extend(samples[ok[:sampler.max_sample]])
    if not found:
        return img, boxes, labels
    sample = np.clip(found[int(rng.integers(len(found)))], 0.0, 1.0)
    x1, x2 = int(sample[0] * width), int(sample[2] * width)
    y1, y2 = int(sample[1] * height), int(sample[3] * height)
    crop = img[y1:y2, x1:x2].copy()
    proj, keep = _emit_and_project(boxes, sample)
    labels = labels[keep]
    # The reference's resize_val is resize_width for both sides; equal with the 640x640 default.
    real_area = ((proj[:, 2] - proj[:, 0]) * aug.resize_width) * \
                ((proj[:, 3] - proj[:, 1]) * aug.resize_height)
    big = ~(real_area < aug.min_face_size * aug.min_face_size)
    return crop, proj[big], labels[big]


# ---------------------------------------------------------------------------------------------
# steps 4-6: resize, flip, normalise


def random_resize(img: Image.Image, aug, rng: np.random.Generator) -> Image.Image:
    """Reference step 4: resize to ``resize_width x resize_height`` with a random PIL filter
    among bilinear, Hamming, nearest, bicubic and Lanczos."""
    resample = PIL_FILTERS[int(rng.integers(len(PIL_FILTERS)))]
    return img.resize((int(aug.resize_width), int(aug.resize_height)), resample=resample)


def random_flip(img: np.ndarray, boxes: np.ndarray, rng: np.random.Generator):
    """Reference step 5: horizontal flip with p = 0.5; x1' = 1 - x2, x2' = 1 - x1."""
    if rng.random() < 0.5:
        img = img[:, ::-1]
        boxes = boxes.copy()
        boxes[:, [0, 2]] = 1.0 - boxes[:, [2, 0]]
    return img, boxes


def normalize_image(rgb: np.ndarray, mean_bgr) -> np.ndarray:
    """Reference step 6: the detector's input convention (RGB order, the mean subtracted).

    HWC RGB (uint8 or float) -> float32 CHW RGB with channel 0 = R - mean_bgr[2],
    1 = G - mean_bgr[1], 2 = B - mean_bgr[0] (R-123, G-117, B-104 by default); not scaled.
    """
    mean_rgb = np.asarray(mean_bgr, dtype=np.float32)[::-1].reshape(3, 1, 1)
    out = np.empty((3,) + rgb.shape[:2], dtype=np.float32)
    return np.subtract(rgb.transpose(2, 0, 1), mean_rgb, out=out, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# the two pipelines


def _as_arrays(boxes, labels) -> tuple[np.ndarray, np.ndarray]:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1)
    if len(boxes) != len(labels):
        raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels")
    return boxes, labels


def train_preprocess(img: Image.Image, boxes: np.ndarray, labels: np.ndarray, aug,
                     rng: np.random.Generator, camera: CameraSpec | None = None):
    """The reference's training ``preprocess`` (steps 1-6 of the module docstring).

    Args:
        img: PIL RGB image.
        boxes: ``[n, 4]`` normalised x1, y1, x2, y2.
        labels: ``[n]``.
        aug: the ``cfg.AUG`` section.
        rng: the only source of randomness.
        camera: the camera model of step 0 (None: data/lowlight.py's).

    Returns:
        ``(image float32 [3, resize_height, resize_width], boxes float32 [m, 4], labels [m])``;
        ``m`` may be 0 (the caller then draws another image, as the reference does).
    """
    boxes, labels = _as_arrays(boxes, labels)
    img = maybe_low_light(img, float(getattr(aug, "lowlight_prob", 0.0)), rng, camera)
    if aug.apply_distort:
        img = distort_image(img, aug, rng)
    if aug.apply_expand:
        img, boxes, labels = expand_image(img, boxes, labels, aug, rng)
    if len(boxes):                            # both crops need a face (the loader guarantees one)
        arr = np.asarray(img)
        if rng.random() > aug.data_anchor_sampling_prob and aug.anchor_sampling:
            arr, boxes, labels = data_anchor_sampling(arr, boxes, labels, aug, rng)
        else:
            arr, boxes, labels = ssd_square_crop(arr, boxes, labels, aug, rng)
        img = Image.fromarray(np.ascontiguousarray(arr))
    arr = np.asarray(random_resize(img, aug, rng))
    arr, boxes = random_flip(arr, boxes, rng)
    return normalize_image(arr, aug.img_mean), boxes.astype(np.float32), labels


def val_preprocess(img: Image.Image, boxes: np.ndarray, labels: np.ndarray, aug):
    """Deterministic validation preprocessing: bilinear resize to the configured size and
    normalisation (the reference draws a random filter here too; we keep validation fixed)."""
    boxes, labels = _as_arrays(boxes, labels)
    img = img.resize((int(aug.resize_width), int(aug.resize_height)),
                     resample=Image.Resampling.BILINEAR)
    return normalize_image(np.asarray(img), aug.img_mean), boxes.astype(np.float32), labels
