"""Zero-shot day-to-night fine-tuning: a detector learns the night from labelled daylight images.

With ``ZERO_SHOT.ENABLE`` train.py trains every detection batch twice over: the clean batch as
its dataset augments it, and its **dark copy** made by the camera model (``data/camera.py``,
``CAMERA.PRESET`` and the ``CAMERA.*`` ranges) on the already augmented tensors. The darkening is
photometric only, so the clean boxes (and landmarks) are the dark copy's labels unchanged.
``ZERO_SHOT.CLEAN=False`` trains on the dark copies alone (DAI-Net's detection loss sees only
its dark images).

Optionally (``ZERO_SHOT.CONSISTENCY`` > 0) a feature-consistency loss ties the two views of the
same image together. It is DAI-Net's "mutual feature alignment" made detector-agnostic: each
map of the detector interface's ``features(x)`` (the maps its heads read) is averaged over its
positions to one value per channel; with temperature ``T`` (``ZERO_SHOT.TEMPERATURE``, DAI-Net's
4) the softmax over channels of the clean and of the dark view are compared by the symmetric
Kullback-Leibler divergence ``T^2 (KL(p_clean || p_dark) + KL(p_dark || p_clean))`` per image,
averaged over the images and the levels, both views with gradient (as DAI-Net). DAI-Net aligns
the first VGG block of DSFD (its reflectance decoder reads that block); the interface's maps are
what every detector family here exposes, and they are where the faces are scored.

The dark copy of image ``i`` of the step's global batch is drawn with the camera seed of
``(RUN.SEED, step, i)``: a resumed run sees the same dark images, and N DDP processes the same as
one. The camera model runs on the CPU (``data/camera.py``), so the copies are made on the
loader's CPU batch before it moves to the device.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data.lowlight_model import CameraSpec, camera_spec, darken_tensor
from adapt.pseudo.strong_view import from_pixels, to_pixels

CONSISTENCY_TERM = "zs_consistency"          # the loss-dict name (already weighted)
SEED_TAG = 0x2E0_5407                          # keeps these seeds apart from other streams'


def symmetric_kl(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """``T^2 (KL(p_a || p_b) + KL(p_b || p_a))`` of the softmaxes of ``a``, ``b`` ``[N, C]``
    over C at temperature T, averaged over N."""
    la, lb = F.log_softmax(a / temperature, 1), F.log_softmax(b / temperature, 1)
    kl_ab = (la.exp() * (la - lb)).sum(1)
    kl_ba = (lb.exp() * (lb - la)).sum(1)
    return (kl_ab + kl_ba).mean() * temperature ** 2


def feature_consistency(clean: list[Tensor], dark: list[Tensor], temperature: float) -> Tensor:
    """The module docstring's loss between two lists of maps ``[N, C, H, W]`` (one per level),
    averaged over the levels; 0 for identical lists."""
    if len(clean) != len(dark) or not clean:
        raise ValueError(f"feature_consistency needs two equally long, non-empty lists of maps, "
                         f"got {len(clean)} and {len(dark)}")
    terms = [symmetric_kl(c.float().mean((2, 3)), d.float().mean((2, 3)), temperature)
             for c, d in zip(clean, dark)]
    return torch.stack(terms).mean()


def image_seeds(seed: int, step: int, first: int, count: int) -> list[int]:
    """One camera seed per image from ``(seed, step, position in the global batch)``, the
    positions ``first .. first + count - 1``."""
    out = []
    for position in range(first, first + count):
        state = np.random.SeedSequence([int(seed), int(step), int(position), SEED_TAG])
        out.append(int(state.generate_state(1, np.uint64)[0]) & (2 ** 62 - 1))
    return out


def dark_view(images: Tensor, spec, camera: CameraSpec, seeds: list[int]) -> Tensor:
    """The camera-model copy of a normalised batch ``[B, 3, H, W]`` (``spec``: the detector's
    ``InputSpec``), image ``b`` seeded by ``seeds[b]``; normalised the same way."""
    pixels, _ = to_pixels(images, spec.channel_order, spec.mean, spec.std)   # network order
    bgr = spec.channel_order == "BGR"
    rgb = (pixels.flip(1) if bgr else pixels).div(255.0).clamp(0.0, 1.0)
    dark = darken_tensor(rgb, camera, seeds) * 255.0
    return from_pixels(dark.flip(1) if bgr else dark, spec.mean, spec.std).to(images.dtype)


@contextmanager
def batchnorm_statistics_kept(module: nn.Module):
    """Run an extra training-mode pass without moving the BatchNorm running statistics (the
    consistency pass re-reads a batch the detection pass has counted already)."""
    norms = [m for m in module.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
             and m.running_mean is not None]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in norms]
    try:
        yield
    finally:
        for m, (mean, var, count) in zip(norms, saved):
            m.running_mean.data.copy_(mean)
            m.running_var.data.copy_(var)
            m.num_batches_tracked.data.copy_(count)


@dataclass
class ZeroShot:
    """What ``ZERO_SHOT.ENABLE`` adds to a train.py step (see the module docstring)."""
    seed: int
    spec: Any                              # models.interface.InputSpec
    camera: CameraSpec
    clean: bool = True
    weight: float = 0.0                    # ZERO_SHOT.CONSISTENCY
    temperature: float = 4.0

    def views(self, images: Tensor, targets: list, step: int, rank: int):
        """``(batch, targets, n_clean)``: the clean batch followed by its dark copy (or the
        dark copy alone), each dark image with its clean image's targets. ``step`` is the
        number of steps done before this one; ``rank`` places the images in the global batch."""
        n = len(images)
        with torch.no_grad():
            dark = dark_view(images, self.spec, self.camera,
                             image_seeds(self.seed, step, rank * n, n))
        if not self.clean:
            return dark.contiguous(), list(targets), 0
        return torch.cat([images, dark]), list(targets) + list(targets), n

    def losses(self, net: nn.Module, batch: Tensor, n_clean: int) -> dict:
        """``{zs_consistency: weight * loss}`` between the clean half and the dark half of
        ``batch`` (one more pass through ``net.features``), or ``{}`` when off."""
        if self.weight <= 0 or n_clean == 0:
            return {}
        with batchnorm_statistics_kept(net):
            feats = net.features(batch)
        clean = [f[:n_clean] for f in feats]
        dark = [f[n_clean:] for f in feats]
        return {CONSISTENCY_TERM: self.weight * feature_consistency(clean, dark,
                                                                    self.temperature)}


def build_zero_shot(cfg, spec) -> ZeroShot | None:
    """The :class:`ZeroShot` of ``cfg`` (``spec``: the detector's InputSpec), None when
    ZERO_SHOT.ENABLE is off."""
    z = cfg.ZERO_SHOT
    if not z.ENABLE:
        return None
    if not z.CLEAN and z.CONSISTENCY > 0:
        raise ValueError("config key ZERO_SHOT.CONSISTENCY > 0 needs ZERO_SHOT.CLEAN=True (the "
                         "loss compares the clean and the dark view of each image)")
    return ZeroShot(int(cfg.RUN.SEED), spec, camera_spec(cfg, force=True), bool(z.CLEAN),
                    float(z.CONSISTENCY), float(z.TEMPERATURE))
