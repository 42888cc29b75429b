"""The student's strong view of a pseudo-labelled batch: photometric only, on the GPU.

Pseudo-label self-training (docs/DUAL_TEACHER.md) shows the teacher a *weak* view of each
target image and trains the student on a *strong* view of the same image (FixMatch, Unbiased
Teacher; DA-LLPose darkens the pseudo-labelled people further). Here the weak view is the
detector's own training augmentation (crop, flip, colour distortion, resize: the batch its
dataset makes) and the strong view is that batch with photometric changes only, so a box of the
weak view (a fixed pseudo label carried through the crop, or a box the EMA teacher finds on the
weak view) is valid on the strong view without any remapping.

:func:`strong_augment` works on the already normalised batch ``[B, 3, H, W]``: it undoes the
detector's input normalisation (``models.interface.InputSpec``: channel order, mean, std), applies
per image, in this order,

1. colour jitter with probability ``jitter_prob``: brightness, contrast and saturation factors
   drawn from ``[1 - s, 1 + s]`` (torchvision's ColorJitter ranges);
2. extra low light with probability ``lowlight_prob`` (0 by default): the model of
   data/lowlight.py in tensor form, milder: back to linear light (gamma 2.2), exposure times
   ``U(exposure)``, Poisson-Gaussian sensor noise (gain ``a`` log-uniform in ``shot_noise``, read
   noise ``sigma_r``, Gaussian approximation of the Poisson term), gamma-encoded again;
3. Gaussian blur with probability ``blur_prob``, sigma from ``blur_sigma`` (a separable
   ``blur_kernel``-tap kernel per image);
4. additive Gaussian noise with probability ``noise_prob``, sigma from ``noise_sigma`` (0..255
   units);

clamps to the pixel range [0, 255] and normalises again. Each image draws from its own
``torch.Generator``, as many numbers whatever the outcomes (only the switched-on steps count),
so its strong view is a pure function of that generator's seed. :func:`sample_generators`
seeds them from ``(RUN.SEED, step, position of the image in the step's global batch)``: a
resumed run is exact, and under DDP each rank's images get the draws they get in one process
(rank r's images are positions ``r * B_local ...`` of the global batch, data/samplers.py), so N
processes run the same optimisation as one.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

LUMA_RGB = (0.299, 0.587, 0.114)       # ITU-R BT.601, the weights of PIL's / OpenCV's grey
GAMMA = 2.2                            # data/lowlight.py's display gamma


@dataclass(frozen=True)
class StrongAugParams:
    """Probabilities and ranges of :func:`strong_augment` (ranges are ``(low, high)``)."""
    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    lowlight_prob: float = 0.0
    exposure: tuple[float, float] = (0.3, 0.7)            # linear light, on top of the dark
    shot_noise: tuple[float, float] = (1 / 1500, 1 / 250)  # data/lowlight.py's range
    read_noise: tuple[float, float] = (0.0005, 0.003)      # idem
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 1.5)
    blur_kernel: int = 5
    noise_prob: float = 0.5
    noise_sigma: tuple[float, float] = (2.0, 8.0)


def sample_generators(seed: int, step: int, first: int, count: int,
                      device: torch.device | str = "cpu",
                      name: str = "strong_aug") -> list[torch.Generator]:
    """One generator per image on ``device``, seeded by ``(seed, step, position, name)``, the
    positions ``first .. first + count - 1`` in the step's global batch."""
    out = []
    for position in range(first, first + count):
        state = np.random.SeedSequence([int(seed), int(step), int(position),
                                        zlib.crc32(name.encode())])
        value = int(state.generate_state(1, np.uint64)[0]) & (2 ** 63 - 1)
        out.append(torch.Generator(device=torch.device(device)).manual_seed(value))
    return out


def to_pixels(x: Tensor, channel_order: str, mean, std) -> tuple[Tensor, Tensor]:
    """Undo the normalisation of ``x`` ``[B, 3, H, W]``: pixels in 0..255 (the network's
    channel order) and the grey weights in that order ``[1, 3, 1, 1]``."""
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    luma = LUMA_RGB if channel_order == "RGB" else LUMA_RGB[::-1]
    grey = torch.tensor(luma, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return x.float() * s + m, grey


def from_pixels(p: Tensor, mean, std) -> Tensor:
    m = torch.tensor(mean, dtype=torch.float32, device=p.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=p.device).view(1, 3, 1, 1)
    return (p - m) / s


def _uniform(u: Tensor, lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * u


def _log_uniform(u: Tensor, lo: float, hi: float) -> Tensor:
    return torch.exp(_uniform(u, float(np.log(lo)), float(np.log(hi))))


def colour_jitter(p: Tensor, grey: Tensor, factors: Tensor, on: Tensor) -> Tensor:
    """Brightness, contrast, saturation with ``factors`` ``[B, 3]`` where ``on`` ``[B]``."""
    f = torch.where(on[:, None], factors, torch.ones_like(factors)).view(-1, 3, 1, 1, 1)
    p = p * f[:, 0]
    mean_grey = (p * grey).sum(1, keepdim=True).mean((2, 3), keepdim=True)     # [B, 1, 1, 1]
    p = (p - mean_grey) * f[:, 1] + mean_grey
    g = (p * grey).sum(1, keepdim=True)                                         # [B, 1, H, W]
    return ((p - g) * f[:, 2] + g).clamp(0, 255)


def low_light(p: Tensor, exposure: Tensor, gain: Tensor, read: Tensor, on: Tensor,
              noise: Tensor) -> Tensor:
    """Darker and noisier where ``on`` ``[B]``; ``exposure``, ``gain``, ``read`` ``[B]``,
    ``noise`` ``[B, 3, H, W]`` standard normal draws."""
    lin = (p / 255.0).clamp(0, 1) ** GAMMA * exposure.view(-1, 1, 1, 1)
    var = gain.view(-1, 1, 1, 1) * lin + read.view(-1, 1, 1, 1) ** 2
    dark = ((lin + var.sqrt() * noise).clamp(0, 1) ** (1 / GAMMA)) * 255.0
    return torch.where(on.view(-1, 1, 1, 1), dark, p)


def gaussian_blur(p: Tensor, sigma: Tensor, on: Tensor, taps: int) -> Tensor:
    """A separable Gaussian of ``sigma`` ``[B]`` (a delta where not ``on``), reflect-padded."""
    B, C, H, W = p.shape
    r = taps // 2
    d = torch.arange(-r, r + 1, dtype=p.dtype, device=p.device)
    k = torch.exp(-d[None] ** 2 / (2 * sigma[:, None] ** 2))                    # [B, taps]
    k = torch.where(on[:, None], k / k.sum(1, keepdim=True), (d == 0).to(p.dtype)[None])
    k = k.repeat_interleave(C, 0)                                               # [B*C, taps]
    x = p.reshape(1, B * C, H, W)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k[:, None, None, :], groups=B * C)
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k[:, None, :, None], groups=B * C)
    return x.view(B, C, H, W)


def _draws(gens: list[torch.Generator], shape, lowlight: bool, noise: bool, device):
    """Per image: 12 uniform draws, then the sensor and additive noise fields when used."""
    u, sensor, additive = [], [], []
    for g in gens:
        u.append(torch.rand(12, generator=g, device=device))
        if lowlight:
            sensor.append(torch.randn(shape, generator=g, device=device))
        if noise:
            additive.append(torch.randn(shape, generator=g, device=device))
    stack = lambda t: torch.stack(t) if t else None          # noqa: E731
    return torch.stack(u), stack(sensor), stack(additive)


def strong_augment(x: Tensor, channel_order: str, mean, std, gens: list[torch.Generator],
                   params: StrongAugParams = StrongAugParams()) -> Tensor:
    """The strong view of the normalised batch ``x`` ``[B, 3, H, W]`` (see the module doc);
    same shape, float32, normalised like ``x``. ``gens``: one generator per image, on ``x``'s
    device (:func:`sample_generators`)."""
    if len(gens) != x.shape[0]:
        raise ValueError(f"strong_augment: {len(gens)} generators for {x.shape[0]} images")
    q = params
    u, sensor, noise = _draws(gens, x.shape[1:], q.lowlight_prob > 0, q.noise_prob > 0,
                              x.device)
    p, grey = to_pixels(x, channel_order, mean, std)
    spans = torch.tensor([q.brightness, q.contrast, q.saturation], device=x.device)
    p = colour_jitter(p, grey, 1 + spans * (2 * u[:, 1:4] - 1), u[:, 0] < q.jitter_prob)
    if sensor is not None:
        p = low_light(p, _uniform(u[:, 5], *q.exposure), _log_uniform(u[:, 6], *q.shot_noise),
                      _uniform(u[:, 7], *q.read_noise), u[:, 4] < q.lowlight_prob, sensor)
    if q.blur_prob > 0:
        p = gaussian_blur(p, _uniform(u[:, 9], *q.blur_sigma), u[:, 8] < q.blur_prob,
                          q.blur_kernel)
    if noise is not None:
        sigma = torch.where(u[:, 10] < q.noise_prob, _uniform(u[:, 11], *q.noise_sigma),
                            torch.zeros_like(u[:, 11]))
        p = p + sigma.view(-1, 1, 1, 1) * noise
    return from_pixels(p.clamp(0, 255), mean, std)
