"""Throughput of the training augmentation (``data.augmentations.train_preprocess``).

Synthetic 1024x768 RGB images with 20 faces of 8-120 px, one process, default config.
Prints images/s overall and for each crop branch (data-anchor-sampling / SSD square crop).

    python bench/bench_augment.py [--images 200] [--seed 0]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image

from data.augmentations import train_preprocess
from data.config import default_config

WIDTH, HEIGHT, FACES = 1024, 768, 20


def synthetic_sample(rng: np.random.Generator):
    """A smooth random image (JPEG-like statistics matter little here) and 20 boxes."""
    small = rng.integers(0, 256, (HEIGHT // 16, WIDTH // 16, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR)
    side = rng.uniform(8, 120, (FACES, 1))
    xy = rng.uniform(0, 1, (FACES, 2)) * ([WIDTH, HEIGHT] - side)
    boxes = np.concatenate([xy, xy + side], axis=1) / [WIDTH, HEIGHT, WIDTH, HEIGHT]
    return img, boxes, np.ones(FACES, dtype=np.int64)


def bench(n: int, seed: int, aug, label: str, samples) -> None:
    start = time.perf_counter()
    for i in range(n):
        img, boxes, labels = samples[i % len(samples)]
        train_preprocess(img, boxes, labels, aug, np.random.default_rng([seed, i]))
    elapsed = time.perf_counter() - start
    print(f"{label:<28s} {n / elapsed:7.1f} images/s  ({1000 * elapsed / n:.1f} ms/image)")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    samples = [synthetic_sample(rng) for _ in range(8)]

    aug = default_config().AUG
    print(f"train_preprocess on {WIDTH}x{HEIGHT} images with {FACES} faces, "
          f"output {aug.resize_width}x{aug.resize_height}, one process")
    bench(args.images, args.seed, aug, "default (both branches)", samples)
    das = default_config().AUG
    das.data_anchor_sampling_prob = -1.0       # always data-anchor-sampling
    bench(args.images, args.seed, das, "data-anchor-sampling only", samples)
    ssd = default_config().AUG
    ssd.anchor_sampling = False
    bench(args.images, args.seed, ssd, "SSD square crop only", samples)


if __name__ == "__main__":
    main()
