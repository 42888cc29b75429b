"""Enhance a folder of (dark) images: E(L), or a classical baseline for enhance-then-detect.

    python tools/enhance_images.py [--method el|gamma|clahe|lime] [--weights W]
                                   [--input DIR] [--output DIR] [KEY.SUB=VALUE ...]

Defaults: ``--input`` ENHANCE.DARK_DIR, ``--weights`` ENHANCE.WEIGHTS. The output mirrors the
input's sub-folders, one lossless PNG per image, at full resolution. Without ``--output`` it is
ENHANCE.ENHANCED_DIR for the default input, else the input path with its ``images`` component
replaced by ``images_enhanced`` as the reference does (``images_<method>`` for the baselines, so
they never overwrite E(L) results).

E(L) is quantised as the reference's ``save_image``: x*255 + 0.5, clamped, truncated. Images run
in batches of ``--batch-size`` on a GPU when there is one (RUN.DEVICE), and in overlapping tiles
(``--tile``) or after an out-of-memory error; the tiled result equals the whole-image one.
Outputs that exist are skipped, so an interrupted run resumes (files are written to a temporary
name and renamed); an unreadable input is reported and skipped.
"""
from __future__ import annotations

import argparse
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from data import config as config_lib
from data.config_check import validate
from lowlevel import classic as baselines
from utils.files import remove_stale_temps, resolve_path
from data.image_folder import (UNREADABLE, default_output, list_image_files,
                               mirror_pairs, pending, read_rgb, write_image_atomic)
from data.loaders import identity_collate
from engine.cli import parse_with_config, run_writing_tool
from lowlevel.enhancement import DEFAULT_MARGIN, enhance_uint8, load_enhancer
from utils import dist

log = logging.getLogger("enhance_images")
METHODS = ("el", "gamma", "clahe", "lime")


class SourceImages(Dataset):
    """Decodes (and, for a baseline, enhances) one image per item in a DataLoader worker.
    Yields ``(index, rgb, error)``; ``rgb`` is None when the file cannot be read."""

    def __init__(self, paths: list[Path], transform=None):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        try:
            rgb = read_rgb(self.paths[i])
        except UNREADABLE as exc:
            return i, None, f"{type(exc).__name__}: {exc}"
        if self.transform is not None:
            rgb = self.transform(rgb)
        return i, rgb, ""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--method", choices=METHODS, default="el",
                   help="el: the E(L) network (default); gamma, clahe, lime: baselines")
    p.add_argument("--weights", default=None, help="E(L) weights (default: ENHANCE.WEIGHTS)")
    p.add_argument("--input", default=None, help="image folder (default: ENHANCE.DARK_DIR)")
    p.add_argument("--output", default=None, help="output folder (see above)")
    p.add_argument("--batch-size", type=int, default=0,
                   help="E(L) images per forward pass (default: 8 on a GPU, 1 on the CPU)")
    p.add_argument("--tile", type=int, default=0,
                   help="E(L) in tiles of this side (px); 0: whole images unless out of memory")
    p.add_argument("--workers", type=int, default=2, help="decoding (and baseline) processes")
    p.add_argument("--overwrite", action="store_true", help="redo outputs that exist")
    p.add_argument("--gamma", type=float, default=baselines.GAMMA,
                   help="gamma baseline: out = in ** (1 / gamma)")
    p.add_argument("--clahe-clip", type=float, default=baselines.CLAHE_CLIP)
    p.add_argument("--clahe-grid", type=int, default=baselines.CLAHE_GRID)
    p.add_argument("--lime-alpha", type=float, default=baselines.LIME_ALPHA)
    p.add_argument("--lime-gamma", type=float, default=baselines.LIME_GAMMA)
    p.add_argument("--lime-sigma", type=float, default=baselines.LIME_SIGMA)
    return parse_with_config(p, argv)


def resolve_folders(args, cfg) -> tuple[Path, Path]:
    if args.input is None:
        in_dir, in_key = resolve_path(cfg.ENHANCE.DARK_DIR), "ENHANCE.DARK_DIR"
    else:
        in_dir, in_key = Path(args.input), "--input"
    if not in_dir.is_dir():
        raise FileNotFoundError(f"input folder {in_dir} does not exist (set by {in_key})")
    if args.output is not None:
        out_dir = Path(args.output)
    elif args.input is None and args.method == "el":
        out_dir = resolve_path(cfg.ENHANCE.ENHANCED_DIR)
    else:
        new = "images_enhanced" if args.method == "el" else f"images_{args.method}"
        out_dir = default_output(in_dir, "images", new)
        if out_dir is None:
            raise ValueError(f"--input {in_dir} has no 'images' component to replace: give "
                             f"--output")
    if out_dir.resolve() == in_dir.resolve():
        raise ValueError(f"the output folder {out_dir} is the input folder")
    return in_dir, out_dir


def baseline_transform(args):
    if args.method == "gamma":
        return functools.partial(baselines.gamma_correct, gamma=args.gamma)
    if args.method == "clahe":
        return functools.partial(baselines.clahe, clip_limit=args.clahe_clip,
                                 grid=args.clahe_grid)
    if args.method == "lime":
        return functools.partial(baselines.lime, alpha=args.lime_alpha, gamma=args.lime_gamma,
                                 sigma=args.lime_sigma)
    return None


def main(argv=None) -> int:
    return run_writing_tool(run, parse_args(argv), log)


def load_el(args, cfg):
    """E(L) on RUN.DEVICE, from ``--weights`` or ENHANCE.WEIGHTS; returns (net, device)."""
    device = dist.pick_device(cfg.RUN.DEVICE)
    weights, key = (args.weights, "--weights") if args.weights else \
        (str(resolve_path(cfg.ENHANCE.WEIGHTS)), "ENHANCE.WEIGHTS")
    return load_enhancer(weights, device, key), device


def run(args) -> int:
    cfg = validate(config_lib.load_config(args.config, args.opts))
    in_dir, out_dir = resolve_folders(args, cfg)
    pairs = mirror_pairs(list_image_files(in_dir, "--input"), in_dir, out_dir, ".png")
    todo = pending(pairs, args.overwrite)
    removed = remove_stale_temps(out_dir)
    log.info("%s: %d images in %s, %d already done, writing to %s%s", args.method, len(pairs),
             in_dir, len(pairs) - len(todo), out_dir,
             f" ({removed} stale temporary files removed)" if removed else "")
    if not todo:
        return 0

    net, device = load_el(args, cfg) if args.method == "el" else (None, None)
    dataset = SourceImages([s for s, _ in todo], baseline_transform(args))
    loader = DataLoader(dataset, batch_size=None, collate_fn=identity_collate,
                        num_workers=args.workers if len(todo) > 1 else 0)
    failed = enhance_and_write(loader, todo, net, device, args)
    log.info("wrote %d images to %s%s", len(todo) - len(failed), out_dir,
             f"; {len(failed)} unreadable inputs skipped: {', '.join(failed)}" if failed else "")
    return 0


def enhance_and_write(loader, todo, net, device, args) -> list[str]:
    """Write each image of ``loader`` (already enhanced by a baseline, or through E(L) ``net``
    in batches of one size) to its output of ``todo``, in two writer threads; returns the
    unreadable inputs."""
    batch_size = args.batch_size or (8 if device is not None and device.type == "cuda" else 1)
    failed: list[str] = []
    batch: list[tuple[int, np.ndarray]] = []
    with ThreadPoolExecutor(max_workers=2) as writer, \
            tqdm(total=len(todo), desc=f"enhance ({args.method})", unit="img") as bar:
        writes = []

        def save(items):
            for i, rgb in items:
                writes.append(writer.submit(write_image_atomic, rgb, todo[i][1]))
            while len(writes) > 16:                 # bound the images held in memory
                writes.pop(0).result()
            bar.update(len(items))

        def flush():
            images = enhance_uint8(net, np.stack([rgb for _, rgb in batch]), device,
                                   tile=args.tile, margin=DEFAULT_MARGIN)
            save([(i, out) for (i, _), out in zip(batch, images)])
            batch.clear()

        for i, rgb, error in loader:
            if rgb is None:
                log.warning("skipping unreadable image %s: %s", todo[i][0], error)
                failed.append(str(todo[i][0]))
                bar.update(1)
                continue
            if net is None:
                save([(i, rgb)])
                continue
            if batch and (len(batch) == batch_size or batch[0][1].shape != rgb.shape):
                flush()
            batch.append((i, rgb))
        if batch:
            flush()
        for w in writes:
            w.result()
    return failed


if __name__ == "__main__":
    raise SystemExit(main())
