"""The training dataset of every detector of ``models/factory.py``, under the same name.

Each factory is ``(cfg, list_file, root, seed) -> Dataset`` whose samples are ``(input [3, S, S]
float32, target [n, 5] or [n, 15], skipped)`` in the conventions of ``models/detector.py``,
augmented as that detector's reference trains it.
"""
from __future__ import annotations

from typing import Callable


def _wider_detection(cfg, list_file, root, seed):
    from data.widerface import WIDERDetection
    return WIDERDetection(str(list_file), cfg.AUG, root=root, train=True, seed=seed)


def _yunet(cfg, list_file, root, seed):
    from data.yunet_transforms import build_yunet_dataset
    return build_yunet_dataset(cfg, list_file, root, seed)


def _retinaface(cfg, list_file, root, seed):
    from data.retinaface_transforms import build_retinaface_dataset
    return build_retinaface_dataset(cfg, list_file, root, seed)


TRAIN_DATASETS: dict[str, Callable] = {
    "dsfd_vgg": _wider_detection,
    "yunet_n": _yunet,
    "yunet_s": _yunet,
    "retinaface_mnet": _retinaface,
    "retinaface_r50": _retinaface,
}


def build_train_dataset(cfg, list_file, root, seed):
    name = cfg.MODEL.NAME
    if name not in TRAIN_DATASETS:
        raise ValueError(f"config key MODEL.NAME={name!r} has no training dataset; known: "
                         f"{sorted(TRAIN_DATASETS)}")
    return TRAIN_DATASETS[name](cfg, list_file, root, seed)
