"""Batched face detection with a trained detector: normalise, forward, decode, NMS.

Used by test.py, the benchmarks, the demo and the export check.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from layers.anchors import AnchorGenerator
from layers.detect import postprocess

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, amp: str):
    """``torch.autocast`` for RUN.AMP = bf16 | fp16, a no-op context for 'none'."""
    if amp == "none":
        return nullcontext()
    if amp not in AMP_DTYPES:
        raise ValueError(f"config key RUN.AMP must be none, bf16 or fp16, not {amp!r}")
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


class FaceDetector:
    """Wraps a detector for inference on RGB uint8 images of one size per call."""

    def __init__(self, net: nn.Module, anchor_cfg, detect_cfg, img_mean: Sequence[float],
                 device: torch.device, amp: str = "none", channels_last: bool = False):
        self.net = net.eval().to(device)
        self.device, self.amp = device, amp
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net.to(memory_format=self.memory_format)
        self.anchors = AnchorGenerator(anchor_cfg.STEPS, anchor_cfg.ANCHOR_SIZES2)
        self.variances = tuple(anchor_cfg.VARIANCE)
        self.detect_cfg = detect_cfg
        b, g, r = img_mean                                  # the config holds the BGR mean
        self.mean = torch.tensor([r, g, b], dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def to_input(self, images: np.ndarray | Tensor) -> Tensor:
        """[N, H, W, 3] uint8 RGB -> [N, 3, H, W] float32 minus the mean (REFERENCE 3.1)."""
        x = torch.as_tensor(images).to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float() - self.mean
        return x.contiguous(memory_format=self.memory_format)

    @torch.no_grad()
    def forward(self, x: Tensor):
        with autocast(self.device, self.amp):
            return self.net(x)

    @torch.no_grad()
    def postprocess(self, out, image_size) -> list[Tensor]:
        d = self.detect_cfg
        priors = self.anchors(image_size, out.feature_sizes, self.device)
        return postprocess(out.loc_pal2, out.conf_pal2, priors, self.variances,
                           d.CONF_THRESH, d.NMS_THRESH, d.NMS_TOP_K, d.TOP_K)

    def __call__(self, images: np.ndarray | Tensor) -> list[Tensor]:
        """Normalised (x1, y1, x2, y2, score) detections per image, on the CPU."""
        x = self.to_input(images)
        dets = self.postprocess(self.forward(x), tuple(x.shape[-2:]))
        return [d.cpu() for d in dets]
