"""Channel-wise L2 normalisation with a learned per-channel scale (ParseNet, as in DSFD)."""
import torch
from torch import nn


class L2Norm(nn.Module):
    """``x / (||x||_2 over channels + eps) * weight``; the parameter is named ``weight``
    as in the released checkpoints, and eps is added after the square root."""

    def __init__(self, channels: int, scale: float, eps: float = 1e-10):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps     # [N, 1, H, W]
        return x / norm * self.weight.view(1, -1, 1, 1)
