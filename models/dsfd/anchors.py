"""Anchors ("priors", made on every forward from the feature sizes), cached per input size.

For level k, row i, column j there is one anchor (one aspect ratio, 1.0)
``(cx, cy, w, h) = ((j + 0.5) / (imw / step_k), (i + 0.5) / (imh / step_k), s_k / imw, s_k / imh)``,
normalised to [0, 1], ordered level-major, then row, then column, which is the order in which the
detector flattens its head outputs. The arithmetic is done in float64 and cast to float32, as the
reference builds them from Python floats, so the values are bit-identical.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from utils.cache import LRUCache

Size = tuple[int, int]


def vgg_feature_sizes(height: int, width: int) -> list[Size]:
    """Feature-map sizes of DSFD-VGG's six levels for an input of ``height x width``
    (floor after the first two pools, ceil at pool3, floor at pool4 and pool5, ceil at the two
    stride-2 extras; measured on the reference model)."""
    def recurse(n: int) -> list[int]:
        s1 = (n // 2) // 2
        s2 = math.ceil(s1 / 2)
        s3 = s2 // 2
        s4 = s3 // 2
        s5 = math.ceil(s4 / 2)
        s6 = math.ceil(s5 / 2)
        return [s1, s2, s3, s4, s5, s6]
    return list(zip(recurse(height), recurse(width)))


def make_anchors(image_size: Size, feature_sizes: Sequence[Size], steps: Sequence[int],
                 anchor_sizes: Sequence[float]) -> torch.Tensor:
    """Centre-form anchors [P, 4] (float32, CPU) for one shot."""
    imh, imw = image_size
    levels = []
    for (fh, fw), step, size in zip(feature_sizes, steps, anchor_sizes):
        cy = (torch.arange(fh, dtype=torch.float64) + 0.5) / (imh / step)
        cx = (torch.arange(fw, dtype=torch.float64) + 0.5) / (imw / step)
        cy, cx = torch.meshgrid(cy, cx, indexing="ij")                       # [fh, fw]
        wh = torch.tensor([size / imw, size / imh], dtype=torch.float64).expand(fh * fw, 2)
        levels.append(torch.cat((cx.reshape(-1, 1), cy.reshape(-1, 1), wh), 1))
    return torch.cat(levels).float()


class AnchorGenerator:
    """Anchors for one shot, computed once per (input size, feature sizes, device)."""

    def __init__(self, steps: Sequence[int], anchor_sizes: Sequence[float], cache_size: int = 32):
        self.steps = tuple(steps)
        self.anchor_sizes = tuple(anchor_sizes)
        self._cache = LRUCache(cache_size)

    def __call__(self, image_size: Size, feature_sizes: Sequence[Size],
                 device: torch.device | str = "cpu") -> torch.Tensor:
        key = (tuple(image_size), tuple(map(tuple, feature_sizes)), str(device))
        return self._cache.get(key, lambda: make_anchors(image_size, feature_sizes, self.steps,
                                                         self.anchor_sizes).to(device))

    def level_shapes(self, feature_sizes: Sequence[Size]) -> list[tuple[int, int, int, int]]:
        """(offset, fh, fw, level) per level, for code that exploits the grid structure."""
        out, offset = [], 0
        for k, (fh, fw) in enumerate(feature_sizes):
            out.append((offset, fh, fw, k))
            offset += fh * fw
        return out
