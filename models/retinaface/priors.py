"""RetinaFace priors, box and landmark coding, and test-time post-processing (biubug6/
Pytorch_Retinaface ``PriorBox``, ``utils/box_utils.py``, ``detect.py`` / ``test_widerface.py``).

Priors: level k has a ``ceil(H / step_k) x ceil(W / step_k)`` grid; cell (i, j) holds one square
prior per size of ``min_sizes[k]``, ``(cx, cy, w, h) = ((j + 0.5) * step / W,
(i + 0.5) * step / H, s / W, s / H)``, ordered level, row, column, size (anchor-minor), the order
of the heads' outputs. Computed in float64 and cast to float32 as the reference (Python floats
into ``torch.Tensor``), so the values are bit-identical; no clipping by default.

Coding uses the reference's operation order (its ``decode`` forms x2 as ``x1 + w``, not
``cx + w / 2``), so decoded boxes match it bit for bit; this is why the project's
``layers/box_utils.decode`` is not used here.

Post-processing (:func:`detect_faces`) follows ``detect.py``: softmax, keep scores above the
threshold, sort, at most ``top_k`` candidates, NMS in pixels with the ``+1`` area convention of
``py_cpu_nms`` (suppress IoU > threshold), at most ``keep_top_k`` detections.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor
from torchvision.ops import nms

from utils.cache import LRUCache

Size = tuple[int, int]


def feature_sizes(image_size: Size, steps: Sequence[int]) -> list[Size]:
    """``(ceil(H / step), ceil(W / step))`` per level (what the strided convs produce)."""
    h, w = image_size
    return [(math.ceil(h / s), math.ceil(w / s)) for s in steps]


def prior_boxes(image_size: Size, min_sizes: Sequence[Sequence[float]], steps: Sequence[int],
                clip: bool = False) -> Tensor:
    """Centre-form priors ``[P, 4]`` float32 (CPU) for an input of ``image_size = (H, W)``."""
    h, w = image_size
    levels = []
    for (fh, fw), step, sizes in zip(feature_sizes(image_size, steps), steps, min_sizes):
        cx = (torch.arange(fw, dtype=torch.float64) + 0.5) * step / w          # [fw]
        cy = (torch.arange(fh, dtype=torch.float64) + 0.5) * step / h          # [fh]
        a = len(sizes)
        grid = torch.empty(fh, fw, a, 4, dtype=torch.float64)
        grid[..., 0] = cx[None, :, None]
        grid[..., 1] = cy[:, None, None]
        grid[..., 2] = torch.tensor([s / w for s in sizes], dtype=torch.float64)
        grid[..., 3] = torch.tensor([s / h for s in sizes], dtype=torch.float64)
        levels.append(grid.reshape(-1, 4))
    out = torch.cat(levels).float()
    return out.clamp_(0, 1) if clip else out


class PriorCache:
    """:func:`prior_boxes` computed once per (input size, device), least recently used out."""

    def __init__(self, min_sizes, steps, clip: bool = False, cache_size: int = 32):
        self.min_sizes = tuple(tuple(s) for s in min_sizes)
        self.steps = tuple(steps)
        self.clip = bool(clip)
        self._cache = LRUCache(cache_size)

    def __call__(self, image_size: Size, device: torch.device | str = "cpu") -> Tensor:
        key = (int(image_size[0]), int(image_size[1]), str(device))
        return self._cache.get(key, lambda: prior_boxes(key[:2], self.min_sizes, self.steps,
                                                        self.clip).to(device))


# ---- coding (centre-form priors, corner-form boxes, all normalised) ------------------------------

def point_form(priors: Tensor) -> Tensor:
    """(cx, cy, w, h) -> (x1, y1, x2, y2) as the reference: ``c - s / 2``, ``c + s / 2``."""
    centre, size = priors[..., :2], priors[..., 2:]
    return torch.cat((centre - size / 2, centre + size / 2), -1)


def encode(matched: Tensor, priors: Tensor, variances: Sequence[float]) -> Tensor:
    """Regression targets ``[..., 4]`` of corner boxes on their priors."""
    g_cxcy = (matched[..., :2] + matched[..., 2:]) / 2 - priors[..., :2]
    g_cxcy = g_cxcy / (variances[0] * priors[..., 2:])
    g_wh = (matched[..., 2:] - matched[..., :2]) / priors[..., 2:]
    return torch.cat((g_cxcy, torch.log(g_wh) / variances[1]), -1)


def encode_landm(matched: Tensor, priors: Tensor, variances: Sequence[float]) -> Tensor:
    """Landmark targets ``[..., 10]``: each point's offset from the prior centre over
    ``variance0 * prior size``."""
    pts = matched.unflatten(-1, (matched.shape[-1] // 2, 2))                    # [..., 5, 2]
    g = (pts - priors[..., None, :2]) / (variances[0] * priors[..., None, 2:])
    return g.flatten(-2)


def decode(loc: Tensor, priors: Tensor, variances: Sequence[float]) -> Tensor:
    """Offsets ``[..., 4]`` -> corner boxes; x2 = x1 + w as the reference computes it."""
    cxcy = priors[..., :2] + loc[..., :2] * variances[0] * priors[..., 2:]
    wh = priors[..., 2:] * torch.exp(loc[..., 2:] * variances[1])
    xy1 = cxcy - wh / 2
    return torch.cat((xy1, xy1 + wh), -1)


def decode_landm(pre: Tensor, priors: Tensor, variances: Sequence[float]) -> Tensor:
    """Offsets ``[..., 10]`` -> landmark points ``[..., 10]`` (x, y) x 5."""
    pts = pre.unflatten(-1, (pre.shape[-1] // 2, 2))
    out = priors[..., None, :2] + pts * variances[0] * priors[..., None, 2:]
    return out.flatten(-2)


# ---- post-processing -----------------------------------------------------------------------------

def nms_plus_one(boxes: Tensor, thresh: float) -> Tensor:
    """``py_cpu_nms`` on boxes already sorted by descending score: indices kept, in order.

    The reference's areas and intersections are ``(x2 - x1 + 1) * (y2 - y1 + 1)``; that is
    exactly torchvision's IoU of the boxes with ``x2 + 1``, ``y2 + 1`` (rounding aside, see
    docs/DECISIONS.md). Strictly decreasing stand-in scores keep the caller's order for ties.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    shifted = torch.cat((boxes[:, :2], boxes[:, 2:] + 1), 1)
    rank = torch.arange(len(boxes), 0, -1, device=boxes.device, dtype=torch.float32)
    return nms(shifted, rank, float(thresh))


@torch.no_grad()
def detect_faces(loc: Tensor, conf: Tensor, landms: Tensor, priors: Tensor, image_size: Size,
                 variances: Sequence[float] = (0.1, 0.2), conf_thresh: float = 0.02,
                 nms_thresh: float = 0.4, top_k: int = 5000, keep_top_k: int = 750) -> list[Tensor]:
    """loc ``[B, P, 4]``, conf ``[B, P, 2]`` logits, landms ``[B, P, 10]`` -> per image
    ``[k, 15]`` rows ``x1, y1, x2, y2, score, 5 x (x, y)`` normalised by ``image_size = (H, W)``,
    by descending score. ``top_k`` / ``keep_top_k`` <= 0 mean no cap (test_widerface.py)."""
    h, w = image_size
    scores = torch.softmax(conf.float(), dim=-1)[..., 1]                       # [B, P]
    scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=loc.device)
    out = []
    for b in range(loc.shape[0]):       # images are independent; NMS must not mix them
        idx = (scores[b] > conf_thresh).nonzero().squeeze(1)
        s, order = scores[b, idx].sort(descending=True, stable=True)
        if top_k > 0:
            s, order = s[:top_k], order[:top_k]
        idx = idx[order]
        boxes = decode(loc[b, idx].float(), priors[idx], variances)             # [n, 4]
        keep = nms_plus_one(boxes * scale, nms_thresh)                           # pixels
        if keep_top_k > 0:
            keep = keep[:keep_top_k]
        idx = idx[keep]
        points = decode_landm(landms[b, idx].float(), priors[idx], variances)
        out.append(torch.cat((boxes[keep], s[keep, None], points), 1))
    return out
