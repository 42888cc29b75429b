"""Test-time post-processing of one shot (at test, the second: PAL2), as a plain batched function.

Softmax over the classes, keep face scores > CONF_THRESH, at most NMS_TOP_K candidates per image
by score, decode, NMS at NMS_THRESH (a box is suppressed when its IoU with a kept, higher-scoring
box exceeds the threshold; areas without the +1 convention, as torchvision computes them), keep
TOP_K. The reference's legacy ``autograd.Function`` no longer runs on modern PyTorch and its NMS
is a Python loop; this is one ``batched_nms`` call for the whole batch.

For speed the candidates are first ranked by the logit margin ``c_face - c_max_other``, which
orders anchors as the face probability does; the softmax is then computed on the candidates
alone, and the threshold applied to it, so the kept set is the reference's.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from layers.box_utils import decode

FACE = 1


@torch.no_grad()
def postprocess(loc: Tensor, conf: Tensor, priors: Tensor, variances: Sequence[float] = (0.1, 0.2),
                conf_thresh: float = 0.05, nms_thresh: float = 0.3, nms_top_k: int = 5000,
                top_k: int = 750) -> list[Tensor]:
    """loc [B, P, 4], conf [B, P, C] (logits), priors [P, 4] -> per image a [n, 5] tensor of
    ``(x1, y1, x2, y2, score)`` rows, normalised to [0, 1], sorted by descending score."""
    B, P, C = conf.shape
    conf = conf.float()
    others = torch.cat((conf[..., :FACE], conf[..., FACE + 1:]), -1).amax(-1)
    margin = conf[..., FACE] - others                                      # [B, P]
    k = min(nms_top_k, P) if nms_top_k > 0 else P            # 0: no cap
    top_margin, top_idx = margin.topk(k, dim=1, sorted=False)              # [B, k]
    # p_face > t implies margin > log(t / (1 - t)); the exact test is on the softmax below
    bound = math.log(conf_thresh / (1 - conf_thresh)) - 1e-4 if 0 < conf_thresh < 1 else -math.inf
    img_idx, cand = (top_margin > bound).nonzero(as_tuple=True)            # [N]
    anchor_idx = top_idx[img_idx, cand]
    scores = torch.softmax(conf[img_idx, anchor_idx], -1)[:, FACE]
    passed = scores > conf_thresh
    img_idx, anchor_idx, scores = img_idx[passed], anchor_idx[passed], scores[passed]
    boxes = decode(loc[img_idx, anchor_idx].float(), priors[anchor_idx], variances)   # [N, 4]

    keep = batched_nms(boxes, scores, img_idx, nms_thresh)                  # by score, desc
    keep = keep[torch.sort(img_idx[keep], stable=True).indices]             # group by image
    kept_img = img_idx[keep]
    counts = torch.bincount(kept_img, minlength=B)
    first = torch.cumsum(counts, 0) - counts                                # start of each image
    rank = torch.arange(len(keep), device=keep.device) - first[kept_img]
    if top_k > 0:                                                            # 0: no cap
        keep = keep[rank < top_k]
        counts = counts.clamp(max=top_k)
    rows = torch.cat((boxes[keep], scores[keep, None]), 1)
    return list(rows.split(counts.tolist()))
