"""The four no-reference losses that train the enhancer E(L) (Zero-DCE's; docs/LOW_LEVEL.md).

Each function returns the unweighted term exactly as the reference computes it (its training
loop then takes the mean of the spatial, colour and exposure maps); :class:`EnhanceLoss` weights
them (TV 200, spatial 1, colour 5, exposure 10 towards 0.55 by default) and returns a dict.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def tv_loss(maps: Tensor) -> Tensor:
    """Illumination smoothness of the curve maps A [N, C, H, W]:
    2 * (sum of squared vertical differences / ((H-1) W)
         + sum of squared horizontal differences / (H (W-1))) / N."""
    n, _, h, w = maps.shape
    dh = (maps[:, :, 1:, :] - maps[:, :, :-1, :]).pow(2).sum()
    dw = (maps[:, :, :, 1:] - maps[:, :, :, :-1]).pow(2).sum()
    return 2 * (dh / ((h - 1) * w) + dw / (h * (w - 1))) / n


# Neighbour differences as 3x3 cross-correlations with zero padding: centre minus neighbour.
_DIRECTION_KERNELS = torch.tensor([
    [[0, 0, 0], [-1, 1, 0], [0, 0, 0]],     # left
    [[0, 0, 0], [0, 1, -1], [0, 0, 0]],     # right
    [[0, -1, 0], [0, 1, 0], [0, 0, 0]],     # up
    [[0, 0, 0], [0, 1, 0], [0, -1, 0]],     # down
], dtype=torch.float32).unsqueeze(1)        # [4, 1, 3, 3]


def spatial_consistency_map(a: Tensor, b: Tensor, pool: int = 4) -> Tensor:
    """L_spa map [N, 1, H/4, W/4]: on the channel means average-pooled over 4x4 regions, the
    squared gap between ``a``'s and ``b``'s differences to the left, right, upper and lower
    neighbour, summed over the four directions (symmetric in ``a`` and ``b``)."""
    kernels = _DIRECTION_KERNELS.to(a.device, a.dtype)
    da = F.conv2d(F.avg_pool2d(a.mean(1, keepdim=True), pool), kernels, padding=1)
    db = F.conv2d(F.avg_pool2d(b.mean(1, keepdim=True), pool), kernels, padding=1)
    return (da - db).pow(2).sum(1, keepdim=True)


def color_constancy_map(y: Tensor) -> Tensor:
    """L_col per image [N, 1, 1, 1]: sqrt(D_rg^2 + D_rb^2 + D_gb^2) with D_rg = (mu_r - mu_g)^2.

    The square root's gradient at an exactly grey image is 0 here instead of the reference's
    NaN (its ``pow(., 0.5)`` differentiates to inf * 0); the value is unchanged."""
    mu = y.mean((2, 3), keepdim=True)
    mr, mg, mb = mu[:, 0:1], mu[:, 1:2], mu[:, 2:3]
    k = (mr - mg).pow(2).pow(2) + (mr - mb).pow(2).pow(2) + (mb - mg).pow(2).pow(2)
    positive = k > 0
    return torch.where(positive, torch.where(positive, k, torch.ones_like(k)).sqrt(),
                       torch.zeros_like(k))


def exposure_loss(y: Tensor, level: float = 0.55, patch: int = 16) -> Tensor:
    """L_exp: mean over 16x16 regions of the channel-mean intensity of (mean - level)^2."""
    mean = F.avg_pool2d(y.mean(1, keepdim=True), patch)
    return (mean - level).pow(2).mean()


class EnhanceLoss(nn.Module):
    """Weighted no-reference loss terms as a dict ``{"tv", "spa", "col", "exp"}``.

    ``forward(x, y, maps)``: the input image ``x``, the enhanced ``y`` and the curve maps."""

    def __init__(self, w_tv: float = 200.0, w_spa: float = 1.0, w_col: float = 5.0,
                 w_exp: float = 10.0, exposure: float = 0.55):
        super().__init__()
        self.w_tv, self.w_spa, self.w_col, self.w_exp = w_tv, w_spa, w_col, w_exp
        self.exposure = exposure

    def forward(self, x: Tensor, y: Tensor, maps: Tensor) -> dict[str, Tensor]:
        return {
            "tv": self.w_tv * tv_loss(maps),
            "spa": self.w_spa * spatial_consistency_map(y, x).mean(),
            "col": self.w_col * color_constancy_map(y).mean(),
            "exp": self.w_exp * exposure_loss(y, self.exposure),
        }
