"""Self-supervised heads on the detector's six first-shot sources (jigsaw, rotation, MoCo).

Every level k has its own small head (the reference's ``UniversalMLPV2`` /
``ContrastiveMLPConv``): ``conv1`` 3x3 C_k->64, ReLU, ``conv2`` 3x3 64->64, ReLU, global average
pool, ``fc`` 64->out. Attribute names are the reference's so the released head files load
strictly:

* :class:`ClassificationHead` (jigsaw 30/24-way, rotation 4-way):
  ``Head.MLP{0..5}.{conv1,conv2,fc}`` (36 tensors; 2,003,124 parameters for the 30-way head at full width);
* :class:`ContrastiveHead` (MoCo ``head_q`` / ``head_k``): ``MLPs.{0..5}.{conv1,conv2,fc}``
  (2,041,344 parameters with the 128-d output).

Convolution and linear weights are Kaiming-normal (fan_in, gain sqrt(2)); biases keep PyTorch's
default initialisation, as in the reference.
"""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

HIDDEN = 64          # channels of conv1 / conv2
NUM_LEVELS = 6


class LevelHead(nn.Module):
    """conv-ReLU-conv-ReLU-pool-fc on one feature map: ``[N, C, H, W] -> [N, out]``."""

    def __init__(self, in_channels: int, out_features: int, hidden: int = HIDDEN):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.fc = nn.Linear(hidden, out_features)
        for layer in (self.conv1, self.conv2, self.fc):
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv1(x), inplace=True)
        x = F.relu(self.conv2(x), inplace=True)
        return self.fc(x.mean(dim=(2, 3)))                  # global average pool: [N, hidden]


class LevelHeads(nn.Module):
    """The reference's ``BasicHead``: one :class:`LevelHead` per level as ``MLP0`` ... ``MLP5``
    (plain attributes, not a ModuleList, so the keys read ``MLP3.conv1.weight``)."""

    def __init__(self, channels: Sequence[int], out_features: int):
        super().__init__()
        self.num_levels = len(channels)
        for k, c in enumerate(channels):
            setattr(self, f"MLP{k}", LevelHead(c, out_features))

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        return [getattr(self, f"MLP{k}")(f) for k, f in enumerate(feats)]


class ClassificationHead(nn.Module):
    """The reference's ``BasicTrainer``: per-level classifiers under ``Head``.

    ``forward(feats, labels)`` is the cross-entropy (mean over the batch) summed over the levels
    (every level weighted 1, as in the reference).
    """

    def __init__(self, channels: Sequence[int], num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.Head = LevelHeads(channels, num_classes)

    def logits(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """``[N, num_classes]`` per level."""
        return self.Head(feats)

    def forward(self, feats: Sequence[Tensor], labels: Tensor) -> Tensor:
        return sum(F.cross_entropy(z.float(), labels) for z in self.logits(feats))


class ContrastiveHead(nn.Module):
    """The reference's ``ContrastiveHead``: ``MLPs``, a ModuleList of per-level projections to
    the ``dim``-d MoCo embedding (not normalised here)."""

    def __init__(self, channels: Sequence[int], dim: int = 128):
        super().__init__()
        self.MLPs = nn.ModuleList([LevelHead(c, dim) for c in channels])

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        return [mlp(f) for mlp, f in zip(self.MLPs, feats)]
