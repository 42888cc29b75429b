"""Build the small demo dataset from images that ship with scikit-image and matplotlib.

The demo trains a reduced-width DSFD on the CPU in minutes, so it needs a face detection task that
is quick to learn, plus a dark "target domain" for the low-light adaptation stages. Nothing is
downloaded: every pixel comes from files inside the installed packages.

    python tools/make_demo_data.py --out demo_data [--seed 0] [--n-train 160] [--n-val 40]
                                   [--n-dark-train 100] [--n-dark-val 40]

How an image is made (:func:`compose`):

* **Background**: a random crop of a shipped picture or texture (brick, grass, gravel, moon, Hubble
  deep field, coffee, rocket, retina, immunohistochemistry, page, text, Chelsea the cat; grey ones
  tinted), sometimes blended with a second one through a smooth random mask, under a smooth
  illumination gradient, with mild colour jitter.
* **Distractors** (2 to 6, pasted first): crops of the same pictures, of the parts of the astronaut
  and Grace Hopper photographs that hold no face, and of the LFW non-face patches.
* **Faces** (1 to 5, pasted last, never covering an earlier face's box): the astronaut (skimage
  ``astronaut``), Grace Hopper (matplotlib ``grace_hopper.jpg``) and the 100 25x25 LFW faces of
  ``skimage.data.lfw_subset()``. Each is mapped by an exact affine transform (scale, position,
  optional horizontal flip; no rotation) from its face box to an integer pixel box on the canvas,
  with mild colour jitter. Face widths are log-uniform in [24, 160] px (LFW: [24, 64] px).
* Every pasted patch, face or not, is blended with the same kind of soft elliptical alpha mask
  centred on its box, so "a pasted blob" says nothing about "face". For the astronaut and Grace
  Hopper the mask is fully opaque over the whole face box and fades out in the surrounding head and
  context (hair, cap, collar, wall); the LFW patches are tight face crops with no context, so their
  mask is opaque over the middle of the face and fades to nothing at the crop's edges (the LFW
  non-faces get the same mask).
* A little Gaussian noise over the whole canvas.

The LFW faces are split by identity index: 0-79 appear only in training images (clean and dark),
80-99 only in held-out images. The astronaut and Grace Hopper appear in both (there are only two
high-resolution faces). The dark images are made from their own clean composites (not the
``WIDER_*`` ones) and darkened with :func:`data.lowlight.simulate_low_light` (its docstring
describes the model and the default ranges).

Box convention: a face box is ``x y w h`` in integer pixels, covering columns ``x .. x+w-1`` and
rows ``y .. y+h-1``. DARK FACE labels write the same box as ``x1 y1 x2 y2 = x y x+w y+h``, the
conversion the official tools apply to WIDER boxes (docs/EVALUATION.md).

Output layout under ``--out``::

    WIDER_train/images/0--Demo/0_Demo_<k>.jpg  clean labelled training images
    WIDER_val/images/0--Demo/0_Demo_<k>.jpg    clean held-out images
    wider_face_train.txt, wider_face_val.txt   list files (docs/DATASETS.md): one line per image,
                                               "./WIDER_train/images/... N x y w h 1 ...",
                                               paths relative to --out
    DarkFace/images/train/<id>.png             dark target-domain training images (labels unused
    DarkFace/label/train/<id>.txt                for training; kept to check pseudo labels)
    DarkFace/images/val/<id>.png               dark held-out evaluation images
    DarkFace/label/val/<id>.txt                their labels, DARK FACE format: N, then x1 y1 x2 y2
    DarkFace/clean/{train,val}/<id>.png        the clean originals of the dark images
    dark_val_ids.txt                           the held-out ids, one per line
    README.txt                                 seed, counts, sizes, the low-light parameters

DarkFace ids run 1 .. n_dark_train for training, then on for the held-out images. Every image has
its own random generator seeded from (seed, split, index), so the output is deterministic for a
seed, and changing one split's count leaves the other images unchanged.
"""
from __future__ import annotations

import argparse
import functools
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image

from data.lowlight import DEFAULT_PARAMS as LOW_LIGHT_PARAMS
from data.lowlight import simulate_low_light

Box = Tuple[int, int, int, int]  # x, y, w, h

# Face boxes (x, y, w, h) in the shipped photographs, chosen by eye on zoomed crops: WIDER-style,
# from the hairline (or the cap's brim) to the chin, cheek to cheek with the ears left out.
ASTRONAUT_FACE_BOX = (178, 72, 94, 106)        # skimage.data.astronaut(), 512x512: fringe to chin
GRACE_HOPPER_FACE_BOX = (180, 140, 162, 186)   # matplotlib grace_hopper.jpg, 512x600: brim to chin

# Regions (x, y, w, h) of those photographs that hold no face, used for distractor crops.
ASTRONAUT_NONFACE_REGIONS = ((0, 0, 130, 512), (310, 0, 202, 512), (0, 300, 512, 212))
GRACE_HOPPER_NONFACE_REGIONS = ((0, 0, 135, 600), (0, 430, 512, 170))

# skimage.data.lfw_subset(): 200 grey 25x25 patches, 0-99 faces and 100-199 non-faces (checked by
# eye). A few "non-faces" show an eye, a mouth or half a face: they are left out of the distractors.
LFW_FACE_IDS = tuple(range(100))
LFW_AMBIGUOUS_IDS = (114, 124, 125, 126, 130, 180)
LFW_NONFACE_IDS = tuple(i for i in range(100, 200) if i not in LFW_AMBIGUOUS_IDS)
LFW_TRAIN_FACE_IDS = LFW_FACE_IDS[:80]   # identities for training images (clean and dark)
LFW_VAL_FACE_IDS = LFW_FACE_IDS[80:]     # identities for held-out images

# Shipped skimage pictures used for backgrounds and distractor crops (no human faces in them;
# "camera", "coins" and "astronaut" are left out for that reason).
TEXTURE_NAMES = ("brick", "grass", "gravel", "moon", "hubble_deep_field", "coffee", "rocket",
                 "retina", "immunohistochemistry", "page", "text", "chelsea")

FACE_SIZE = (24, 160)        # face box width, px, log-uniform (astronaut, Grace Hopper)
LFW_FACE_SIZE = (24, 64)     # LFW patches are 25 px: upsampling them further only blurs
WIDER_SIZE = ((448, 640), (352, 640))   # clean images: width range, height range
DARK_SIZE = (480, 320)                  # dark images: DARK FACE's 3:2 landscape (1080x720), reduced
EVENT = "0--Demo"
SPLITS = {"train": 0, "val": 1, "dark_train": 2, "dark_val": 3}   # seeds each split's images
README_MARKER = "HLA-Face demo dataset"
PNG_LEVEL = 1   # fast zlib level: PNG encoding is most of the run time, the size barely changes


@dataclass(frozen=True)
class Assets:
    """The shipped images, loaded once; float32 in [0, 255]."""
    astronaut: np.ndarray          # [512, 512, 3]
    grace_hopper: np.ndarray       # [600, 512, 3]
    lfw: np.ndarray                # [200, 25, 25]
    textures: Tuple[np.ndarray, ...]   # [H, W, 3] or [H, W]


@dataclass(frozen=True)
class FaceRecord:
    """One pasted face: its box on the canvas and where it came from."""
    box: Box
    source: str        # "astronaut", "grace_hopper" or "lfw"
    lfw_index: int     # index into lfw_subset() for "lfw", else -1
    flip: bool


@functools.lru_cache(maxsize=1)
def load_assets() -> Assets:
    """Read the images that ship with scikit-image and matplotlib (no network)."""
    from matplotlib import cbook
    from skimage import data

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        grace = np.asarray(Image.open(f).convert("RGB"))
    textures = tuple(np.asarray(getattr(data, name)(), np.float32) for name in TEXTURE_NAMES)
    return Assets(astronaut=data.astronaut().astype(np.float32),
                  grace_hopper=grace.astype(np.float32),
                  lfw=(data.lfw_subset() * 255.0).astype(np.float32),
                  textures=textures)


def face_source(assets: Assets, source: str, lfw_index: int = -1) -> Tuple[np.ndarray, Box]:
    """The source image of a face and its face box (x, y, w, h) in that image."""
    if source == "astronaut":
        return assets.astronaut, ASTRONAUT_FACE_BOX
    if source == "grace_hopper":
        return assets.grace_hopper, GRACE_HOPPER_FACE_BOX
    return np.repeat(assets.lfw[lfw_index][..., None], 3, axis=2), (0, 0, 25, 25)


# ---------------------------------------------------------------------------------------------
# Colour helpers


def _to_rgb(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Grey images get a random mild tint; colour images are returned as they are."""
    if img.ndim == 3:
        return img
    tint = rng.uniform(0.75, 1.15, size=3).astype(np.float32)
    return img[..., None] * tint


def _skin_tone(rng: np.random.Generator) -> np.ndarray:
    """A multiplier that turns a grey LFW patch into a plausible face colour (or leaves it grey)."""
    if rng.random() < 0.25:
        return np.ones(3, np.float32)
    return np.array([1.0, rng.uniform(0.72, 0.9), rng.uniform(0.55, 0.8)], np.float32) \
        * rng.uniform(0.9, 1.15)


def _colour_jitter(patch: np.ndarray, rng: np.random.Generator,
                   strength: float = 1.0) -> np.ndarray:
    """Brightness, contrast and saturation changes (all mild) of an [h, w, 3] float32 patch.

    Saturation s pulls each pixel towards its grey (x -> g + s (x - g)), contrast c towards the
    patch mean m, brightness b scales: out = b (c S x + (1 - c) m). That is one affine colour map,
    applied in a single cv2.transform pass.
    """
    brightness, contrast, saturation = (float(v) for v in 1.0 + strength
                                        * rng.uniform(-1, 1, size=3) * np.array([0.2, 0.2, 0.3]))
    mean = float(patch.mean())              # the saturation map keeps the mean
    sat = saturation * np.eye(3) + (1.0 - saturation) / 3.0                       # [3, 3]
    affine = np.hstack([brightness * contrast * sat,
                        np.full((3, 1), brightness * (1.0 - contrast) * mean)])   # [3, 4]
    return cv2.transform(np.ascontiguousarray(patch, dtype=np.float32), affine)


# ---------------------------------------------------------------------------------------------
# Pasting with an exact affine map and a soft elliptical mask


def _affine(src_box, dst_box: Box, flip: bool) -> np.ndarray:
    """2x3 matrix for cv2.warpAffine mapping src_box's pixel edges exactly onto dst_box's.

    In edge coordinates (pixel i spans [i, i+1]) the map is e' = X + (e - bx) * s (flipped:
    X + (bx + bw - e) * s); OpenCV works on pixel centres, c = e - 0.5.
    """
    bx, by, bw, bh = src_box
    X, Y, W, H = dst_box
    sx, sy = W / bw, H / bh
    if flip:
        a, b = -sx, X + (bx + bw) * sx
    else:
        a, b = sx, X - bx * sx
    c, d = sy, Y - by * sy
    return np.array([[a, 0.0, a * 0.5 + b - 0.5], [0.0, c, c * 0.5 + d - 0.5]], np.float64)


def _ellipse_extent(dst_box: Box, k: Tuple[float, float]) -> Tuple[float, float, float, float]:
    """Centre and semi-axes (cx, cy, ax, ay) of the mask ellipse around a box, in edge coords."""
    X, Y, W, H = dst_box
    return X + W / 2.0, Y + H / 2.0, k[0] * W / 2.0, k[1] * H / 2.0


def _region(dst_box: Box, k, canvas_hw) -> Tuple[int, int, int, int]:
    """The canvas window (x0, y0, x1, y1) that the mask ellipse touches, clipped to the canvas."""
    cx, cy, ax, ay = _ellipse_extent(dst_box, k)
    hgt, wid = canvas_hw
    return (max(0, int(np.floor(cx - ax))), max(0, int(np.floor(cy - ay))),
            min(wid, int(np.ceil(cx + ax))), min(hgt, int(np.ceil(cy + ay))))


def _crop_under_mask(src: np.ndarray, src_box, k: Tuple[float, float]):
    """Only the part of ``src`` under the mask ellipse matters: crop it (saves resizing whole
    photographs), with a 2 px margin for interpolation. Returns the crop and the box in it."""
    bx, by, bw, bh = (float(v) for v in src_box)
    cx, cy, ax, ay = bx + bw / 2.0, by + bh / 2.0, k[0] * bw / 2.0, k[1] * bh / 2.0
    x0, y0 = max(0, int(np.floor(cx - ax)) - 2), max(0, int(np.floor(cy - ay)) - 2)
    x1 = min(src.shape[1], int(np.ceil(cx + ax)) + 2)
    y1 = min(src.shape[0], int(np.ceil(cy + ay)) + 2)
    return src[y0:y1, x0:x1], (bx - x0, by - y0, bw, bh)


def paste(canvas: np.ndarray, src: np.ndarray, src_box, dst_box: Box, flip: bool,
          k: Tuple[float, float], r0: Optional[float], rng: np.random.Generator,
          tone: Optional[np.ndarray] = None) -> None:
    """Blend ``src`` onto ``canvas`` (in place) so that ``src_box`` lands exactly on ``dst_box``.

    The alpha mask is an ellipse centred on dst_box with semi-axes ``k * (w/2, h/2)``: 1 for
    normalised radius r <= r0, falling linearly to 0 at r = 1. ``r0=None`` puts r0 at the box
    corners, so the whole box is opaque (needs k > sqrt(2) per axis). Outside the source image the
    alpha is 0.
    """
    src, src_box = _crop_under_mask(src, src_box, k)
    scale = min(dst_box[2] / src_box[2], dst_box[3] / src_box[3])
    if scale < 0.7:   # area-average first against aliasing; the affine then does the exact rest
        new_h, new_w = (max(1, round(n * scale)) for n in src.shape[:2])
        fx, fy = new_w / src.shape[1], new_h / src.shape[0]       # the exact factors per axis
        src = cv2.resize(src, (new_w, new_h), interpolation=cv2.INTER_AREA)
        src_box = (src_box[0] * fx, src_box[1] * fy, src_box[2] * fx, src_box[3] * fy)
        scale = min(dst_box[2] / src_box[2], dst_box[3] / src_box[3])
    x0, y0, x1, y1 = _region(dst_box, k, canvas.shape[:2])
    if x1 <= x0 or y1 <= y0:
        return
    M = _affine(src_box, dst_box, flip)
    M[:, 2] -= (x0, y0)                      # into the window's coordinates
    flags = cv2.INTER_CUBIC if scale > 1.2 else cv2.INTER_LINEAR
    size = (x1 - x0, y1 - y0)
    warped = cv2.warpAffine(src, M, size, flags=flags, borderMode=cv2.BORDER_REPLICATE)
    inside = cv2.warpAffine(np.ones(src.shape[:2], np.float32), M, size, flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if warped.ndim == 2:
        warped = warped[..., None]
    if tone is not None:
        warped = warped * tone
    warped = _colour_jitter(warped, rng)

    cx, cy, ax, ay = _ellipse_extent(dst_box, k)
    xs = (np.arange(x0, x1) + 0.5 - cx) / ax                      # pixel centres, [w]
    ys = (np.arange(y0, y1) + 0.5 - cy) / ay                      # [h]
    r = np.sqrt(xs[None, :] ** 2 + ys[:, None] ** 2)              # [h, w]
    if r0 is None:
        r0 = float(np.hypot(1.0 / k[0], 1.0 / k[1]))
    alpha = np.clip((1.0 - r) / (1.0 - r0), 0.0, 1.0) * np.clip(inside, 0.0, 1.0)
    alpha = alpha[..., None].astype(np.float32)                   # [h, w, 1]
    window = canvas[y0:y1, x0:x1]
    window += alpha * (np.clip(warped, 0, 255) - window)


def _context_k(rng: np.random.Generator) -> Tuple[float, float]:
    """Mask half-axes, in box half-sizes, for patches that carry context around the box."""
    return float(rng.uniform(1.8, 2.2)), float(rng.uniform(1.8, 2.2))


def _tight_k(rng: np.random.Generator) -> Tuple[float, float]:
    """Mask half-axes for LFW patches (the crop is the box: fade out at its edges)."""
    return float(rng.uniform(0.95, 1.05)), float(rng.uniform(0.95, 1.05))


TIGHT_R0 = 0.6   # LFW masks are opaque for r <= 0.6 (the middle of the face), 0 at the crop's edges


# ---------------------------------------------------------------------------------------------
# Background and distractors


def _random_crop(img: np.ndarray, rng: np.random.Generator, aspect: float,
                 frac: Tuple[float, float]) -> np.ndarray:
    """A random crop of ``img`` with width/height ``aspect`` and a size fraction in ``frac``."""
    hgt, wid = img.shape[:2]
    h = min(hgt, wid / aspect) * rng.uniform(*frac)
    w = h * aspect
    h, w = max(2, int(h)), max(2, int(w))
    y = int(rng.integers(0, hgt - h + 1))
    x = int(rng.integers(0, wid - w + 1))
    return img[y:y + h, x:x + w]


def _smooth_field(rng: np.random.Generator, hgt: int, wid: int, lo: float, hi: float) -> np.ndarray:
    """A smooth random field in [lo, hi], [hgt, wid, 1]: upsampled coarse noise."""
    coarse = rng.random((3, 4)).astype(np.float32)
    field = cv2.resize(coarse, (wid, hgt), interpolation=cv2.INTER_CUBIC)
    field = (field - field.min()) / max(1e-6, float(field.max() - field.min()))
    return (lo + (hi - lo) * field)[..., None]


def _texture(assets: Assets, rng: np.random.Generator, hgt: int, wid: int) -> np.ndarray:
    img = assets.textures[int(rng.integers(len(assets.textures)))]
    crop = _random_crop(img, rng, wid / hgt, (0.3, 1.0))
    crop = cv2.resize(crop, (wid, hgt), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return _to_rgb(crop, rng)


def background(assets: Assets, rng: np.random.Generator, hgt: int, wid: int) -> np.ndarray:
    """A textured float32 [hgt, wid, 3] background."""
    bg = _texture(assets, rng, hgt, wid)
    if rng.random() < 0.5:
        other = _texture(assets, rng, hgt, wid)
        mix = _smooth_field(rng, hgt, wid, 0.0, 1.0)
        bg = bg * mix + other * (1.0 - mix)
    bg = bg * _smooth_field(rng, hgt, wid, rng.uniform(0.5, 0.9), rng.uniform(1.0, 1.25))
    return np.ascontiguousarray(_colour_jitter(bg, rng, 0.5), dtype=np.float32)


def _paste_distractor(canvas: np.ndarray, assets: Assets, rng: np.random.Generator) -> None:
    """A non-face patch, sized and masked like a face."""
    hgt, wid = canvas.shape[:2]
    w = int(np.exp(rng.uniform(np.log(FACE_SIZE[0]), np.log(FACE_SIZE[1]))))
    h = max(8, int(w * rng.uniform(0.7, 1.4)))
    dst = (int(rng.integers(-w // 2, wid - w // 2)), int(rng.integers(-h // 2, hgt - h // 2)), w, h)
    flip = bool(rng.random() < 0.5)
    if rng.random() < 0.25:          # an LFW non-face, tinted like the LFW faces
        idx = LFW_NONFACE_IDS[int(rng.integers(len(LFW_NONFACE_IDS)))]
        dst = (dst[0], dst[1], min(w, LFW_FACE_SIZE[1]), min(w, LFW_FACE_SIZE[1]))
        paste(canvas, assets.lfw[idx], (0, 0, 25, 25), dst, flip, _tight_k(rng), TIGHT_R0, rng,
              tone=_skin_tone(rng))
        return
    pick = rng.random()
    if pick < 0.15:
        src, regions = assets.astronaut, ASTRONAUT_NONFACE_REGIONS
    elif pick < 0.3:
        src, regions = assets.grace_hopper, GRACE_HOPPER_NONFACE_REGIONS
    else:
        src = assets.textures[int(rng.integers(len(assets.textures)))]
        regions = ((0, 0, src.shape[1], src.shape[0]),)
    rx, ry, rw, rh = regions[int(rng.integers(len(regions)))]
    # The pseudo "box" is the middle half of a crop inside the region, so the mask's context
    # (k ~ 2 box half-sizes) stays inside the face-free region, as it does for real faces.
    side = rng.uniform(0.2, 1.0) * min(rw, rh * w / h)
    bw, bh = side / 2.0, side / 2.0 * h / w
    bx = rx + bw / 2.0 + rng.uniform(0, max(0.0, rw - 2 * bw))
    by = ry + bh / 2.0 + rng.uniform(0, max(0.0, rh - 2 * bh))
    crop = _to_rgb(src[ry:ry + rh, rx:rx + rw], rng)
    paste(canvas, crop, (bx - rx, by - ry, bw, bh), dst, flip, _context_k(rng), None, rng)


# ---------------------------------------------------------------------------------------------
# Faces and whole images


def _overlaps(a: Tuple[int, int, int, int], b: Box, margin: int = 2) -> bool:
    """Does window a = (x0, y0, x1, y1) intersect box b = (x, y, w, h) grown by ``margin``?"""
    return not (a[2] <= b[0] - margin or a[0] >= b[0] + b[2] + margin
                or a[3] <= b[1] - margin or a[1] >= b[1] + b[3] + margin)


def _place_face(canvas: np.ndarray, assets: Assets, rng: np.random.Generator,
                faces: List[FaceRecord], lfw_ids: Sequence[int]) -> None:
    """Paste one face where its mask covers no earlier face box (up to 30 tries, else skip)."""
    hgt, wid = canvas.shape[:2]
    pick = rng.random()
    source = "astronaut" if pick < 0.3 else "grace_hopper" if pick < 0.6 else "lfw"
    lfw_index = int(lfw_ids[int(rng.integers(len(lfw_ids)))]) if source == "lfw" else -1
    src, src_box = face_source(assets, source, lfw_index)
    lo, hi = LFW_FACE_SIZE if source == "lfw" else FACE_SIZE
    hi = min(hi, int(0.45 * hgt * src_box[2] / src_box[3]))
    w = int(round(np.exp(rng.uniform(np.log(lo), np.log(hi)))))
    h = int(round(w * src_box[3] / src_box[2]))
    tight = source == "lfw"
    k = _tight_k(rng) if tight else _context_k(rng)
    flip = bool(rng.random() < 0.5)
    for _ in range(30):
        box = (int(rng.integers(0, wid - w + 1)), int(rng.integers(0, hgt - h + 1)), w, h)
        window = _region(box, k, (hgt, wid))
        if not any(_overlaps(window, f.box) for f in faces):
            break
    else:
        return
    tone = _skin_tone(rng) if tight else None
    paste(canvas, src, src_box, box, flip, k, TIGHT_R0 if tight else None, rng, tone=tone)
    faces.append(FaceRecord(box=box, source=source, lfw_index=lfw_index, flip=flip))


def compose(assets: Assets, rng: np.random.Generator, size: Tuple[int, int],
            lfw_ids: Sequence[int]) -> Tuple[np.ndarray, List[FaceRecord]]:
    """One clean composite: (uint8 [h, w, 3] RGB image, its faces). ``size`` is (width, height)."""
    wid, hgt = size
    canvas = background(assets, rng, hgt, wid)
    for _ in range(int(rng.integers(2, 7))):
        _paste_distractor(canvas, assets, rng)
    faces: List[FaceRecord] = []
    for _ in range(int(rng.integers(1, 6))):
        _place_face(canvas, assets, rng, faces, lfw_ids)
    if not faces:   # the first face always fits (nothing to overlap), but be explicit
        raise RuntimeError("no face could be placed")
    canvas += float(rng.uniform(0.0, 3.0)) * rng.standard_normal(canvas.shape, dtype=np.float32)
    return np.round(np.clip(canvas, 0, 255)).astype(np.uint8), faces


def image_rng(seed: int, split: str, index: int, stream: int = 0) -> np.random.Generator:
    """The generator of image ``index`` of ``split`` (stream 1: its low-light noise)."""
    return np.random.default_rng([seed, SPLITS[split], index, stream])


def _clean_size(rng: np.random.Generator) -> Tuple[int, int]:
    (wlo, whi), (hlo, hhi) = WIDER_SIZE
    return int(rng.integers(wlo, whi + 1)), int(rng.integers(hlo, hhi + 1))


# ---------------------------------------------------------------------------------------------
# Writing


def _list_line(path: str, faces: Sequence[FaceRecord]) -> str:
    boxes = " ".join(f"{x} {y} {w} {h} 1" for x, y, w, h in (f.box for f in faces))
    return f"{path} {len(faces)} {boxes}"


def darkface_label(faces: Sequence[FaceRecord]) -> str:
    """DARK FACE label text: the count, then ``x1 y1 x2 y2`` with x2 = x + w, y2 = y + h."""
    rows = [f"{x} {y} {x + w} {y + h}" for x, y, w, h in (f.box for f in faces)]
    return "\n".join([str(len(faces))] + rows) + "\n"


def write_wider_split(out: Path, assets: Assets, seed: int, split: str, n: int) -> int:
    """WIDER_<split>/images/... and wider_face_<split>.txt; returns the number of faces."""
    lfw_ids = LFW_TRAIN_FACE_IDS if split == "train" else LFW_VAL_FACE_IDS
    folder = out / f"WIDER_{split}" / "images" / EVENT
    folder.mkdir(parents=True, exist_ok=True)
    lines, n_faces = [], 0
    for i in range(n):
        rng = image_rng(seed, split, i)
        img, faces = compose(assets, rng, _clean_size(rng), lfw_ids)
        name = f"0_Demo_{i + 1}.jpg"
        Image.fromarray(img).save(folder / name, quality=92)
        lines.append(_list_line(f"./WIDER_{split}/images/{EVENT}/{name}", faces))
        n_faces += len(faces)
    (out / f"wider_face_{split}.txt").write_text("\n".join(lines) + "\n")
    return n_faces


def write_dark_split(out: Path, assets: Assets, seed: int, split: str, ids: Sequence[int]) -> int:
    """DarkFace/{images,label,clean}/<split>/<id>.*; returns the number of faces."""
    key = f"dark_{split}"
    lfw_ids = LFW_TRAIN_FACE_IDS if split == "train" else LFW_VAL_FACE_IDS
    dirs = {kind: out / "DarkFace" / kind / split for kind in ("images", "label", "clean")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    n_faces = 0
    for i, image_id in enumerate(ids):
        img, faces = compose(assets, image_rng(seed, key, i), DARK_SIZE, lfw_ids)
        dark = simulate_low_light(img, image_rng(seed, key, i, stream=1))
        Image.fromarray(img).save(dirs["clean"] / f"{image_id}.png", compress_level=PNG_LEVEL)
        Image.fromarray(dark).save(dirs["images"] / f"{image_id}.png", compress_level=PNG_LEVEL)
        (dirs["label"] / f"{image_id}.txt").write_text(darkface_label(faces))
        n_faces += len(faces)
    return n_faces


def _prepare_out(out: Path) -> None:
    """Refuse to write into a folder that is not empty and was not made by this tool."""
    if out.exists() and any(out.iterdir()):
        readme = out / "README.txt"
        if not (readme.is_file() and readme.read_text().startswith(README_MARKER)):
            raise SystemExit(f"--out {out} is not empty and holds no demo README.txt; "
                             "choose an empty or new folder")
        for sub in ("WIDER_train", "WIDER_val", "DarkFace"):   # drop stale images of a larger run
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def _readme(args, counts: dict) -> str:
    params = "\n".join(f"  {k} = {v}" for k, v in LOW_LIGHT_PARAMS.items())
    (wlo, whi), (hlo, hhi) = WIDER_SIZE
    return f"""{README_MARKER}, made by tools/make_demo_data.py (see its docstring for details)

seed: {args.seed}
clean train images: {args.n_train} ({counts['train']} faces), WIDER_train/, wider_face_train.txt
clean val images:   {args.n_val} ({counts['val']} faces), WIDER_val/, wider_face_val.txt
dark train images:  {args.n_dark_train} ({counts['dark_train']} faces), DarkFace/images/train/
dark val images:    {args.n_dark_val} ({counts['dark_val']} faces), DarkFace/images/val/,
                    ids in dark_val_ids.txt
clean image sizes: width {wlo}-{whi}, height {hlo}-{hhi}; dark images {DARK_SIZE[0]}x{DARK_SIZE[1]}
face widths: {FACE_SIZE[0]}-{FACE_SIZE[1]} px (LFW faces {LFW_FACE_SIZE[0]}-{LFW_FACE_SIZE[1]} px),
1-5 faces per image (fewer when a face finds no free place)

Face sources: skimage.data.astronaut() face box {ASTRONAUT_FACE_BOX}, matplotlib grace_hopper.jpg
face box {GRACE_HOPPER_FACE_BOX} (x, y, w, h), and the LFW faces of skimage.data.lfw_subset()
(ids 0-79 in training images, 80-99 in held-out images).
Boxes: list files "x y w h 1" in pixels; DARK FACE labels "x1 y1 x2 y2" with x2 = x + w, y2 = y + h.

Dark images: data/lowlight.py simulate_low_light with its defaults (gamma to linear, exposure
scaling, per-channel colour cast, Poisson-Gaussian sensor noise, gamma back, uint8):
{params}
"""


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo_data"), help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=160, help="clean training images")
    parser.add_argument("--n-val", type=int, default=40, help="clean held-out images")
    parser.add_argument("--n-dark-train", type=int, default=100,
                        help="dark target-domain training images")
    parser.add_argument("--n-dark-val", type=int, default=40, help="dark held-out images")
    args = parser.parse_args(argv)
    for name in ("n_train", "n_val", "n_dark_train", "n_dark_val"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")

    start = time.perf_counter()
    out = args.out
    _prepare_out(out)
    assets = load_assets()
    counts = {"train": write_wider_split(out, assets, args.seed, "train", args.n_train),
              "val": write_wider_split(out, assets, args.seed, "val", args.n_val)}
    train_ids = list(range(1, args.n_dark_train + 1))
    val_ids = list(range(args.n_dark_train + 1, args.n_dark_train + args.n_dark_val + 1))
    counts["dark_train"] = write_dark_split(out, assets, args.seed, "train", train_ids)
    counts["dark_val"] = write_dark_split(out, assets, args.seed, "val", val_ids)
    (out / "dark_val_ids.txt").write_text("".join(f"{i}\n" for i in val_ids))
    (out / "README.txt").write_text(_readme(args, counts))

    print(f"demo data in {out} (seed {args.seed}, {time.perf_counter() - start:.1f} s)")
    print(f"  WIDER_train: {args.n_train:4d} images, {counts['train']:4d} faces  "
          "wider_face_train.txt")
    print(f"  WIDER_val:   {args.n_val:4d} images, {counts['val']:4d} faces  wider_face_val.txt")
    print(f"  DarkFace train: {args.n_dark_train:4d} images, {counts['dark_train']:4d} faces "
          f"(ids 1-{args.n_dark_train})")
    print(f"  DarkFace val:   {args.n_dark_val:4d} images, {counts['dark_val']:4d} faces "
          "(ids in dark_val_ids.txt)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
