"""A physical low-light camera: daylight sRGB photos in, the 8-bit output of a camera at night out.

The model runs a display-referred photo backwards to the sensor, takes the picture again with
less light and a noisy sensor, and runs the camera's processing forwards (batched torch, every
parameter drawn per image from the preset's sampling table):

1. **Unprocess** (after Brooks et al., "Unprocessing Images for Learned Raw Denoising").
   Inverse tone curve (the smoothstep ``3x^2 - 2x^3``, inverted as ``0.5 - sin(asin(1 - 2y) / 3)``),
   inverse gamma (``x ** gamma``), the sRGB -> camera colour matrix (one of four calibrated
   XYZ -> camera matrices, or a random convex mix of them, times sRGB -> XYZ, rows normalised to
   sum 1), inverse white balance ``[1/red_gain, 1, 1/blue_gain] * rgb_gain``. ``rgb_gain`` is a
   brightness factor the forward path never undoes (as in both references); ``light_red`` /
   ``light_blue`` tint the scene's light (the night lamps' colour). With ``safe_invert``
   the gains fade to 1 where the grey level exceeds 0.9, so saturated highlights stay white
   instead of turning into a dim colour; ``clip_linear`` then clips to the sensor's [0, 1].
2. **Sensor**, in digital numbers (DN, ``white_level`` DN = full scale 1). Optional RGGB Bayer
   mosaic (one plane). The light is scaled by ``exposure`` (the darkness). Shot noise: a pixel
   of ``s`` DN holds ``s / system_gain`` photo-electrons, Poisson distributed (``shot_dist``
   'poisson'), or its Gaussian approximation with the same variance ``system_gain * s``
   ('gaussian'). Read noise of scale ``read_noise`` DN, Gaussian or Tukey-lambda (shape
   ``tukey_lambda``; heavier tails for lambda < 0.14); row noise: one Gaussian offset of std
   ``row_noise`` DN per sensor row; ``black_level_error``: a per-channel offset drawn uniformly
   from +-this many DN. The sum is clipped to the ADC range [0, 1] (``clip_raw``), quantised to
   ``2 ** bits`` levels (``bits = 0``: none) and multiplied by ``digital_gain``. The variance of
   the noisy value at mean ``x`` (full scale 1) is ``shot * x + read`` with
   ``shot = system_gain / white_level`` and ``read = (read std / white_level) ** 2``.
3. **Process**: bilinear demosaic (when mosaicked), white balance ``[red_gain, 1, blue_gain]``
   (times a grey-world correction of strength ``awb``), the inverse colour matrix, a black point
   ``black_offset`` (in sensor DN) subtracted from every channel (the ISP's shadow crush that
   makes half of a night frame exactly 0), gamma ``x ** (1 / gamma)`` (values below 1e-8 lifted
   to 1e-8), the tone curve (``apply_tone``), and 8-bit quantisation with clipping
   (``quantize_output``).

Presets (:data:`PRESETS`; each entry a fixed value or a sampling spec, see :func:`draw_params`):

- ``dainet``: DAI-Net's "Dark ISP" with its published sampling, quirks included: it inverts the
  tone curve but never applies it again (``apply_tone = 0``), so its images are far brighter
  than a camera's (mean luma about 35 on a normal photo); it picks ONE of the four colour
  matrices (``ccm = 'choice'``, not Brooks' mix); it never clips in the linear or raw domain;
  its shot noise is the Gaussian approximation; its read noise is a variance given by
  ``log read = 2.18 log shot + 1.20 + N(0, 0.26)`` (here the same law for the std in DN with
  ``white_level = 1``: slope 1.09, bias 0.60, sigma 0.13); its "quantisation noise" is one
  uniform offset per channel of at most ``1 / (255 * bits)`` with bits in {12, 14, 16} (here
  ``black_level_error``), not a quantisation. It outputs floats; here the output is quantised to
  8 bits like every preset (``quantize_output = 0`` gives its floats).
- ``darkface``: calibrated so that daylight photos come out with the statistics of a real DARK
  FACE frame (mean luma 2-6/255, 35-60% zeros, 99th percentile 25-60, flat patches of mean
  8-14 with std about 3.4-4.2); ``bench/calibrate_darkface.py`` prints them, docs/NIGHT.md has
  the calibration. Unprocessing as Brooks et al. (gamma 2.2, mixed matrices, safe inversion),
  RGGB mosaic, 8-16 % of the light (exposure log-uniform on [0.08, 0.16], times ``rgb_gain``
  about 0.8), Poisson shot noise with a high-ISO system gain (5-12 DN per electron on
  a 12-bit scale), Gaussian read and row noise, and a black point of 55-95 DN: the black point
  and the tone curve's toe crush the shadows to exact zeros, as in the frame. The light's colour
  (red x0.65-0.85, blue x0.8-1.0) matches the frame's channel means on the calibration photos
  (which are warm indoor shots).
- ``eld``: the physics of ELD (Wei et al., CVPR 2020) with the calibration released for the
  Sony A7S2 (system gain log-uniform over the camera's range, Tukey-lambda read noise and row
  noise whose log scales are linear in log system gain, 14 bits, exposure ratio 100-300), then
  amplified back by the ratio as ELD does (``digital_gain = 1 / exposure``): bright, very noisy
  images. ``overrides={'digital_gain': 1.0}`` keeps them dark.

Every draw comes from one ``torch.Generator`` per image, seeded from ``seeds`` (or from
``generator``), so a batch gives exactly the images its members give one at a time.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
import torch

# sRGB (linear) -> CIE XYZ, D65.
RGB2XYZ = torch.tensor([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]], dtype=torch.float64)
# Four calibrated XYZ -> camera matrices (the set both Unprocessing and DAI-Net use).
XYZ2CAMS = torch.tensor([[[1.0234, -0.2969, -0.2266], [-0.5625, 1.6328, -0.0469],
                          [-0.0703, 0.2188, 0.6406]],
                         [[0.4913, -0.0541, -0.0202], [-0.613, 1.3513, 0.2906],
                          [-0.1564, 0.2151, 0.7183]],
                         [[0.838, -0.263, -0.0639], [-0.2887, 1.0725, 0.2496],
                          [-0.0627, 0.1427, 0.5438]],
                         [[0.6596, -0.2079, -0.0562], [-0.4782, 1.3016, 0.1933],
                          [-0.097, 0.1581, 0.5181]]], dtype=torch.float64)

# Parameters drawn per image, in drawing order (a 'loglinear' spec may only refer to an
# earlier one). Switches and choices are the same for the whole batch.
NUMERIC = ("gamma", "red_gain", "blue_gain", "rgb_gain", "light_red", "light_blue", "exposure",
           "white_level", "system_gain", "read_noise", "tukey_lambda", "row_noise",
           "black_level_error", "black_offset", "bits", "digital_gain", "awb")
SWITCHES = ("invert_tone", "apply_tone", "safe_invert", "clip_linear", "mosaic", "clip_raw",
            "quantize_output")
CHOICES = {"ccm": ("identity", "choice", "mix"), "shot_dist": ("poisson", "gaussian"),
           "read_dist": ("gaussian", "tukey")}
PARAM_NAMES = NUMERIC + SWITCHES + tuple(CHOICES)
# What a preset that does not name a parameter gets.
DEFAULTS = dict({n: 0.0 for n in NUMERIC + SWITCHES}, light_red=1.0, light_blue=1.0,
                digital_gain=1.0, quantize_output=1.0)
SPEC_KINDS = {"uniform": 2, "loguniform": 2, "invuniform": 2, "normal": 2, "truncnormal": 4,
              "choice": None, "loglinear": 4}

# Shared by the Unprocessing-style presets.
_BROOKS = {
    "invert_tone": 1.0, "apply_tone": 1.0, "gamma": 2.2, "ccm": "mix",
    "red_gain": ("uniform", 1.9, 2.4), "blue_gain": ("uniform", 1.5, 1.9),
    "rgb_gain": ("normal", 0.8, 0.1), "safe_invert": 1.0, "clip_linear": 1.0, "mosaic": 0.0,
    "black_level_error": 0.0, "clip_raw": 1.0, "digital_gain": 1.0, "quantize_output": 1.0,
}
PRESETS: dict[str, dict[str, Any]] = {
    "dainet": {
        "invert_tone": 1.0, "apply_tone": 0.0, "gamma": ("uniform", 2.0, 3.5), "ccm": "choice",
        "red_gain": ("uniform", 1.9, 2.4), "blue_gain": ("uniform", 1.5, 1.9),
        "rgb_gain": ("normal", 0.8, 0.1), "safe_invert": 0.0, "clip_linear": 0.0,
        "mosaic": 0.0, "exposure": ("truncnormal", 0.1, 0.08, 0.01, 0.1),
        "white_level": 1.0, "system_gain": ("loguniform", 1e-4, 0.012),
        "shot_dist": "gaussian", "read_dist": "gaussian",
        "read_noise": ("loglinear", "system_gain", 1.09, 0.60, 0.13),
        "tukey_lambda": 0.0, "row_noise": 0.0,
        "black_level_error": ("choice", 1 / (255 * 12), 1 / (255 * 14), 1 / (255 * 16)),
        "clip_raw": 0.0, "bits": 0.0, "digital_gain": 1.0, "quantize_output": 1.0,
    },
    "darkface": dict(_BROOKS, **{
        # calibrated on daylight photos by bench/calibrate_darkface.py (docs/NIGHT.md)
        "mosaic": 1.0, "exposure": ("loguniform", 0.08, 0.16), "white_level": 4095.0,
        "bits": 12.0, "system_gain": ("loguniform", 5.0, 12.0), "shot_dist": "poisson",
        "read_dist": "gaussian", "read_noise": ("loglinear", "system_gain", 0.5, 1.5, 0.15),
        "tukey_lambda": 0.0, "row_noise": ("loglinear", "system_gain", 0.5, -0.8, 0.15),
        "black_offset": ("uniform", 55.0, 95.0), "light_red": ("uniform", 0.65, 0.85),
        "light_blue": ("uniform", 0.8, 1.0),
    }),
    "eld": dict(_BROOKS, **{
        # Sony A7S2, ELD's released calibration: saturation 16383 - 800 DN, K in DN/electron.
        "exposure": ("invuniform", 100.0, 300.0), "white_level": 15583.0, "bits": 14.0,
        "system_gain": ("loguniform", 0.0939, 6.0106), "shot_dist": "poisson",
        "read_dist": "tukey", "read_noise": ("loglinear", "system_gain", 0.4621, 0.5657, 0.2634),
        "tukey_lambda": ("choice", 0.1143, 0.1286, 0.0571, 0.0429, 0.0, -0.0429, -0.0571,
                         -0.0857, -0.1143, -0.1286, -0.1429),
        "row_noise": ("loglinear", "system_gain", 0.5275, -0.5917, 0.2943),
        "digital_gain": ("loglinear", "exposure", -1.0, 0.0, 0.0),
    }),
}


class CameraError(ValueError):
    """A bad preset, parameter name or parameter value (the message names it)."""


# ---------------------------------------------------------------------------------------------
# sampling tables


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _check_spec(name: str, spec: Any, earlier: Sequence[str]) -> Any:
    """Return ``spec`` normalised (floats, tuples) or raise naming ``name``."""
    if name in CHOICES:
        if spec not in CHOICES[name]:
            raise CameraError(f"camera parameter {name!r}={spec!r} must be one of "
                              f"{', '.join(CHOICES[name])}")
        return spec
    if _is_number(spec):
        if name in SWITCHES and float(spec) not in (0.0, 1.0):
            raise CameraError(f"camera parameter {name!r}={spec!r} is a switch: 0 or 1")
        return float(spec)
    if name in SWITCHES:
        raise CameraError(f"camera parameter {name!r} is a switch: a fixed 0 or 1, got {spec!r}")
    if not isinstance(spec, (tuple, list)) or not spec or spec[0] not in SPEC_KINDS:
        raise CameraError(f"camera parameter {name!r}: expected a number, a (lo, hi) range or a "
                          f"spec ({', '.join(SPEC_KINDS)}, ...), got {spec!r}")
    kind, args = spec[0], tuple(spec[1:])
    need = SPEC_KINDS[kind]
    if kind == "loglinear":
        if len(args) != 4 or args[0] not in earlier or not all(map(_is_number, args[1:])):
            raise CameraError(f"camera parameter {name!r}: ('loglinear', OF, slope, bias, sigma) "
                              f"needs OF among the earlier parameters {', '.join(earlier)}; "
                              f"got {spec!r}")
        return (kind, args[0]) + tuple(float(a) for a in args[1:])
    if (need is not None and len(args) != need) or not args or not all(map(_is_number, args)):
        raise CameraError(f"camera parameter {name!r}: {kind!r} needs "
                          f"{need or 'one or more'} numbers, got {spec!r}")
    args = tuple(float(a) for a in args)
    if kind in ("loguniform", "invuniform") and min(args) <= 0:
        raise CameraError(f"camera parameter {name!r}: {kind} bounds must be > 0, got {spec!r}")
    if kind == "truncnormal" and not args[2] < args[3]:
        raise CameraError(f"camera parameter {name!r}: truncnormal needs lo < hi, got {spec!r}")
    return (kind,) + args


def _override_spec(name: str, value: Any, preset_spec: Any) -> Any:
    """A number fixes ``name``; a (lo, hi) pair keeps the preset's kind of draw when it is a
    range kind (uniform / loguniform / invuniform), else draws uniformly; a full spec replaces."""
    if isinstance(value, (list, tuple)) and len(value) == 1 and _is_number(value[0]):
        return value[0]
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(map(_is_number, value)):
        kind = preset_spec[0] if isinstance(preset_spec, tuple) and preset_spec[0] in (
            "uniform", "loguniform", "invuniform") else "uniform"
        return (kind, value[0], value[1])
    return value


def resolve(preset: str = "darkface", overrides: Mapping[str, Any] | None = None) -> dict:
    """The preset's sampling table with ``overrides`` applied, every entry checked."""
    if preset not in PRESETS:
        raise CameraError(f"unknown camera preset {preset!r}; known: {', '.join(PRESETS)}")
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(PARAM_NAMES))
    if unknown:
        raise CameraError(f"unknown camera parameter(s) {', '.join(map(repr, unknown))}; "
                          f"known: {', '.join(PARAM_NAMES)}")
    table = {}
    for name in PARAM_NAMES:
        spec = PRESETS[preset].get(name, DEFAULTS.get(name))
        if name in overrides:
            spec = _override_spec(name, overrides[name], spec)
        earlier = NUMERIC[:NUMERIC.index(name)] if name in NUMERIC else ()
        table[name] = _check_spec(name, spec, earlier)
    _check_fixed_values(table)
    return table


def _check_fixed_values(table: Mapping[str, Any]) -> None:
    positive = ("gamma", "red_gain", "blue_gain", "white_level", "exposure", "light_red",
                "light_blue")
    for name in positive:
        if _is_number(table[name]) and not table[name] > 0:
            raise CameraError(f"camera parameter {name!r}={table[name]!r} must be > 0")
    if _is_number(table["awb"]) and not 0 <= table["awb"] <= 1:
        raise CameraError(f"camera parameter 'awb'={table['awb']!r} must lie in [0, 1]")
    bits = table["bits"]
    if _is_number(bits) and (bits != int(bits) or not 0 <= bits <= 24):
        raise CameraError(f"camera parameter 'bits'={bits!r} must be an integer in [0, 24]")
    for name in ("system_gain", "read_noise", "row_noise", "black_level_error", "black_offset"):
        if _is_number(table[name]) and table[name] < 0:
            raise CameraError(f"camera parameter {name!r}={table[name]!r} must be >= 0")


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))


def _draw_one(spec: Any, g: torch.Generator, drawn: Mapping[str, float]) -> float:
    if _is_number(spec):
        return float(spec)
    kind, *a = spec
    if kind == "uniform":
        return _uniform(g, a[0], a[1])
    if kind == "loguniform":
        return math.exp(_uniform(g, math.log(a[0]), math.log(a[1])))
    if kind == "invuniform":
        return 1.0 / _uniform(g, a[0], a[1])
    if kind == "normal":
        return a[0] + a[1] * float(torch.randn((), generator=g, dtype=torch.float64))
    if kind == "truncnormal":         # inverse CDF of the normal restricted to [lo, hi]
        mu, sd, lo, hi = a
        cdf = torch.special.ndtr(torch.tensor([(lo - mu) / sd, (hi - mu) / sd],
                                              dtype=torch.float64))
        u = _uniform(g, float(cdf[0]), float(cdf[1]))
        value = mu + sd * float(torch.special.ndtri(torch.tensor(u, dtype=torch.float64)))
        return min(max(value, lo), hi)
    if kind == "choice":
        return float(a[int(torch.randint(len(a), (), generator=g))])
    if kind == "loglinear":          # log v = slope * log(of) + bias + N(0, sigma)
        of, slope, bias, sigma = a
        noise = sigma * float(torch.randn((), generator=g, dtype=torch.float64))
        return math.exp(slope * math.log(max(drawn[of], 1e-30)) + bias + noise)
    raise CameraError(f"unknown spec kind {kind!r}")


def draw_params(table: Mapping[str, Any], generator: torch.Generator) -> dict:
    """One image's parameters: numbers drawn in :data:`NUMERIC` order, then the colour matrix
    (``rgb2cam``, a 3x3 float64 tensor); switches and choices copied."""
    drawn: dict[str, Any] = {}
    for name in NUMERIC:
        drawn[name] = _draw_one(table[name], generator, drawn)
    for name in SWITCHES + tuple(CHOICES):
        drawn[name] = table[name]
    drawn["rgb2cam"] = _draw_ccm(table["ccm"], generator)
    return drawn


def _draw_ccm(mode: str, g: torch.Generator) -> torch.Tensor:
    """sRGB -> camera matrix, rows normalised to sum 1 (so white stays grey before WB)."""
    if mode == "identity":
        return torch.eye(3, dtype=torch.float64)
    if mode == "choice":
        xyz2cam = XYZ2CAMS[int(torch.randint(len(XYZ2CAMS), (), generator=g))]
    else:                            # a random convex combination of the four
        w = torch.rand(len(XYZ2CAMS), generator=g, dtype=torch.float64) + 1e-8
        xyz2cam = (XYZ2CAMS * (w / w.sum())[:, None, None]).sum(0)
    rgb2cam = xyz2cam @ RGB2XYZ
    return rgb2cam / rgb2cam.sum(-1, keepdim=True)


def stack_params(drawn: Sequence[Mapping[str, Any]], dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> dict:
    """Per-image draws -> ``[B, 1, 1, 1]`` tensors (``rgb2cam``: ``[B, 3, 3]``); switches and
    choices must agree over the batch."""
    out: dict[str, Any] = {}
    for name in NUMERIC:
        out[name] = torch.tensor([d[name] for d in drawn], dtype=dtype,
                                 device=device).view(-1, 1, 1, 1)
    for name in SWITCHES + tuple(CHOICES):
        values = {d[name] for d in drawn}
        if len(values) != 1:
            raise CameraError(f"camera parameter {name!r} differs within a batch: {values}")
        out[name] = values.pop()
    out["rgb2cam"] = torch.stack([d["rgb2cam"] for d in drawn]).to(device)
    return out


# ---------------------------------------------------------------------------------------------
# the three stages


def _apply_ccm(x: torch.Tensor, ccm: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` colours times ``[B, 3, 3]`` matrices (out_c = sum_k M[c, k] x_k)."""
    return torch.einsum("bck,bkhw->bchw", ccm.to(x.dtype), x)


def _wb_gains(p: Mapping[str, Any]) -> torch.Tensor:
    """``[B, 3, 1, 1]`` white-balance gains (red, 1, blue)."""
    return torch.cat([p["red_gain"], torch.ones_like(p["red_gain"]), p["blue_gain"]], 1)


def _decode(x: torch.Tensor, p: Mapping[str, Any], gamma: torch.Tensor) -> torch.Tensor:
    """Inverse tone curve and inverse gamma of display values."""
    if p["invert_tone"]:
        x = 0.5 - torch.sin(torch.asin(1.0 - 2.0 * x.clamp(0.0, 1.0)) / 3.0)
    return x.clamp_min(1e-8).pow_(gamma)


def to_linear(x: torch.Tensor, p: Mapping[str, Any],
              levels: torch.Tensor | None = None) -> torch.Tensor:
    """Display values ``[B, 3, H, W]`` -> linear light. ``levels`` (the images as 0-255 integer
    tensors) turns the curve into a 256-entry table per image: the same values, faster."""
    if levels is None:
        return _decode(x, p, p["gamma"])
    table = torch.arange(256, dtype=x.dtype).div_(255.0).expand(len(x), 256)      # [B, 256]
    table = _decode(table.contiguous(), p, p["gamma"].view(-1, 1))
    return torch.stack([torch.take(table[b], levels[b].long()) for b in range(len(x))])


# RGGB sites: (row offset, column offset, colour channel)
BAYER_SITES = ((0, 0, 0), (0, 1, 1), (1, 0, 1), (1, 1, 2))


def _dot(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per image ``m`` ``[B, 3]`` dotted with the channels of ``x`` ``[B, 3, h, w]``: [B, h, w]."""
    m = m.to(x.dtype).view(-1, 3, 1, 1)
    return (x[:, 0] * m[:, 0]).add_(x[:, 1] * m[:, 1]).add_(x[:, 2] * m[:, 2])


def _safe_factor(gray: torch.Tensor, gains: torch.Tensor) -> torch.Tensor | None:
    """Highlight-safe inversion: the factor that fades ``gains`` to 1 where the grey level
    exceeds 0.9 (None when no pixel does). ``gray`` and ``gains`` broadcast together."""
    if not bool((gray > 0.9).any()):
        return None
    mask = ((gray - 0.9).clamp_min(0.0) / 0.1) ** 2
    return torch.maximum(mask + (1.0 - mask) * gains, gains) / gains


def unprocess(x: torch.Tensor, p: Mapping[str, Any],
              levels: torch.Tensor | None = None, bayer: bool = False) -> torch.Tensor:
    """sRGB ``[B, 3, H, W]`` in [0, 1] -> linear camera RGB before white balance, lit by the
    night light's colour (``light_red`` / ``light_blue``); with ``bayer`` directly its RGGB
    plane ``[B, 1, H, W]`` (the same values as :func:`mosaic` of the full result, computed
    only where the mosaic keeps them)."""
    lin = to_linear(x, p, levels)
    gains = p["rgb_gain"] / _wb_gains(p)                                   # [B, 3, 1, 1]
    light = torch.cat([p["light_red"], torch.ones_like(p["light_red"]), p["light_blue"]], 1)
    ccm = p["rgb2cam"].to(x.dtype)
    matrix = ccm * (gains * light).view(-1, 3, 1)                          # diag(g) @ rgb2cam
    if bayer:
        out = torch.empty(lin.shape[0], 1, *lin.shape[2:], dtype=lin.dtype)
        for dy, dx, c in BAYER_SITES:
            sub = lin[:, :, dy::2, dx::2]
            val = _dot(matrix[:, c], sub)
            if p["safe_invert"]:
                factor = _safe_factor(_dot(ccm.mean(1), sub), gains[:, c].view(-1, 1, 1))
                val = val if factor is None else val * factor
            out[:, 0, dy::2, dx::2] = val
        x = out
    else:
        x = _apply_ccm(lin, matrix)
        if p["safe_invert"]:
            factor = _safe_factor(torch.einsum("bk,bkhw->bhw", ccm.mean(1), lin).unsqueeze(1),
                                  gains)
            x = x if factor is None else x * factor
    return x.clamp_(0.0, 1.0) if p["clip_linear"] else x


def _bayer_masks(h: int, w: int, dtype, device) -> torch.Tensor:
    """``[1, 3, H, W]`` 0/1 masks of the RGGB pattern (R at even rows/cols, B at odd/odd)."""
    y = torch.arange(h, device=device)[:, None] % 2
    x = torch.arange(w, device=device)[None, :] % 2
    r, b = (y == 0) & (x == 0), (y == 1) & (x == 1)
    return torch.stack([r, ~(r | b), b]).unsqueeze(0).to(dtype)


def mosaic(x: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` -> ``[B, 1, H, W]`` RGGB Bayer plane."""
    return (x * _bayer_masks(*x.shape[-2:], x.dtype, x.device)).sum(1, keepdim=True)


def _smooth(planes: torch.Tensor, cross: bool) -> torch.Tensor:
    """Sum of each pixel's 3x3 neighbourhood weighted [[1,2,1],[2,4,2],[1,2,1]] (or, with
    ``cross``, [[0,1,0],[1,4,1],[0,1,0]]) on a reflect-padded copy (reflection keeps the
    RGGB parity, so every output has weights 4 from known samples)."""
    pad = torch.nn.functional.pad(planes, (1, 1, 1, 1), mode="reflect")
    if cross:
        c = pad[..., 1:-1, 1:-1]
        return (c * 4.0).add_(pad[..., :-2, 1:-1]).add_(pad[..., 2:, 1:-1]) \
            .add_(pad[..., 1:-1, :-2]).add_(pad[..., 1:-1, 2:])
    rows = (pad[..., 1:-1, :] * 2.0).add_(pad[..., :-2, :]).add_(pad[..., 2:, :])
    return (rows[..., 1:-1] * 2.0).add_(rows[..., :-2]).add_(rows[..., 2:])


def demosaic(raw: torch.Tensor) -> torch.Tensor:
    """Bilinear demosaic of an RGGB plane ``[B, 1, H, W]`` -> ``[B, 3, H, W]`` (H, W >= 2): each
    missing value is the mean of its nearest same-colour neighbours, known values kept."""
    planes = raw * _bayer_masks(*raw.shape[-2:], raw.dtype, raw.device)    # [B, 3, H, W]
    red_blue = _smooth(planes[:, 0::2], cross=False)                       # R and B planes
    green = _smooth(planes[:, 1:2], cross=True)
    return torch.cat([red_blue[:, :1], green, red_blue[:, 1:]], 1).mul_(0.25)


def _tukey_lambda(u: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Quantile function of the standard Tukey-lambda distribution (logistic at lambda 0)."""
    safe = torch.where(lam.abs() < 1e-6, torch.ones_like(lam), lam)
    q = (u ** safe - (1.0 - u) ** safe) / safe
    return torch.where(lam.abs() < 1e-6, torch.log(u) - torch.log1p(-u), q)


def _image_noise(s: torch.Tensor, p: Mapping[str, Any], i: int,
                 g: torch.Generator) -> torch.Tensor:
    """Noisy DN of one image ``s`` ``[C, H, W]`` (signal in DN), drawn from ``g``."""
    k, read, row = (float(p[n][i]) for n in ("system_gain", "read_noise", "row_noise"))
    gaussian_shot = p["shot_dist"] == "gaussian" or k == 0.0
    if not gaussian_shot:
        s = torch.poisson(s.div_(k).clamp_(min=0.0), generator=g).mul_(k)
    if gaussian_shot and p["read_dist"] == "gaussian":   # one draw: variance k*s + read^2
        if k or read:
            std = (s * k).add_(read * read).clamp_(min=1e-8).sqrt_()
            s = s.add_(std.mul_(torch.randn(s.shape, generator=g, dtype=s.dtype)))
    elif p["read_dist"] == "gaussian":
        if read:
            s = s.add_(torch.randn(s.shape, generator=g, dtype=s.dtype).mul_(read))
    else:
        if gaussian_shot and k:
            std = (s * k).clamp_(min=0.0).sqrt_()
            s = s.add_(std.mul_(torch.randn(s.shape, generator=g, dtype=s.dtype)))
        u = torch.rand(s.shape, generator=g, dtype=s.dtype).clamp_(1e-7, 1 - 1e-7)
        s = s.add_(_tukey_lambda(u, p["tukey_lambda"][i].view(1, 1, 1).to(s.dtype)).mul_(read))
    if row:
        s = s.add_(torch.randn((1, s.shape[1], 1), generator=g, dtype=s.dtype).mul_(row))
    return s


def _image_sensor(x: torch.Tensor, p: Mapping[str, Any], i: int,
                  g: torch.Generator) -> torch.Tensor:
    """:func:`sensor` for image ``i`` (``[C, H, W]``)."""
    white = float(p["white_level"][i])
    s = _image_noise(x * (float(p["exposure"][i]) * white), p, i, g)   # DN
    if float(p["black_level_error"][i]) > 0:
        u = torch.rand(x.shape[0], generator=g, dtype=x.dtype).view(-1, 1, 1)
        s = s.add_(u.mul_(2.0).sub_(1.0).mul_(float(p["black_level_error"][i])))
    s = s.div_(white)
    if p["clip_raw"]:
        s = s.clamp_(0.0, 1.0)
    bits = float(p["bits"][i])
    if bits > 0:
        levels = 2.0 ** bits - 1.0
        s = s.mul_(levels).round_().div_(levels)
    gain = float(p["digital_gain"][i])
    return s.mul_(gain) if gain != 1.0 else s


def sensor(x: torch.Tensor, p: Mapping[str, Any],
           generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Linear raw (full scale 1) ``[B, C, H, W]`` -> what the ADC reads (quantised to
    ``2 ** bits`` levels over [0, 1]), times the digital gain. Image ``i``'s noise comes from
    ``generators[i]``."""
    return torch.stack([_image_sensor(x[i], p, i, g) for i, g in enumerate(generators)])


def process(x: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
    """Linear camera RGB ``[B, 3, H, W]`` -> display values (8-bit levels when
    ``quantize_output``). White balance: the daylight gains, times a grey-world correction of
    strength ``awb`` (0: none, 1: equal channel means) computed on this raw image."""
    wb = _wb_gains(p).view(-1, 3)                                          # [B, 3]
    if torch.any(p["awb"] > 0):
        means = x.mean((2, 3)).clamp_min(1e-12) * wb                       # [B, 3]
        wb = wb * (means[:, 1:2] / means) ** p["awb"].view(-1, 1)
    x = _apply_ccm(x, torch.linalg.inv(p["rgb2cam"]) * wb.view(-1, 1, 3))  # inv(ccm) @ diag(wb)
    if torch.any(p["black_offset"] != 0):
        x = x.sub_(p["black_offset"] / p["white_level"])
    x = x.clamp_min_(1e-8).pow_(1.0 / p["gamma"])
    if p["apply_tone"]:
        x = x.clamp_(0.0, 1.0)
        x = x * x * (3.0 - 2.0 * x)
    if p["quantize_output"]:
        x = x.clamp_(0.0, 1.0).mul_(255.0).round_().div_(255.0)
    return x


# ---------------------------------------------------------------------------------------------
# entry points


def image_seeds(n: int, generator: torch.Generator | None) -> list[int]:
    """``n`` per-image seeds drawn from ``generator`` (torch's default one when None)."""
    return [int(s) for s in torch.randint(0, 2 ** 62, (n,), generator=generator)]


def darken(images: torch.Tensor, preset: str = "darkface",
           generator: torch.Generator | None = None, overrides: Mapping[str, Any] | None = None,
           seeds: Sequence[int] | None = None) -> torch.Tensor:
    """Night copies of ``images`` (float RGB in [0, 1], ``[B, 3, H, W]`` or ``[3, H, W]``): same
    shape and dtype, values in [0, 1] on 8-bit levels (unless ``quantize_output = 0``). uint8
    images (0-255) are accepted too, and come back as uint8. Images on 8-bit levels (uint8, or
    floats that are all exactly ``k / 255``) decode through a 256-entry table: the fast path.

    ``overrides`` maps parameter names to a fixed value, a (lo, hi) range or a spec (see
    :func:`resolve`). Image ``i`` draws everything from ``torch.Generator().manual_seed(seeds[i])``;
    without ``seeds`` they are drawn from ``generator``. float64 images are processed in float64,
    everything else in float32.
    """
    single = images.dim() == 3
    x = images.unsqueeze(0) if single else images
    if x.dim() != 4 or x.shape[1] != 3:
        raise CameraError(f"darken expects [B, 3, H, W] or [3, H, W] RGB, got "
                          f"{tuple(images.shape)}")
    if x.device.type != "cpu":
        raise CameraError("darken runs on the CPU (torch generators); move the batch to cpu")
    table = resolve(preset, overrides)
    seeds = list(seeds) if seeds is not None else image_seeds(len(x), generator)
    if len(seeds) != len(x):
        raise CameraError(f"darken got {len(seeds)} seeds for {len(x)} images")
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    p = stack_params([draw_params(table, g) for g in gens], dtype=work)
    levels = x if x.dtype == torch.uint8 else _eight_bit_levels(x.to(work))
    out = simulate(x.to(work).div_(255.0) if x.dtype == torch.uint8 else x.to(work), p, gens,
                   levels)
    if x.dtype == torch.uint8:
        out = out.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
    else:
        out = out.to(images.dtype)
    return out[0] if single else out


def _eight_bit_levels(x: torch.Tensor) -> torch.Tensor | None:
    """``x`` as 0-255 integers when every value is exactly ``k / 255`` (a decoded 8-bit image),
    else None: such images take :func:`to_linear`'s table."""
    levels = (x * 255.0).round_().clamp_(0.0, 255.0)
    if not torch.equal(levels / 255.0, x):
        return None
    return levels.to(torch.uint8)


def simulate(x: torch.Tensor, p: Mapping[str, Any], generators: Sequence[torch.Generator],
             levels: torch.Tensor | None = None) -> torch.Tensor:
    """The whole camera for drawn parameters ``p`` (from :func:`stack_params`); ``levels``: the
    images as 0-255 integers when they are 8-bit (see :func:`to_linear`)."""
    raw = unprocess(x, p, levels, bayer=bool(p["mosaic"]))
    raw = sensor(raw, p, generators)
    lin = demosaic(raw) if p["mosaic"] else raw
    return process(lin, p)


def darken_uint8(image_bgr: np.ndarray, preset: str = "darkface", seed: int = 0,
                 overrides: Mapping[str, Any] | None = None) -> np.ndarray:
    """:func:`darken` for one HxWx3 uint8 BGR image (OpenCV convention), seeded by ``seed``."""
    if image_bgr.dtype != np.uint8 or image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        raise CameraError(f"darken_uint8 expects an HxWx3 uint8 BGR image, got "
                          f"{image_bgr.dtype} {image_bgr.shape}")
    rgb = torch.from_numpy(np.ascontiguousarray(image_bgr[:, :, ::-1])).permute(2, 0, 1)
    out = darken(rgb, preset, overrides=overrides, seeds=[seed])              # uint8 in and out
    return np.ascontiguousarray(out.permute(1, 2, 0).numpy()[:, :, ::-1])


def overrides_from_config(section: Mapping[str, Any]) -> tuple[str, dict]:
    """``(preset, overrides)`` from the config's ``CAMERA`` section: ``PRESET`` and one key per
    parameter, where ``[]`` / ``''`` keep the preset's draw, ``[v]`` fixes it, ``[lo, hi]`` is a
    range and ``['loguniform', lo, hi]``-style lists are full specs. Errors name the key."""
    preset = section.get("PRESET", "darkface")
    overrides = {}
    for key, value in section.items():
        if key == "PRESET" or value in ([], "", None):
            continue
        if key not in PARAM_NAMES:
            raise CameraError(f"config key CAMERA.{key} is not a camera parameter; known: "
                              f"{', '.join(PARAM_NAMES)}")
        overrides[key] = tuple(value) if isinstance(value, list) else value
    try:
        resolve(preset, overrides)
    except CameraError as err:
        raise CameraError(f"config section CAMERA: {err}") from None
    return preset, overrides


# ---------------------------------------------------------------------------------------------
# statistics of a night image (the calibration targets of the darkface preset)

# A real DARK FACE frame (the night street shipped with the HLA-Face code), and the ranges the
# darkface preset must reach on daylight photos.
DARKFACE_FRAME = {"mean_luma": 3.6, "median": 1.0, "zeros": 0.49, "p95": 16.0, "p99": 41.0,
                  "mean_b": 3.1, "mean_g": 3.5, "mean_r": 4.0, "flat_std": (3.4, 4.2)}
DARKFACE_TARGETS = {"mean_luma": (2.0, 6.0), "zeros": (0.35, 0.60), "p99": (25.0, 60.0),
                    "flat_std": (3.4, 4.2)}


def luma(image_bgr: np.ndarray) -> np.ndarray:
    """8-bit luma of an HxWx3 uint8 BGR image: OpenCV's grey (BT.601 weights), the one luma of
    the calibration, the night benchmark and the night mode."""
    return cv2.cvtColor(np.ascontiguousarray(image_bgr), cv2.COLOR_BGR2GRAY)


def night_statistics(dark_bgr: np.ndarray) -> dict:
    """Mean/median/95th/99th percentile of the luma, its share of exact zeros, channel means."""
    y = luma(dark_bgr).astype(np.float64)
    b, g, r = (dark_bgr[..., c].astype(np.float64).mean() for c in range(3))
    return {"mean_luma": y.mean(), "median": float(np.median(y)), "zeros": float((y == 0).mean()),
            "p95": float(np.percentile(y, 95)), "p99": float(np.percentile(y, 99)),
            "mean_b": b, "mean_g": g, "mean_r": r}


def flat_patch_noise(dark_bgr: np.ndarray, clean_bgr: np.ndarray, size: int = 8,
                     flat: float = 2.0, lo: float = 8.0, hi: float = 14.0) -> np.ndarray:
    """Luma std of the dark image in ``size`` x ``size`` blocks that are flat in the clean image
    (clean luma std below ``flat``) and whose dark mean lies in [lo, hi]: the noise there."""
    h, w = (s - s % size for s in dark_bgr.shape[:2])

    def blocks(img):
        y = luma(img[:h, :w]).astype(np.float64)
        return y.reshape(h // size, size, w // size, size).transpose(0, 2, 1, 3).reshape(
            -1, size * size)
    d, c = blocks(dark_bgr), blocks(clean_bgr)
    keep = (c.std(1) < flat) & (d.mean(1) >= lo) & (d.mean(1) <= hi)
    return d[keep].std(1)
