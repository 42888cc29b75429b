"""Write the daylight photos that scikit-image and matplotlib ship into a folder (PNG, RGB).

    python tools/package_photos.py OUT [--names astronaut,coffee,...] [--list]

They are the toolkit's offline source of real photographs for training the low-level networks on
camera-model night copies (docs/LOW_LEVEL.md, "E(L) and D(H) from camera-model night copies"):
natural scenes, objects, textures and a few portraits, none of them a night benchmark photo
(``../shared/data/dlib_faces`` is never read here). Grey photos are written as three equal
channels. Existing files are kept (the content is fixed).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

# name -> (package, what): skimage.data functions, or a matplotlib sample-data file
PHOTOS = {
    "astronaut": ("skimage", "astronaut"), "chelsea": ("skimage", "chelsea"),
    "coffee": ("skimage", "coffee"), "rocket": ("skimage", "rocket"),
    "motorcycle_left": ("skimage", "stereo_motorcycle:0"),
    "motorcycle_right": ("skimage", "stereo_motorcycle:1"),
    "camera": ("skimage", "camera"), "coins": ("skimage", "coins"),
    "clock": ("skimage", "clock"), "brick": ("skimage", "brick"), "grass": ("skimage", "grass"),
    "gravel": ("skimage", "gravel"), "grace_hopper": ("matplotlib", "grace_hopper.jpg"),
    "present": ("matplotlib", "Minduka_Present_Blue_Pack.png"),
}


def load_photo(name: str) -> np.ndarray:
    """HxWx3 uint8 RGB of one of :data:`PHOTOS`."""
    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}; known: {', '.join(PHOTOS)}")
    package, what = PHOTOS[name]
    if package == "matplotlib":
        from matplotlib import cbook
        with cbook.get_sample_data(what) as f:
            return np.asarray(Image.open(f).convert("RGB"))
    from skimage import data
    func, _, part = what.partition(":")
    img = getattr(data, func)()
    img = img[int(part)] if part else img
    return np.ascontiguousarray(np.repeat(img[..., None], 3, 2) if img.ndim == 2 else img[..., :3])


def write_photos(out: Path, names) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = out / f"{name}.png"
        if not path.is_file():
            Image.fromarray(load_photo(name)).save(path)
        paths.append(path)
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path, nargs="?", help="folder to write <name>.png into")
    p.add_argument("--names", default=",".join(PHOTOS),
                   help="comma-separated subset of the photos (default: all)")
    p.add_argument("--list", action="store_true", help="print the photo names and exit")
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(PHOTOS))
        return 0
    if args.out is None:
        p.error("OUT is required (the folder to write into)")
    names = [n.strip() for n in args.names.split(",") if n.strip()]
    unknown = [n for n in names if n not in PHOTOS]
    if unknown:
        p.error(f"--names: unknown photo(s) {', '.join(unknown)}; known: {', '.join(PHOTOS)}")
    for path in write_photos(args.out, names):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
