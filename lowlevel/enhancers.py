"""Night mode: one registry of test-time enhancers that every tool reads (``--enhance NAME``).

Every enhancer maps an HxWx3 uint8 BGR image (OpenCV's convention) to an HxWx3 uint8 BGR image
of the same size. :func:`build_enhancer` makes one from a name of :data:`ENHANCE_CHOICES`:

* ``none``: the input itself (the same array, untouched).
* ``gamma``, ``clahe``, ``lime``: the classical baselines of ``lowlevel/classic.py``
  (fixed gamma 2.2; CLAHE on L* with clip 2 on 8x8 tiles; LIME, slow: a sparse solve per image).
* ``el``: the HLA-Face illumination enhancer E(L) (``lowlevel/enhancement.py``); needs its weights
  (``--el-weights``).
* ``<brightener>_<denoiser>`` for brightener ``gamma`` or ``clahe`` and denoiser ``gauss``
  (Gaussian, sigma 1 px), ``median`` (3x3), ``bilateral`` or ``nlm`` (OpenCV's non-local means,
  slow), the last two at a strength set by the noise measured on the image
  (:func:`estimate_noise`): denoise the dark image first, then brighten it (denoising after
  the brightening, which amplifies the noise, measured worse).
* ``auto``: decides per image from its mean luma and its noise (:func:`decide`, thresholds in
  :class:`AutoRule`). Unchanged (the same array): an image at least as bright as ``pass_mean``,
  or a dim but clean one (mean at least ``clean_mean``, noise below ``noise_min``). Otherwise
  CLAHE on L* (``clahe_clip`` on ``clahe_grid`` tiles, ``dim_clahe_clip`` when the mean is
  below ``dim_mean``) after a Gaussian blur of ``blur_sigma`` (``dark_blur_sigma`` when the mean
  is below ``dark_mean``). The blur is never skipped: at the gain CLAHE gives a dark image, the
  noise that the estimate measures low (8-bit steps hide it) is still amplified. Its statistics
  cost one luma conversion, a mean and one 3x3 filter (bench/bench_night_mode.py).

Why CLAHE and a blur, not a global curve: on night copies made by the camera model
(``data/camera.py``) of photos other than the benchmark's (bench/night_mode_tuning.py), a
global gamma or log curve that lifts the mean lowers the released YuNet_n's AP (it amplifies
the noise and the 8-bit steps of the darkest levels everywhere), CLAHE's clipped local gain
helps, and removing the fine-grained noise before it helps most (docs/NIGHT.md).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from typing import Callable

import cv2
import numpy as np

from lowlevel import classic as baselines
from data.camera import luma

Enhancer = Callable[[np.ndarray], np.ndarray]

DENOISERS = ("gauss", "median", "bilateral", "nlm")
BRIGHTENERS = ("gamma", "clahe")
ENHANCE_CHOICES = ("none", "auto", "gamma", "clahe", "lime", "el",
                   *(f"{b}_{d}" for b in BRIGHTENERS for d in DENOISERS))
IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)   # sum of squares 36


@dataclass(frozen=True)
class AutoRule:
    """The thresholds of ``auto`` (luma and noise in 8-bit grey levels)."""
    pass_mean: float = 100.0       # mean luma >= this: unchanged
    noise_min: float = 0.8         # noise (flat regions) below this and ...
    clean_mean: float = 25.0       # ... a mean >= this: unchanged (a dim, clean photo)
    dark_mean: float = 8.0         # below this the blur is dark_blur_sigma
    blur_sigma: float = 1.0        # Gaussian denoising before CLAHE, px
    dark_blur_sigma: float = 1.5   # the same below dark_mean
    dim_mean: float = 20.0         # below this CLAHE clips at dim_clahe_clip
    clahe_clip: float = 2.0        # cv2 clipLimit
    dim_clahe_clip: float = 3.0
    clahe_grid: int = 8            # cv2 tileGridSize


def rule_from_config(section) -> AutoRule:
    """``auto``'s thresholds from a config section (``cfg.NIGHT``: one key per field of
    :class:`AutoRule`); the defaults there equal :class:`AutoRule`'s."""
    return AutoRule(**{f.name: type(f.default)(section[f.name]) for f in fields(AutoRule)})


@dataclass(frozen=True)
class Decision:
    """What ``auto`` does to one image (for logs, tests and docs/NIGHT.md)."""
    mean: float                    # mean luma of the input
    noise: float                   # its noise std (:func:`estimate_noise`), grey levels
    enhance: bool                  # False: the image is returned unchanged
    blur: float                    # Gaussian sigma before CLAHE, px (0 when unchanged)

    @property
    def passthrough(self) -> bool:
        return not self.enhance


def check_bgr(image: np.ndarray) -> None:
    """Raise unless ``image`` is an HxWx3 uint8 array."""
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
            and image.shape[2] == 3):
        raise ValueError(f"an enhancer takes an HxWx3 uint8 BGR image, got "
                         f"{getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}")


def estimate_noise(gray: np.ndarray) -> float:
    """Noise std (grey levels) of a uint8 luma image, measured in its flattest regions.

    Immerkaer's 3x3 kernel responds to noise (6 sigma std on white noise of std sigma) and not
    to flat or linearly shaded regions; edges and texture raise its local activity (the 7x7
    mean of the absolute response). The estimate is the mean absolute response over the
    quarter of the pixels with the lowest activity, times sqrt(pi/2) / 6 (a Gaussian's std from
    its mean absolute value), so clean photos read their flat regions (sky, walls: near 0) and
    noisy ones their noise. Windows clipped to a single value (all 0 or all 255) carry no
    visible noise and are left out. The low-activity selection biases the value down (about
    0.8 sigma on pure noise); the thresholds of :class:`AutoRule` are set on this scale."""
    g = gray.astype(np.float32)
    resp = np.abs(cv2.filter2D(g, -1, IMMERKAER, borderType=cv2.BORDER_REFLECT))[1:-1, 1:-1]
    lo = cv2.erode(gray, np.ones((3, 3), np.uint8))[1:-1, 1:-1]
    hi = cv2.dilate(gray, np.ones((3, 3), np.uint8))[1:-1, 1:-1]
    live = (hi > 0) & (lo < 255)
    if not live.any():
        return 0.0
    activity = cv2.boxFilter(resp, -1, (7, 7), borderType=cv2.BORDER_REFLECT)
    flat = live & (activity <= np.percentile(activity[live], 25))
    return float(np.sqrt(np.pi / 2) * resp[flat].mean() / 6.0)


def clahe_bgr(bgr: np.ndarray, clip: float = baselines.CLAHE_CLIP,
              grid: int = baselines.CLAHE_GRID) -> np.ndarray:
    """``data/enhance_baselines.clahe`` (CLAHE on L*) for a BGR image."""
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return cv2.cvtColor(baselines.clahe(rgb, clip, grid), cv2.COLOR_RGB2BGR)


def denoise(bgr: np.ndarray, method: str, sigma: float = 1.0) -> np.ndarray:
    """One of :data:`DENOISERS`; ``sigma``: the Gaussian's sigma (px) for ``gauss``, the noise
    std (grey levels) that sets ``bilateral``'s and ``nlm``'s strength."""
    if method == "gauss":
        return cv2.GaussianBlur(bgr, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    if method == "median":
        return cv2.medianBlur(bgr, 3)
    if method == "bilateral":
        return cv2.bilateralFilter(bgr, 5, max(3.0 * sigma, 2.0), 2.0)
    if method == "nlm":
        h = max(1.2 * sigma, 1.0)
        return cv2.fastNlMeansDenoisingColored(bgr, None, h, h, 5, 15)
    raise ValueError(f"unknown denoiser {method!r}; one of {', '.join(DENOISERS)}")


# ---- auto ----------------------------------------------------------------------------------

def decide(bgr: np.ndarray, rule: AutoRule = AutoRule()) -> Decision:
    """``auto``'s decision for one image (see the module doc)."""
    check_bgr(bgr)
    gray = luma(bgr)
    mean = float(gray.mean())
    if mean >= rule.pass_mean:
        return Decision(mean, 0.0, False, 0.0)      # bright: no noise estimate needed
    noise = estimate_noise(gray)
    if mean >= rule.clean_mean and noise < rule.noise_min:
        return Decision(mean, noise, False, 0.0)        # dim but clean
    return Decision(mean, noise, True, rule.dark_blur_sigma if mean < rule.dark_mean
                    else rule.blur_sigma)


def auto_enhance(bgr: np.ndarray, rule: AutoRule = AutoRule()) -> np.ndarray:
    """Night mode ``auto``: the input itself when bright or clean enough, else blurred and
    CLAHE-enhanced; see the module doc."""
    d = decide(bgr, rule)
    if d.passthrough:
        return bgr
    x = denoise(bgr, "gauss", d.blur)
    clip = rule.dim_clahe_clip if d.mean < rule.dim_mean else rule.clahe_clip
    return clahe_bgr(x, clip, rule.clahe_grid)


def _denoise_then(brightener: str, method: str) -> Enhancer:
    """Denoise the dark image with ``method``, then brighten it with ``brightener``."""
    bright = baselines.gamma_correct if brightener == "gamma" else clahe_bgr

    def run(bgr: np.ndarray) -> np.ndarray:
        sigma = 1.0 if method == "gauss" else estimate_noise(luma(bgr))
        return bright(denoise(bgr, method, sigma))
    return run


def _via_rgb(fn: Callable[[np.ndarray], np.ndarray]) -> Enhancer:
    """An RGB-in, RGB-out operation as a BGR one."""
    def run(bgr: np.ndarray) -> np.ndarray:
        out = fn(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        return cv2.cvtColor(np.ascontiguousarray(out), cv2.COLOR_RGB2BGR)
    return run


def _el(el_weights, device) -> Enhancer:
    if not el_weights:
        raise ValueError("--enhance el needs the E(L) weights: give --el-weights FILE "
                         "(an E(L) checkpoint, e.g. from tools/train_enhancer.py)")
    # lowlevel/ may import lowlevel/enhancement.py until E(L) moves into lowlevel/
    from lowlevel.enhancement import enhance_uint8, load_enhancer
    net = load_enhancer(el_weights, device, key="--el-weights")
    return _via_rgb(lambda rgb: enhance_uint8(net, rgb))


def _checked(fn: Enhancer) -> Enhancer:
    def run(bgr: np.ndarray) -> np.ndarray:
        check_bgr(bgr)
        return fn(bgr)
    return run


def build_enhancer(name: str, el_weights=None, device="cpu",
                   rule: AutoRule | None = None) -> Enhancer:
    """The enhancer ``name`` of :data:`ENHANCE_CHOICES`: BGR uint8 HxWx3 in, same size out.
    ``el_weights``/``device``: E(L)'s weights and where it runs; ``rule``: ``auto``'s
    thresholds (default :class:`AutoRule`)."""
    rule = rule or AutoRule()
    if name == "el":
        return _checked(_el(el_weights, device))
    table: dict[str, Enhancer] = {
        "none": lambda bgr: bgr,
        "auto": lambda bgr: auto_enhance(bgr, rule),
        "gamma": baselines.gamma_correct,              # a per-channel table: order-free
        "clahe": clahe_bgr,
        "lime": _via_rgb(baselines.lime),
        **{f"{b}_{d}": _denoise_then(b, d) for b in BRIGHTENERS for d in DENOISERS},
    }
    if name not in table:
        raise ValueError(f"--enhance {name!r} is not one of {', '.join(ENHANCE_CHOICES)}")
    return _checked(table[name])


def add_enhance_argument(parser: argparse.ArgumentParser, default: str | None = "none",
                         const: str | None = None, el_aliases: tuple[str, ...] = ()) -> None:
    """Add ``--enhance NAME`` (one of :data:`ENHANCE_CHOICES`) and ``--el-weights FILE``.
    ``const``: the value of a bare ``--enhance`` (for tools where it used to be a switch);
    ``el_aliases``: older names of ``--el-weights`` the tool keeps."""
    extra = {"nargs": "?", "const": const} if const else {}
    parser.add_argument("--enhance", choices=ENHANCE_CHOICES, default=default, **extra,
                        help="night mode: enhance each image before detection "
                             f"(default: {default}; auto decides per image; see "
                             "lowlevel/enhancers.py)")
    parser.add_argument("--el-weights", *el_aliases, dest="el_weights", default=None,
                        help="E(L) weights for --enhance el")
