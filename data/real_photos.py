"""Real photographs with faces that ship inside installed packages, and their low-light copies.

With the released YuNet weights these are the project's one way to check detection on real
faces offline (the demo and the benches use them):

| name | source | faces |
|---|---|---|
| ``astronaut`` | ``skimage.data.astronaut()`` (512x512) | one, about 91x111 px |
| ``grace_hopper`` | matplotlib's ``grace_hopper.jpg`` sample (512x600) | one, large |
| ``camera`` | ``skimage.data.camera()`` (512x512, grey) | one, small, in profile |
| ``lfw_mosaic`` | the 20 held-out faces of ``skimage.data.lfw_subset()`` (identities 80-99, the ones the demo's training images never show), each 25x25 px scaled x3, on a 4 x 5 grid | twenty |

The low-light copies come from :func:`data.lowlight.simulate_low_light` (the project's documented
simulation: gamma, exposure, shot and read noise, colour cast), each from its own generator
seeded by ``(seed, photo index, copy)``, so they are the same on every machine.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from data.lowlight import simulate_low_light

REAL_PHOTOS = ("astronaut", "grace_hopper", "camera", "lfw_mosaic")
LFW_HELD_OUT = range(80, 100)          # the demo's held-out LFW identities
MOSAIC_GRID = (4, 5)                   # rows, columns
MOSAIC_CELL = 112                      # px per cell; faces are 75 px (25 x 3)


def _lfw_mosaic() -> np.ndarray:
    from skimage import data
    faces = (data.lfw_subset()[list(LFW_HELD_OUT)] * 255.0).astype(np.uint8)
    rows, cols = MOSAIC_GRID
    canvas = np.full((rows * MOSAIC_CELL, cols * MOSAIC_CELL, 3), 118, np.uint8)
    side = 25 * 3
    pad = (MOSAIC_CELL - side) // 2
    for k, face in enumerate(faces):
        r, c = divmod(k, cols)
        big = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
        y, x = r * MOSAIC_CELL + pad, c * MOSAIC_CELL + pad
        canvas[y:y + side, x:x + side] = big[..., None]
    return canvas


def load_real_photo(name: str) -> np.ndarray:
    """HxWx3 uint8 RGB of one of :data:`REAL_PHOTOS`."""
    from skimage import data
    if name == "astronaut":
        return np.ascontiguousarray(data.astronaut())
    if name == "grace_hopper":
        from matplotlib import cbook
        with cbook.get_sample_data("grace_hopper.jpg") as f:
            return np.asarray(Image.open(f).convert("RGB"))
    if name == "camera":
        return np.repeat(data.camera()[..., None], 3, axis=2)
    if name == "lfw_mosaic":
        return _lfw_mosaic()
    raise ValueError(f"unknown real photo {name!r}; known: {', '.join(REAL_PHOTOS)}")


def low_light_copy(rgb: np.ndarray, seed: int, photo: int, copy: int = 0) -> np.ndarray:
    """The simulated low-light copy number ``copy`` of photo number ``photo``."""
    return simulate_low_light(rgb, np.random.default_rng([seed, photo, copy]))


def write_real_photo_set(out: str | Path, seed: int = 0, copies: int = 1) -> dict[str, list[Path]]:
    """``out/clean/<name>.png`` and ``out/dark/<name>_<k>.png`` for every photo; returns the
    paths per folder. Files that exist are kept (the content is deterministic)."""
    out = Path(out)
    paths: dict[str, list[Path]] = {"clean": [], "dark": []}
    for folder in paths:
        (out / folder).mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(REAL_PHOTOS):
        clean = out / "clean" / f"{name}.png"
        rgb = None
        if not clean.is_file():
            rgb = load_real_photo(name)
            Image.fromarray(rgb).save(clean)
        paths["clean"].append(clean)
        for k in range(copies):
            dark = out / "dark" / f"{name}_{k}.png"
            if not dark.is_file():
                rgb = load_real_photo(name) if rgb is None else rgb
                Image.fromarray(low_light_copy(rgb, seed, i, k)).save(dark)
            paths["dark"].append(dark)
    return paths
