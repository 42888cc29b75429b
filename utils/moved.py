"""Import paths from before the layout move (docs/ARCHITECTURE.md), kept for one release.

Code and notebooks outside the project may still write ``from layers.multibox_loss import
...``; importing such a name gives the module at its new place (the same module object, so
patching one patches the other) with a :class:`DeprecationWarning` naming the new path. Nothing
in the project imports an old path (tests/test_architecture.py checks it). Installed by the
``__init__`` of the packages the modules left (``models``, ``layers``, ``data``); this module
imports nothing of the project (only names as strings).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED: dict[str, str] = {
    "models.detector": "models.interface",
    "models.factory": "models.registry",
    "models.dsfd_vgg": "models.dsfd.net",
    "layers.anchors": "models.dsfd.anchors",
    "layers.l2norm": "models.dsfd.l2norm",
    "layers.multibox_loss": "models.dsfd.loss",
    "layers.detect": "models.dsfd.postprocess",
    "layers.yunet_loss": "models.yunet.loss",
    "layers.yunet_postprocess": "models.yunet.postprocess",
    "data.yunet_transforms": "models.yunet.transforms",
    "layers.retinaface_loss": "models.retinaface.loss",
    "layers.retinaface_priors": "models.retinaface.priors",
    "data.retinaface_transforms": "models.retinaface.transforms",
    "models.hla_trainer": "adapt.hla.trainer",
    "models.moco": "adapt.hla.moco",
    "models.heads": "adapt.hla.heads",
    "models.ssl_tasks": "adapt.hla.tasks",
    "data.ssl_tasks": "adapt.hla.sources",
    "models.ema": "adapt.pseudo.ema",
    "data.pseudo_labels": "adapt.pseudo.labels",
    "data.strong_aug": "adapt.pseudo.strong_view",
    "models.enhancement": "lowlevel.enhancement",
    "models.pix2pix": "lowlevel.pix2pix",
    "layers.enhance_losses": "lowlevel.losses",
    "data.enhance_baselines": "lowlevel.classic",
    "data.noise_synthesis": "lowlevel.noise",
}


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds only the old names of :data:`MOVED` (after every other finder has failed)."""

    def find_spec(self, name, path=None, target=None):
        if name not in MOVED:
            return None
        return importlib.util.spec_from_loader(name, self)

    def create_module(self, spec):
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new} (docs/ARCHITECTURE.md); the old path goes in "
                      f"a later release", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module) -> None:
        """The module was executed under its new name."""


def install() -> None:
    """Let the old names of :data:`MOVED` import (idempotent)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
