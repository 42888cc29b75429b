"""Detector registry: a new backbone is a new file plus one entry here and a config value."""
from __future__ import annotations

from torch import nn

from models.dsfd_vgg import DSFD

DETECTORS = {
    "dsfd_vgg": DSFD,
}


def build_detector(model_cfg, num_classes: int = 2) -> nn.Module:
    """Build ``MODEL.NAME`` with ``MODEL.WIDTH`` (weights are loaded by the caller)."""
    name = model_cfg.NAME
    if name not in DETECTORS:
        raise ValueError(f"config key MODEL.NAME={name!r} is not one of {sorted(DETECTORS)}")
    return DETECTORS[name](num_classes=num_classes, width=model_cfg.WIDTH)
