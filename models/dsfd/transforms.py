"""DSFD's training dataset: the reference's WIDER loader and augmentation (``data/widerface.py``)
over the WIDER list, or over any annotation format's records (``data/annotations.py``)."""
from __future__ import annotations

import numpy as np

from data.annotations import AnnotationError, detect_format, read_training_records
from data.lowlight_model import camera_spec
from data.widerface import Record, WIDERDetection


def _is_wider_list(cfg, list_file) -> bool:
    if cfg.FACE.SRC_FORMAT != "auto":
        return cfg.FACE.SRC_FORMAT == "wider"
    try:
        return detect_format(list_file) == "wider"
    except (AnnotationError, OSError):
        return True                   # the WIDER parser names the bad file and line


def build_dsfd_dataset(cfg, list_file, root, seed, records=None) -> WIDERDetection:
    """``records`` (FaceRecords, e.g. pseudo labels) when given, else ``list_file`` in
    FACE.SRC_FORMAT; samples ``(image [3, S, S], target [n, 5], skipped)``."""
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
