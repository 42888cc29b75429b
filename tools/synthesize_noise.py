"""Synthesise the noisy WIDER images D(H) with the trained pix2pix generator (docs/LOW_LEVEL.md).

    python tools/synthesize_noise.py [--weights G] [--from wider|blur] [--input DIR]
                                     [--output DIR] [KEY.SUB=VALUE ...]

``--from wider`` (default) runs the whole chain in memory for every image H below
NOISE.WIDER_DIR: monochrome noise (NOISE.GAUSS_SIGMA, seeded per file name and RUN.SEED),
bilateral + median blur (NOISE.BILATERAL, NOISE.MEDIAN), mirror padding (NOISE.PAD), the
generator, and the crop back to H's size. H_blur passes through the JPEG encoding (quality 95)
that the reference's saved ``<name>.jpg`` H_blur files had, so this gives the same images as
``--from blur``, which reads the padded H_blur files that ``tools/blur_images.py --mode h``
wrote to NOISE.WIDER_BLUR_DIR and takes each original size from the image of the same name
below NOISE.WIDER_DIR (``--originals``).

The output is the flat folder NOISE.OUT_DIR, ``<file name of H>`` as JPEG quality 95, the
layout the transfer loader reads. ``--weights`` (default NOISE.GENERATOR_WEIGHTS) is
``G_final.pth`` from ``tools/train_noise.py``, one of its checkpoints, or a generator of the
public pix2pix code (same keys); the width is read from the file. As the reference ran pix2pix's
test script without ``--eval``, batch norm uses each image's own statistics and dropout stays
on (seeded per image, so results are reproducible); ``--eval`` uses the running statistics
without dropout instead. One image per forward pass (batch statistics depend on the batch).
Outputs that exist are skipped (atomic writes); unreadable inputs are reported and skipped.
"""
from __future__ import annotations

import argparse
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from data import config as config_lib
from data.config_check import validate
from utils.files import remove_stale_temps, resolve_path
from data.image_folder import (UNREADABLE, list_image_files, mirror_pairs,
                               pending, read_rgb, through_file, write_image_atomic)
from data.loaders import identity_collate
from engine.cli import parse_with_config, run_writing_tool
from lowlevel.noise import (crop_back, from_generator_output, image_seed,
                            make_h_blur, to_generator_input)
from lowlevel.pix2pix import (UnetGenerator, generator_state_dict, generator_width,
                              set_test_mode)
from utils import dist
from utils.checkpoint import load_file

log = logging.getLogger("synthesize_noise")


class GeneratorInputs(Dataset):
    """Yields ``(index, padded H_blur uint8, (H, W), error)`` per image, made in a worker."""

    def __init__(self, jobs, mode: str, noise_cfg, seed: int):
        self.jobs, self.mode, self.noise, self.seed = jobs, mode, noise_cfg, seed

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i):
        src, _, original = self.jobs[i]
        n = self.noise
        try:
            if self.mode == "wider":
                rgb = read_rgb(src)
                rng = np.random.default_rng(image_seed(src.name, self.seed))
                h_blur = make_h_blur(rgb, n.GAUSS_SIGMA, n.BILATERAL, n.MEDIAN, n.PAD, rng)
                # as if saved under H's name and read back (the reference's JPEG step)
                return i, through_file(h_blur, src.suffix), rgb.shape[:2], ""
            with Image.open(original) as im:
                width, height = im.size
            return i, read_rgb(src), (height, width), ""
        except UNREADABLE as exc:
            return i, None, None, f"{type(exc).__name__}: {exc}"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--weights", default=None, help="generator (default: NOISE.GENERATOR_WEIGHTS)")
    p.add_argument("--from", dest="source", choices=("wider", "blur"), default="wider",
                   help="wider: H -> D(H) in memory; blur: padded H_blur files -> D(H)")
    p.add_argument("--input", default=None,
                   help="default: NOISE.WIDER_DIR (wider) or NOISE.WIDER_BLUR_DIR (blur)")
    p.add_argument("--originals", default=None,
                   help="--from blur: the clean images, for their sizes (default NOISE.WIDER_DIR)")
    p.add_argument("--output", default=None, help="default: NOISE.OUT_DIR")
    p.add_argument("--eval", action="store_true",
                   help="running batch-norm statistics and no dropout (not the reference)")
    p.add_argument("--workers", type=int, default=2, help="input-preparing processes")
    p.add_argument("--overwrite", action="store_true", help="redo outputs that exist")
    return parse_with_config(p, argv)


def load_generator(path: str, key: str, device: torch.device, reference_mode: bool):
    if not Path(path).is_file():
        raise FileNotFoundError(f"generator weights {path} do not exist (set by {key})")
    state = generator_state_dict(load_file(path, "generator weights"))
    G = UnetGenerator(3, 3, num_downs=8, ngf=generator_width(state), dropout=True)
    G.load_state_dict(state, strict=True)
    return set_test_mode(G.to(device), reference=reference_mode)


def build_jobs(args, cfg) -> list[tuple[Path, Path, Path | None]]:
    """(input, output, original-or-None) per image."""
    N = cfg.NOISE
    out_dir = Path(args.output) if args.output else resolve_path(N.OUT_DIR)
    if args.source == "wider":
        in_dir = Path(args.input) if args.input else resolve_path(N.WIDER_DIR)
        sources = list_image_files(in_dir, "--input" if args.input else "NOISE.WIDER_DIR")
        return [(s, d, None) for s, d in mirror_pairs(sources, in_dir, out_dir, ".jpg",
                                                       flat=True)]
    in_dir = Path(args.input) if args.input else resolve_path(N.WIDER_BLUR_DIR)
    orig_dir = Path(args.originals) if args.originals else resolve_path(N.WIDER_DIR)
    originals = {p.name: p for p in list_image_files(
        orig_dir, "--originals" if args.originals else "NOISE.WIDER_DIR")}
    jobs = []
    for s, d in mirror_pairs(list_image_files(in_dir, "--input" if args.input
                                              else "NOISE.WIDER_BLUR_DIR"),
                             in_dir, out_dir, ".jpg", flat=True):
        if s.name not in originals:
            raise FileNotFoundError(f"{s}: no original image named {s.name} below {orig_dir} "
                                    f"(needed for its size; --originals / NOISE.WIDER_DIR)")
        jobs.append((s, d, originals[s.name]))
    return jobs


def main(argv=None) -> int:
    return run_writing_tool(run, parse_args(argv), log)


def run(args) -> int:
    cfg = validate(config_lib.load_config(args.config, args.opts))
    jobs = build_jobs(args, cfg)
    out_dir = Path(args.output) if args.output else resolve_path(cfg.NOISE.OUT_DIR)
    wanted = {d for _, d in pending([(s, d) for s, d, _ in jobs], args.overwrite)}
    todo = [j for j in jobs if j[1] in wanted]
    remove_stale_temps(out_dir)
    log.info("D(H) from %s: %d images, %d already done, writing to %s", args.source, len(jobs),
             len(jobs) - len(todo), out_dir)
    if not todo:
        return 0
    device = dist.pick_device(cfg.RUN.DEVICE)
    weights, key = (args.weights, "--weights") if args.weights else \
        (str(resolve_path(cfg.NOISE.GENERATOR_WEIGHTS)), "NOISE.GENERATOR_WEIGHTS")
    G = load_generator(weights, key, device, reference_mode=not args.eval)
    loader = DataLoader(GeneratorInputs(todo, args.source, cfg.NOISE, cfg.RUN.SEED),
                        batch_size=None, collate_fn=identity_collate,
                        num_workers=args.workers if len(todo) > 1 else 0)
    failed, writes = [], []
    with ThreadPoolExecutor(max_workers=2) as writer, torch.no_grad():
        for i, padded, size, error in tqdm(loader, total=len(todo), desc="D(H)", unit="img"):
            src, dst, _ = todo[i]
            if padded is None:
                log.warning("skipping unreadable image %s: %s", src, error)
                failed.append(str(src))
                continue
            torch.manual_seed(image_seed(src.name, cfg.RUN.SEED))      # the dropout draws
            fake = from_generator_output(G(to_generator_input(padded).to(device)))
            out = np.ascontiguousarray(crop_back(fake, *size, pad=cfg.NOISE.PAD))
            writes.append(writer.submit(write_image_atomic, out, dst))
            while len(writes) > 8:
                writes.pop(0).result()
        for w in writes:
            w.result()
    log.info("wrote %d images to %s%s", len(todo) - len(failed), out_dir,
             f"; {len(failed)} unreadable inputs skipped" if failed else "")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
