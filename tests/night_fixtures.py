"""Small synthetic labelled images shared by the night-training tests (no data needed).

``records(folder)`` writes a few textured PNGs with one face box (+ landmarks) each and returns
their ``FaceRecord``s; ``sample_digest(...)`` hashes a family's training samples so that a test
can pin them (the pinned values were computed from the code before ``AUG.lowlight_model``).
"""
import hashlib

import cv2
import numpy as np

FACE = np.array([[40.0, 30.0, 100.0, 96.0]])
POINTS = np.array([[[55.0, 50.0], [85.0, 50.0], [70.0, 65.0], [58.0, 80.0], [82.0, 80.0]]])


def records(folder, n=3):
    from data.annotations import FaceRecord
    rng = np.random.default_rng(11)
    out = []
    for i in range(n):
        img = rng.integers(30, 256, (120, 160, 3), dtype=np.uint8)
        img[30:96, 40:100] = (90, 140, 200)
        path = folder / f"face{i}.png"
        cv2.imwrite(str(path), img)
        out.append(FaceRecord(str(path), FACE.copy(), POINTS.copy(), np.ones(1, np.int64),
                              (160, 120)))
    return out


def small_config(name, prob=0.0):
    """The config of detector ``name`` with 64-pixel training inputs and AUG.lowlight_prob."""
    from data.config import load_config
    cfg = load_config(overrides=[f"MODEL.NAME={name}"])
    cfg.AUG.resize_width = cfg.AUG.resize_height = 64
    cfg.YUNET.INPUT_SIZE = cfg.RETINAFACE.IMAGE_SIZE = 64
    cfg.AUG.lowlight_prob = prob
    return cfg


def sample_digest(dataset, keys=((0, 0), (0, 1), (1, 2), (3, 0))):
    """sha256 (first 16 hex digits) of the images and targets of ``dataset[key]``."""
    h = hashlib.sha256()
    for key in keys:
        image, target, _ = dataset[key]
        h.update(np.ascontiguousarray(image.numpy() if hasattr(image, "numpy") else image)
                 .tobytes())
        h.update(np.ascontiguousarray(target.numpy() if hasattr(target, "numpy") else target)
                 .tobytes())
    return h.hexdigest()[:16]
