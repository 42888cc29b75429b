"""Night mode: one registry of test-time enhancers that every tool reads (``--enhance NAME``).

Every enhancer maps an HxWx3 uint8 BGR image (OpenCV's convention) to an HxWx3 uint8 BGR image
of the same size. :func:`build_enhancer` makes one from a name of :data:`ENHANCE_CHOICES`:

* ``none``: the input itself (the same array, untouched).
* ``gamma``, ``clahe``, ``lime``: the classical baselines of ``data/enhance_baselines.py``
  (fixed gamma 2.2; CLAHE on L*; LIME, slow: a sparse solve per image).
* ``el``: the HLA-Face illumination enhancer E(L) (``models/enhancement.py``); needs its weights
  (``--el-weights``).
* ``curve``: the adaptive tone curve of ``auto`` alone (brightening, no denoising).
* ``gamma_median``, ``gamma_bilateral``, ``gamma_guided``, ``gamma_nlm``: the fixed gamma, then a
  denoiser whose strength follows the noise measured on the brightened image (3x3 median;
  bilateral; self-guided filter; OpenCV's non-local means, slow).
* ``auto``: decides per image from its luma histogram and a noise estimate (:func:`decide`):
  an image whose mean luma is at least :attr:`AutoRule.pass_mean` is returned unchanged (the
  same array); a darker one gets the tone curve :func:`tone_curve` whose strength brings its
  mean luma to :attr:`AutoRule.target_mean`, and, when the noise measured on the brightened
  image exceeds :attr:`AutoRule.denoise_sigma`, the denoiser :attr:`AutoRule.denoiser` at that
  strength. Its statistics cost a histogram and one 3x3 filter (bench/bench_enhance.py).

The tone curve is ``y = 255 * log(1 + a x / 255) / log(1 + a)`` (``a`` >= 0; ``a = 0`` is the
identity): unlike a gamma curve its slope at black is finite (``a / log(1 + a)``), so the lowest
grey levels, where 8-bit night images keep their content and their quantisation noise, are
lifted by a bounded gain instead of being torn apart (gamma 2.2 maps level 1 to 21).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from typing import Callable

import cv2
import numpy as np

from data import enhance_baselines as baselines

Enhancer = Callable[[np.ndarray], np.ndarray]

ENHANCE_CHOICES = ("none", "auto", "gamma", "clahe", "lime", "el", "curve", "gamma_median",
                   "gamma_bilateral", "gamma_guided", "gamma_nlm")
DENOISERS = ("median", "bilateral", "guided", "nlm")
IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)   # sum of squares 36
MAD_TO_STD = 1.4826                  # std of a Gaussian = 1.4826 * its median absolute deviation


@dataclass(frozen=True)
class AutoRule:
    """The thresholds of ``auto`` (luma and noise in 8-bit grey levels)."""
    pass_mean: float = 80.0        # mean luma >= this: returned unchanged
    target_mean: float = 100.0     # the tone curve brings the mean luma to this
    max_strength: float = 400.0    # upper bound of the curve's ``a`` (slope at black ~ 67)
    denoise_sigma: float = 4.0     # denoise when the brightened image's noise exceeds this
    denoiser: str = "bilateral"    # one of DENOISERS
    denoise_gain: float = 1.0      # the denoiser's strength = gain * measured noise


@dataclass(frozen=True)
class Decision:
    """What ``auto`` does to one image (for logs, tests and docs/NIGHT.md)."""
    mean: float                    # mean luma of the input
    strength: float                # the tone curve's ``a`` (0: no brightening)
    noise: float                   # noise std measured on the brightened image, grey levels
    denoise: bool

    @property
    def passthrough(self) -> bool:
        return self.strength == 0.0


def check_bgr(image: np.ndarray) -> None:
    """Raise unless ``image`` is an HxWx3 uint8 array."""
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
            and image.shape[2] == 3):
        raise ValueError(f"an enhancer takes an HxWx3 uint8 BGR image, got "
                         f"{getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}")


def luma(bgr: np.ndarray) -> np.ndarray:
    """HxW uint8 luma (ITU-R BT.601 weights, as cv2's BGR2GRAY)."""
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)


def histogram(gray: np.ndarray) -> np.ndarray:
    """256 counts of a uint8 image."""
    return np.bincount(gray.ravel(), minlength=256).astype(np.float64)


def estimate_noise(gray: np.ndarray) -> float:
    """Noise std (grey levels) of a uint8 luma image: the median absolute response of
    Immerkaer's 3x3 kernel (zero on flat and linearly shaded regions; 6 sigma std on white
    noise of std sigma), scaled to a std.

    Edges and texture give large responses in a minority of pixels, so the median is set by
    the noise of the flat regions. Windows clipped to a single value (all 0 or all 255) carry
    no visible noise and are left out."""
    g = gray.astype(np.float32)
    resp = np.abs(cv2.filter2D(g, -1, IMMERKAER, borderType=cv2.BORDER_REFLECT))[1:-1, 1:-1]
    lo = cv2.erode(gray, np.ones((3, 3), np.uint8))[1:-1, 1:-1]
    hi = cv2.dilate(gray, np.ones((3, 3), np.uint8))[1:-1, 1:-1]
    live = resp[(hi > 0) & (lo < 255)]
    if live.size == 0:
        return 0.0
    return float(MAD_TO_STD * np.median(live) / 6.0)


def tone_lut(strength: float) -> np.ndarray:
    """The 256-entry uint8 table of ``y = 255 log(1 + a x/255) / log(1 + a)``, ``a`` = strength."""
    x = np.arange(256, dtype=np.float64) / 255.0
    if strength <= 0:
        return np.arange(256, dtype=np.uint8)
    y = np.log1p(strength * x) / np.log1p(strength)
    return np.round(255.0 * y).astype(np.uint8)


def curve_strength(hist: np.ndarray, target_mean: float, max_strength: float) -> float:
    """The smallest curve strength that brings the mean of ``hist`` to ``target_mean`` (bisection
    on log a; ``max_strength`` when even that falls short; 0 when already there)."""
    n = hist.sum()
    levels = np.arange(256, dtype=np.float64) / 255.0

    def mean_after(a: float) -> float:
        return 255.0 * float(hist @ (np.log1p(a * levels) / np.log1p(a))) / n

    if 255.0 * float(hist @ levels) / n >= target_mean:
        return 0.0
    if mean_after(max_strength) <= target_mean:
        return float(max_strength)
    lo, hi = np.log(1e-3), np.log(max_strength)
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if mean_after(float(np.exp(mid))) < target_mean else (lo, mid)
    return float(np.exp(hi))


def tone_curve(bgr: np.ndarray, strength: float) -> np.ndarray:
    """Apply the tone curve of ``strength`` to every channel."""
    return cv2.LUT(bgr, tone_lut(strength))


# ---- denoisers (on the brightened image; sigma = its measured noise std, grey levels) ------

def _guided_self(bgr: np.ndarray, sigma: float, radius: int = 2) -> np.ndarray:
    """He et al.'s guided filter with each channel as its own guide: box means of I and I^2,
    ``a = var / (var + eps)``, ``q = mean(a) I + mean(b)``, ``eps = (2 sigma)^2``; flat regions
    (variance ~ noise) are smoothed, edges (variance >> eps) kept."""
    x = bgr.astype(np.float32)
    k = (2 * radius + 1, 2 * radius + 1)
    mean = cv2.boxFilter(x, -1, k, borderType=cv2.BORDER_REFLECT)
    var = cv2.boxFilter(x * x, -1, k, borderType=cv2.BORDER_REFLECT) - mean * mean
    a = var / (var + max(2.0 * sigma, 0.5) ** 2)
    b = mean - a * mean
    q = cv2.boxFilter(a, -1, k, borderType=cv2.BORDER_REFLECT) * x \
        + cv2.boxFilter(b, -1, k, borderType=cv2.BORDER_REFLECT)
    return np.clip(q + 0.5, 0, 255).astype(np.uint8)


def denoise(bgr: np.ndarray, sigma: float, method: str) -> np.ndarray:
    """Remove noise of std ``sigma`` (grey levels) with one of :data:`DENOISERS`."""
    if sigma <= 0:
        return bgr
    if method == "median":
        return cv2.medianBlur(bgr, 3 if sigma < 12 else 5)
    if method == "bilateral":
        return cv2.bilateralFilter(bgr, 5, 3.0 * sigma, 2.0)
    if method == "guided":
        return _guided_self(bgr, sigma)
    if method == "nlm":
        h = float(1.2 * sigma)
        return cv2.fastNlMeansDenoisingColored(bgr, None, h, h, 5, 15)
    raise ValueError(f"unknown denoiser {method!r}; one of {', '.join(DENOISERS)}")


# ---- auto ----------------------------------------------------------------------------------

def decide(bgr: np.ndarray, rule: AutoRule = AutoRule()) -> tuple[Decision, np.ndarray | None]:
    """``auto``'s decision for one image and the brightened image (None when passed through)."""
    check_bgr(bgr)
    gray = luma(bgr)
    hist = histogram(gray)
    mean = float(hist @ np.arange(256) / hist.sum())
    if mean >= rule.pass_mean:
        return Decision(mean, 0.0, 0.0, False), None
    strength = curve_strength(hist, rule.target_mean, rule.max_strength)
    if strength == 0.0:
        return Decision(mean, 0.0, 0.0, False), None
    lut = tone_lut(strength)
    bright = cv2.LUT(bgr, lut)
    noise = estimate_noise(cv2.LUT(gray, lut))
    return Decision(mean, strength, noise, noise > rule.denoise_sigma), bright


def auto_enhance(bgr: np.ndarray, rule: AutoRule = AutoRule()) -> np.ndarray:
    """Night mode ``auto``: the input itself when bright enough, else brightened (and
    denoised when noisy); see the module doc."""
    d, bright = decide(bgr, rule)
    if bright is None:
        return bgr
    if d.denoise:
        return denoise(bright, rule.denoise_gain * d.noise, rule.denoiser)
    return bright


def _gamma_then(method: str) -> Enhancer:
    def run(bgr: np.ndarray) -> np.ndarray:
        bright = baselines.gamma_correct(bgr)              # a per-channel table: order-free
        return denoise(bright, estimate_noise(luma(bright)), method)
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
    # lowlevel/ may import models/enhancement.py until E(L) moves into lowlevel/
    from models.enhancement import enhance_uint8, load_enhancer
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
    if rule.denoiser not in DENOISERS:
        raise ValueError(f"AutoRule.denoiser {rule.denoiser!r} is not one of "
                         f"{', '.join(DENOISERS)}")
    if name == "el":
        return _checked(_el(el_weights, device))
    table: dict[str, Enhancer] = {
        "none": lambda bgr: bgr,
        "auto": lambda bgr: auto_enhance(bgr, rule),
        "gamma": baselines.gamma_correct,
        "clahe": _via_rgb(baselines.clahe),
        "lime": _via_rgb(baselines.lime),
        "curve": lambda bgr: auto_enhance(bgr, replace(rule, denoise_sigma=float("inf"))),
        **{f"gamma_{m}": _gamma_then(m) for m in DENOISERS},
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
