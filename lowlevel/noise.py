"""The image steps of the noise synthesis D(H), and the pix2pix training pairs (docs/LOW_LEVEL.md).

Pipeline, for the record (the network steps are in ``lowlevel/pix2pix.py`` and the tools):

1. E(L)_blur = median5(bilateral25/75/75(E(L))) for every enhanced DARK FACE image.
2. pix2pix learns E(L)_blur -> E(L) on aligned random 256x256 crops (:class:`PairedCrops`).
3. H_blur = pad(median5(bilateral(H + n))) for every WIDER train image H, with ``n`` one
   Gaussian noise plane of std 16 shared by R, G and B, and ``pad`` a mirror padding
   (edge pixel repeated, cv2.BORDER_REFLECT) of 256 px on the top and left and as much as
   needed on the bottom and right for each side to become ``ceil((size + 512) / 256) * 256``.
4. D(H) = G(H_blur)[256:256+H, 256:256+W], the generator output cropped back to H's size.

All functions work on HxWx3 uint8 arrays; the channel order does not matter to any of them
(the noise is the same on every channel, the bilateral filter's colour distance and the median
are symmetric in the channels).
"""
from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from data.image_folder import read_rgb

PAD = 256                     # pad on the top/left, and the multiple the sides round up to


def add_mono_gaussian_noise(img: np.ndarray, sigma: float, rng: np.random.Generator
                            ) -> np.ndarray:
    """``clip(img + n, 0, 255)`` truncated to uint8, with ``n ~ N(0, sigma^2)`` one plane
    [H, W, 1] repeated over the channels (the reference's ``var`` argument is this std)."""
    noise = rng.normal(0.0, sigma, size=(*img.shape[:2], 1))
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def blur(img: np.ndarray, bilateral: Sequence[float] = (25, 75, 75), median: int = 5
         ) -> np.ndarray:
    """cv2 bilateral filter (diameter, sigma colour, sigma space), then a median blur."""
    d, sigma_color, sigma_space = bilateral
    out = cv2.bilateralFilter(np.ascontiguousarray(img), int(d), float(sigma_color),
                              float(sigma_space))
    return cv2.medianBlur(out, int(median))


def padded_size(size: int, pad: int = PAD) -> int:
    """``size + 2 pad`` rounded up to a multiple of ``pad``."""
    if pad <= 0:
        raise ValueError(f"config key NOISE.PAD={pad} must be positive (a multiple of 256 for "
                         f"the U-Net-256 generator)")
    return int(math.ceil((size + 2 * pad) / pad) * pad)


def pad_amounts(height: int, width: int, pad: int = PAD) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) padding of an image of ``height`` x ``width``."""
    return (pad, padded_size(height, pad) - height - pad,
            pad, padded_size(width, pad) - width - pad)


def pad_image(img: np.ndarray, pad: int = PAD) -> np.ndarray:
    """Mirror-pad (cv2.BORDER_REFLECT, any pad size) as in step 3 of the module docstring."""
    top, bottom, left, right = pad_amounts(img.shape[0], img.shape[1], pad)
    return cv2.copyMakeBorder(np.ascontiguousarray(img), top, bottom, left, right,
                              cv2.BORDER_REFLECT)


def crop_back(padded: np.ndarray, height: int, width: int, pad: int = PAD) -> np.ndarray:
    """Undo :func:`pad_image`: ``padded[pad:pad+height, pad:pad+width]``."""
    if padded.shape[0] < pad + height or padded.shape[1] < pad + width:
        raise ValueError(f"a {padded.shape[:2]} array cannot hold a {height}x{width} image "
                         f"at offset {pad}")
    return padded[pad:pad + height, pad:pad + width]


def image_seed(name: str, seed: int = 0) -> int:
    """A per-image seed from its file name, so every image's noise is reproducible and an
    interrupted run resumes with the same draws."""
    return (zlib.crc32(name.encode("utf-8")) + 1_000_003 * seed) % 2 ** 32


def make_h_blur(img: np.ndarray, sigma: float, bilateral: Sequence[float], median: int,
                pad: int, rng: np.random.Generator) -> np.ndarray:
    """H -> H_blur (noise, blur, pad): the generator's input for D(H)."""
    return pad_image(blur(add_mono_gaussian_noise(img, sigma, rng), bilateral, median), pad)


# ---------------------------------------------------------------------------------------------
# generator input/output conversions


def to_generator_input(img: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> [1, 3, H, W] float in [-1, 1] (ToTensor then Normalize(0.5, 0.5))."""
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)
    return x.sub_(0.5).div_(0.5)[None]


def from_generator_output(y: torch.Tensor) -> np.ndarray:
    """[1, 3, H, W] in [-1, 1] -> HxWx3 uint8 as pix2pix's ``tensor2im``:
    ``(y + 1) / 2 * 255`` truncated."""
    z = (y[0].detach().float().cpu().permute(1, 2, 0) + 1) / 2.0 * 255.0
    return z.clamp_(0, 255).to(torch.uint8).numpy()


# ---------------------------------------------------------------------------------------------
# pix2pix training pairs


class PairedCrops(Dataset):
    """Aligned (E(L)_blur, E(L)) crops for pix2pix, keyed by ``(epoch, index)``.

    Both images of a pair get the same random ``crop`` x ``crop`` window and the same random
    horizontal flip (pix2pix's ``--preprocess crop`` with flipping on), drawn from a generator
    seeded by (seed, epoch, index): resuming replays the same crops. A pair smaller than the
    crop is mirror-padded up to it. Returns ``(A, B)`` in [-1, 1], or ``None`` for an
    unreadable or mismatched pair (the collate function drops it and counts it).
    """

    def __init__(self, pairs: Sequence[tuple[Path, Path]], crop: int = 256, seed: int = 0):
        if not pairs:
            raise ValueError("no (blurred, enhanced) image pairs")
        self.pairs, self.crop, self.seed = list(pairs), crop, seed

    def __len__(self) -> int:
        return len(self.pairs)

    def _fit(self, img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        if h >= self.crop and w >= self.crop:
            return img
        return cv2.copyMakeBorder(img, 0, max(0, self.crop - h), 0, max(0, self.crop - w),
                                  cv2.BORDER_REFLECT)

    def __getitem__(self, key):
        epoch, index = key
        path_a, path_b = self.pairs[index]
        try:
            a, b = read_rgb(path_a), read_rgb(path_b)
        except (OSError, ValueError):
            return None
        if a.shape != b.shape:
            return None
        a, b = self._fit(a), self._fit(b)
        rng = np.random.default_rng([self.seed, epoch, index])
        h, w = a.shape[:2]
        y = int(rng.integers(0, h - self.crop + 1))
        x = int(rng.integers(0, w - self.crop + 1))
        flip = bool(rng.random() < 0.5)
        a = a[y:y + self.crop, x:x + self.crop]
        b = b[y:y + self.crop, x:x + self.crop]
        if flip:
            a, b = a[:, ::-1], b[:, ::-1]
        return to_generator_input(a)[0], to_generator_input(b)[0]


def collate_pairs(samples):
    """Stack the usable samples; also return how many were dropped."""
    good = [s for s in samples if s is not None]
    dropped = len(samples) - len(good)
    if not good:
        return None, None, dropped
    return (torch.stack([s[0] for s in good]), torch.stack([s[1] for s in good]), dropped)
