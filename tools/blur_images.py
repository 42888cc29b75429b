"""The blurring steps of the noise synthesis D(H): E(L)_blur and H_blur (docs/LOW_LEVEL.md).

    python tools/blur_images.py --mode el [--input DIR] [--output DIR] [KEY.SUB=VALUE ...]
    python tools/blur_images.py --mode h  [--input DIR] [--output DIR] [KEY.SUB=VALUE ...]

``--mode el`` makes E(L)_blur, pix2pix's input during training: every image of
ENHANCE.ENHANCED_DIR through the bilateral filter (NOISE.BILATERAL = d, sigma colour, sigma
space) and the median blur (NOISE.MEDIAN), written to NOISE.BLUR_DIR with the same relative
path and file name (PNG stays lossless).

``--mode h`` makes H_blur, pix2pix's input when synthesising D(H): every WIDER train image of
NOISE.WIDER_DIR gets monochrome Gaussian noise of std NOISE.GAUSS_SIGMA (seeded per file name
and RUN.SEED), the same blur, and the mirror padding to multiples of NOISE.PAD, and is written
to the flat folder NOISE.WIDER_BLUR_DIR under its own file name (JPEG quality 95, as the
reference's cv2.imwrite). ``tools/synthesize_noise.py --from wider`` does this in memory instead.

Outputs that exist are skipped (atomic writes), unreadable inputs reported and skipped.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from data import config as config_lib
from data.config_check import validate
from utils.files import remove_stale_temps, resolve_path
from data.image_folder import (UNREADABLE, list_image_files, mirror_pairs,
                               pending, read_rgb, write_image_atomic)
from data.loaders import identity_collate
from engine.cli import parse_with_config, run_writing_tool
from lowlevel.noise import blur, image_seed, make_h_blur

log = logging.getLogger("blur_images")


class BlurJob(Dataset):
    """Reads, blurs and writes one image per item (in a DataLoader worker); yields
    ``(index, error)`` with an empty error on success."""

    def __init__(self, pairs, mode: str, noise_cfg, seed: int):
        self.pairs, self.mode, self.noise, self.seed = pairs, mode, noise_cfg, seed

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i):
        src, dst = self.pairs[i]
        try:
            rgb = read_rgb(src)
        except UNREADABLE as exc:
            return i, f"{type(exc).__name__}: {exc}"
        n = self.noise
        if self.mode == "el":
            out = blur(rgb, n.BILATERAL, n.MEDIAN)
        else:
            rng = np.random.default_rng(image_seed(src.name, self.seed))
            out = make_h_blur(rgb, n.GAUSS_SIGMA, n.BILATERAL, n.MEDIAN, n.PAD, rng)
        write_image_atomic(out, dst)
        return i, ""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mode", choices=("el", "h"), required=True,
                   help="el: E(L) -> E(L)_blur; h: WIDER H -> padded H_blur")
    p.add_argument("--input", default=None,
                   help="default: ENHANCE.ENHANCED_DIR (el) or NOISE.WIDER_DIR (h)")
    p.add_argument("--output", default=None,
                   help="default: NOISE.BLUR_DIR (el) or NOISE.WIDER_BLUR_DIR (h)")
    p.add_argument("--workers", type=int, default=2, help="parallel processes")
    p.add_argument("--overwrite", action="store_true", help="redo outputs that exist")
    return parse_with_config(p, argv)


def main(argv=None) -> int:
    return run_writing_tool(run, parse_args(argv), log)


def run(args) -> int:
    cfg = validate(config_lib.load_config(args.config, args.opts))
    in_key, out_key = (("ENHANCE.ENHANCED_DIR", "NOISE.BLUR_DIR") if args.mode == "el"
                       else ("NOISE.WIDER_DIR", "NOISE.WIDER_BLUR_DIR"))
    section, name = in_key.split(".")
    in_dir = Path(args.input) if args.input else resolve_path(cfg[section][name])
    section, name = out_key.split(".")
    out_dir = Path(args.output) if args.output else resolve_path(cfg[section][name])
    sources = list_image_files(in_dir, "--input" if args.input else in_key)
    pairs = mirror_pairs(sources, in_dir, out_dir, suffix=None, flat=args.mode == "h")
    todo = pending(pairs, args.overwrite)
    remove_stale_temps(out_dir)
    log.info("%s blur: %d images in %s, %d already done, writing to %s", args.mode, len(pairs),
             in_dir, len(pairs) - len(todo), out_dir)
    loader = DataLoader(BlurJob(todo, args.mode, cfg.NOISE, cfg.RUN.SEED), batch_size=None,
                        collate_fn=identity_collate,
                        num_workers=args.workers if len(todo) > 1 else 0)
    failed = []
    for i, error in tqdm(loader, total=len(todo), desc=f"blur ({args.mode})", unit="img"):
        if error:
            log.warning("skipping unreadable image %s: %s", todo[i][0], error)
            failed.append(str(todo[i][0]))
    log.info("wrote %d images to %s%s", len(todo) - len(failed), out_dir,
             f"; {len(failed)} unreadable inputs skipped" if failed else "")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
