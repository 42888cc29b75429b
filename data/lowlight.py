"""Simulated low-light capture: how the demo's dark "target domain" images are made.

DARK FACE images are real night-time photographs. For the demo dataset (``tools/make_demo_data.py``)
we make dark images from clean ones with a small physical model of an under-exposed camera, applied
per image with its own random draws:

1. **Back to linear light.** The clean sRGB-like image ``x`` in [0, 1] is mapped to linear
   irradiance with a plain power law, ``L = x ** gamma`` (``gamma = 2.2``; the exact sRGB curve
   has a small linear toe that does not matter here).
2. **Less light.** The scene is exposed ``exposure`` times as long (or as brightly) as the clean
   shot: ``L_dark = exposure * c * L``, with ``exposure`` drawn log-uniformly from
   ``[0.03, 0.12]`` (2 to 5 stops under) and a mild per-channel colour cast ``c`` (each of R, G, B
   multiplied by an independent factor from ``[1 - color_cast, 1 + color_cast]``, default 0.06),
   standing in for the white-balance shift of artificial night lighting.
3. **Sensor noise (Poisson-Gaussian).** A pixel that receives signal ``y`` (linear, full scale 1)
   collects ``y / a`` photo-electrons, so the recorded value is
   ``a * Poisson(y / a) + N(0, sigma_r ** 2)``. Its variance is ``a * y + sigma_r ** 2``, the
   standard Poisson-Gaussian model of raw sensor data. ``a`` (``shot_noise``, the signal per
   photo-electron, i.e. ``1 / full_well``) is drawn log-uniformly from ``[1/1500, 1/250]``;
   ``sigma_r`` (``read_noise``, the signal-independent read/thermal noise) uniformly from
   ``[0.0005, 0.003]``. Larger ``a`` means fewer photons, hence stronger, signal-dependent grain.
   The noise is independent per channel, like the chroma noise of a demosaiced sensor.
4. **Back to display values.** The noisy signal is clipped to [0, 1], gamma-encoded again
   (``** (1 / gamma)``) and rounded to ``uint8``. Because the gamma curve lifts the shadows, a
   typical image's mean drops from about 110 to about 25-45: dark, but not black, with visible
   noise in the shadows, which is what DARK FACE looks like without enhancement.

There is deliberately no amplification after the noise (the dark images stay dark, as in DARK FACE)
and no blur or JPEG stage (the demo writes PNG).

Every range can be overridden by keyword (a float fixes the value; ``0`` switches a noise term or
the colour cast off). Given the same input and the same ``numpy.random.Generator`` state the output
is identical: all draws come from that generator, in a fixed order.
"""
from __future__ import annotations

from typing import Tuple, Union

import numpy as np

Range = Union[float, Tuple[float, float]]

# The defaults, in one place so the demo's README can print them.
DEFAULT_PARAMS = {
    "gamma": 2.2,
    "exposure": (0.03, 0.12),            # linear-light scale, log-uniform (2 to 5 stops darker)
    "shot_noise": (1 / 1500, 1 / 250),   # Poisson gain a = 1 / full-well electrons, log-uniform
    "read_noise": (0.0005, 0.003),       # Gaussian read-noise std (linear, full scale 1), uniform
    "color_cast": 0.06,                  # per-channel gain in [1 - c, 1 + c], uniform
}


def _draw(rng: np.random.Generator, value: Range, log: bool) -> float:
    """A float is returned as is; a (lo, hi) pair is sampled (log-)uniformly."""
    if np.isscalar(value):
        return float(value)
    lo, hi = (float(v) for v in value)
    if lo == hi:
        return lo
    if log:
        if lo <= 0:
            raise ValueError(f"a log-uniform range needs positive bounds, got {value!r}")
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    return float(rng.uniform(lo, hi))


def sample_low_light_params(rng: np.random.Generator, *, gamma: float = DEFAULT_PARAMS["gamma"],
                            exposure: Range = DEFAULT_PARAMS["exposure"],
                            shot_noise: Range = DEFAULT_PARAMS["shot_noise"],
                            read_noise: Range = DEFAULT_PARAMS["read_noise"],
                            color_cast: float = DEFAULT_PARAMS["color_cast"]) -> dict:
    """Draw one image's degradation parameters (in a fixed order, from ``rng``)."""
    return {
        "gamma": float(gamma),
        "exposure": _draw(rng, exposure, log=True),
        "shot_noise": _draw(rng, shot_noise, log=True),
        "read_noise": _draw(rng, read_noise, log=False),
        "channel_gain": rng.uniform(1.0 - color_cast, 1.0 + color_cast, size=3),
    }


def apply_low_light(rgb_uint8: np.ndarray, params: dict, rng: np.random.Generator) -> np.ndarray:
    """Apply the model of the module docstring with fixed ``params``; ``rng`` draws the noise."""
    if rgb_uint8.dtype != np.uint8 or rgb_uint8.ndim != 3 or rgb_uint8.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {rgb_uint8.dtype} "
                         f"{rgb_uint8.shape}")
    gamma = params["gamma"]
    decode = (np.arange(256, dtype=np.float64) / 255.0) ** gamma            # [256] lookup table
    linear = decode[rgb_uint8]                                              # [H, W, 3]
    signal = linear * (params["exposure"] * params["channel_gain"])        # gain: [3] broadcast

    a = params["shot_noise"]
    if a > 0:
        # Poisson(y / a) photo-electrons, scaled back to signal units: mean y, variance a * y.
        signal = a * rng.poisson(signal / a).astype(np.float64)
    if params["read_noise"] > 0:
        signal = signal + rng.normal(0.0, params["read_noise"], size=signal.shape)

    encoded = np.clip(signal, 0.0, 1.0) ** (1.0 / gamma)
    return np.round(encoded * 255.0).astype(np.uint8)


def simulate_low_light(rgb_uint8: np.ndarray, rng: np.random.Generator, **params) -> np.ndarray:
    """A dark, noisy copy of an HxWx3 uint8 RGB image (same shape, uint8).

    Keyword arguments override :data:`DEFAULT_PARAMS` (``gamma``, ``exposure``, ``shot_noise``,
    ``read_noise``, ``color_cast``); a ``(lo, hi)`` pair is a range to sample from, a float a fixed
    value. Deterministic given ``rng``'s state. See the module docstring for the model.
    """
    unknown = set(params) - set(DEFAULT_PARAMS)
    if unknown:
        raise TypeError(f"unknown low-light parameter(s) {sorted(unknown)}; "
                        f"known: {sorted(DEFAULT_PARAMS)}")
    drawn = sample_low_light_params(rng, **params)
    return apply_low_light(rgb_uint8, drawn, rng)
