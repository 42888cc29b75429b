"""Night copies of daylight images with the camera model (data/camera.py).

    python tools/darken.py [--preset darkface|dainet|eld] [--seed S] [--set NAME=VALUE ...]
                           [--suffix .png] [--overwrite] IN OUT

IN is an image (OUT: an image path, or a folder that receives ``<name><suffix>``) or a folder
(OUT: a folder mirroring IN's sub-folders). ``--set`` fixes or re-ranges a camera parameter,
by its name or as a config key: ``exposure=0.02``, ``exposure=(0.01,0.03)``,
``CAMERA.exposure=[0.02]``, ``CAMERA.PRESET=eld``, ``read_dist=tukey``. The k-th image of a folder
(sorted paths) uses seed ``S + k``, so a run is reproducible and equals darkening each image
alone with its seed. Outputs are PNG by default (JPEG would smooth the sensor noise); existing
outputs are skipped unless ``--overwrite``.
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

import cv2
from tqdm import tqdm

from data import camera
from data.image_folder import IMAGE_EXTENSIONS, list_image_files, mirror_pairs
from utils.files import write_bytes_atomic


def parse_sets(items: list[str], preset: str) -> tuple[str, dict]:
    """``(preset, overrides)`` from ``NAME=VALUE`` / ``CAMERA.NAME=VALUE`` strings."""
    overrides = {}
    for item in items:
        if "=" not in item:
            raise camera.CameraError(f"--set {item!r} is not of the form NAME=VALUE")
        key, raw = (s.strip() for s in item.split("=", 1))
        name = key[len("CAMERA."):] if key.startswith("CAMERA.") else key
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw                         # a bare word: a choice such as tukey
        if name == "PRESET":
            preset = value
            continue
        if name not in camera.PARAM_NAMES:
            raise camera.CameraError(f"--set {key}: unknown camera parameter {name!r}; known: "
                                     f"{', '.join(camera.PARAM_NAMES)} (or CAMERA.PRESET)")
        overrides[name] = tuple(value) if isinstance(value, list) else value
    camera.resolve(preset, overrides)           # every error before the first image
    return preset, overrides


def job(src: Path, dst: Path, suffix: str) -> list[tuple[Path, Path]]:
    """(input, output) pairs for an image or a folder."""
    if src.is_dir():
        return mirror_pairs(list_image_files(src), src, dst, suffix=suffix)
    if not src.is_file():
        raise FileNotFoundError(f"input {src} does not exist")
    if dst.is_dir() or dst.suffix.lower() not in IMAGE_EXTENSIONS:
        dst = dst / (src.stem + suffix)
    return [(src, dst)]


def darken_file(src: Path, dst: Path, preset: str, seed: int, overrides: dict) -> None:
    bgr = cv2.imread(str(src), cv2.IMREAD_COLOR)
    if bgr is None:
        raise OSError(f"cannot read image {src}")
    dark = camera.darken_uint8(bgr, preset, seed=seed, overrides=overrides)
    ok, buf = cv2.imencode(dst.suffix, dark)
    if not ok:
        raise OSError(f"cannot encode {dst} (extension {dst.suffix!r})")
    write_bytes_atomic(buf.tobytes(), dst)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("input", type=Path, help="an image or a folder of images")
    ap.add_argument("output", type=Path, help="an image path or a folder")
    ap.add_argument("--preset", default="darkface", help=", ".join(camera.PRESETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--suffix", default=".png", help="output format for folders")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    try:
        preset, overrides = parse_sets(args.set, args.preset)
        pairs = job(args.input, args.output, args.suffix)
    except (camera.CameraError, FileNotFoundError, ValueError) as err:
        ap.error(str(err))
    if not pairs:
        ap.error(f"no images found in {args.input}")
    done = 0
    for k, (src, dst) in enumerate(tqdm(pairs, disable=len(pairs) < 2, desc="darken")):
        if dst.exists() and not args.overwrite:
            continue
        try:
            darken_file(src, dst, preset, args.seed + k, overrides)
        except OSError as err:
            ap.exit(2, f"{ap.prog}: error: {err}\n")
        done += 1
    print(f"darkened {done} of {len(pairs)} image(s) with preset {preset} -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
