"""Which darkness the training pipelines simulate: ``AUG.lowlight_model``.

``AUG.lowlight_prob`` replaces a training image by a dark copy of itself before any other
augmentation (the boxes stay valid: same size, same geometry). The copy comes from

* ``toy`` (the default, and what every earlier run used): ``data/lowlight.py``, a gamma, exposure
  and Poisson-Gaussian model that leaves images of mean luma about 25-45/255;
* ``camera``: the physical camera model of ``data/camera.py`` with the preset ``CAMERA.PRESET``
  and the ranges of the other ``CAMERA.*`` keys (``data.camera.overrides_from_config``); its
  ``darkface`` preset reproduces the statistics of real DARK FACE frames.

:func:`camera_spec` turns the config into a small picklable :class:`CameraSpec` that the datasets
carry into their loader workers (None for ``toy``, so the toy path is the code it always was).
Both models draw only from the generator they are given.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

LOWLIGHT_MODELS = ("toy", "camera")


@dataclass(frozen=True)
class CameraSpec:
    """A camera preset and its parameter overrides (sorted ``(name, value)`` pairs)."""
    preset: str = "darkface"
    overrides: tuple = ()

    def as_dict(self) -> dict:
        return dict(self.overrides)


def camera_spec(cfg, force: bool = False) -> CameraSpec | None:
    """The camera of ``cfg`` (``CAMERA`` section) when ``AUG.lowlight_model`` is 'camera' (or
    ``force``), else None. Errors name the key."""
    model = cfg.AUG.get("lowlight_model", "toy")
    if model not in LOWLIGHT_MODELS:
        raise ValueError(f"config key AUG.lowlight_model={model!r} must be one of "
                         f"{', '.join(LOWLIGHT_MODELS)}")
    if model == "toy" and not force:
        return None
    if "CAMERA" not in cfg:
        raise ValueError("the camera model needs the config section CAMERA (data/config.py), "
                         "which this config lacks")
    from data.camera import overrides_from_config
    preset, overrides = overrides_from_config(cfg.CAMERA)
    return CameraSpec(preset, tuple(sorted(overrides.items())))


def darken_tensor(rgb: torch.Tensor, camera: CameraSpec, seeds: Sequence[int]) -> torch.Tensor:
    """Camera-model copies of ``rgb`` ``[B, 3, H, W]`` float in [0, 1] (any device; the model
    runs on the CPU), image ``b`` seeded by ``seeds[b]``; same shape, dtype and device."""
    from data.camera import darken
    out = darken(rgb.detach().float().cpu(), camera.preset, overrides=camera.as_dict(),
                 seeds=[int(s) for s in seeds])
    return out.to(device=rgb.device, dtype=rgb.dtype)


def camera_low_light(rgb_uint8: np.ndarray, camera: CameraSpec,
                     rng: np.random.Generator) -> np.ndarray:
    """The camera-model copy of an HxWx3 uint8 RGB image (uint8 RGB), seeded by one draw of
    ``rng``."""
    if rgb_uint8.dtype != np.uint8 or rgb_uint8.ndim != 3 or rgb_uint8.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {rgb_uint8.dtype} "
                         f"{rgb_uint8.shape}")
    seed = int(rng.integers(2 ** 62))
    x = torch.from_numpy(np.array(rgb_uint8)).permute(2, 0, 1)[None].float() / 255.0   # a copy
    out = darken_tensor(x, camera, [seed])[0]
    out = torch.round(out.clamp(0.0, 1.0) * 255.0).to(torch.uint8)
    return np.ascontiguousarray(out.permute(1, 2, 0).numpy())
