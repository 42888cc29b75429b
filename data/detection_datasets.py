"""The training dataset of every detector of ``models/factory.py``, under the same name.

Each factory is ``(cfg, list_file, root, seed, records=None) -> Dataset`` whose samples are
``(input [3, S, S] float32, target [n, 5] or [n, 15], skipped)`` in the conventions of
``models/detector.py``, augmented as that detector's reference trains it. The annotations are
``records`` when given (``data.annotations.FaceRecord`` objects, e.g. pseudo labels), else
``list_file`` read in FACE.SRC_FORMAT (``auto`` sniffs it: the WIDER list, RetinaFace
``label.txt``, labelv2 or a Laboro TV root), images under FACE.IMAGE_ROOT or the format's own
layout (the WIDER list: FACE.DATA_ROOT).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np


def read_training_records(cfg, list_file, root) -> list:
    """FaceRecords of ``list_file`` in FACE.SRC_FORMAT."""
    from data.annotations import detect_format, read_annotations
    fmt = cfg.FACE.SRC_FORMAT if cfg.FACE.SRC_FORMAT != "auto" else detect_format(list_file)
    image_root = cfg.FACE.IMAGE_ROOT or (root if fmt == "wider" else None)
    return read_annotations(Path(list_file), fmt, root=image_root)


def _is_wider_list(cfg, list_file) -> bool:
    from data.annotations import AnnotationError, detect_format
    if cfg.FACE.SRC_FORMAT != "auto":
        return cfg.FACE.SRC_FORMAT == "wider"
    try:
        return detect_format(list_file) == "wider"
    except (AnnotationError, OSError):
        return True                   # the WIDER parser names the bad file and line


def _wider_detection(cfg, list_file, root, seed, records=None):
    from data.lowlight_model import camera_spec
    from data.widerface import Record, WIDERDetection
    camera = camera_spec(cfg)                       # AUG.lowlight_model (None: the toy model)
    if records is None and not cfg.FACE.IMAGE_ROOT and _is_wider_list(cfg, list_file):
        # the reference's list format: its own parser, exactly as the reference trains
        return WIDERDetection(str(list_file), cfg.AUG, root=root, train=True, seed=seed,
                              camera=camera)
    if records is None:
        records = read_training_records(cfg, list_file, root)
    converted = [Record(r.path, np.asarray(r.boxes, np.float64), np.asarray(r.labels, np.int64))
                 for r in records if len(r.boxes)]
    return WIDERDetection(str(list_file), cfg.AUG, root=root, train=True, seed=seed,
                          records=converted, camera=camera)


def _yunet(cfg, list_file, root, seed, records=None):
    from data.yunet_transforms import build_yunet_dataset
    return build_yunet_dataset(cfg, list_file, root, seed, records=records)


def _retinaface(cfg, list_file, root, seed, records=None):
    from data.retinaface_transforms import build_retinaface_dataset
    return build_retinaface_dataset(cfg, list_file, root, seed, records=records)


TRAIN_DATASETS: dict[str, Callable] = {
    "dsfd_vgg": _wider_detection,
    "yunet_n": _yunet,
    "yunet_s": _yunet,
    "retinaface_mnet": _retinaface,
    "retinaface_r50": _retinaface,
}


def build_train_dataset(cfg, list_file, root, seed, records=None):
    name = cfg.MODEL.NAME
    if name not in TRAIN_DATASETS:
        raise ValueError(f"config key MODEL.NAME={name!r} has no training dataset; known: "
                         f"{sorted(TRAIN_DATASETS)}")
    return TRAIN_DATASETS[name](cfg, list_file, root, seed, records=records)
