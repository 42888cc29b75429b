"""Box voting over the union of multi-scale detections (the last step of the reference's test).

The reference takes boxes in descending score order; the top box and every remaining box with
IoU >= 0.3 to it (the +1 pixel convention) form a group, which is removed; groups of one box are
discarded, the others become the score-weighted mean box with the group's maximum score; the
first 750 are kept. It loops in Python over groups with a numpy pass each.

Here the group leaders are what greedy NMS keeps when it suppresses at IoU >= 0.3 (one
``torchvision.ops.nms``), and every other box belongs to the first leader, in score order, that
it overlaps that much. Those overlaps are only computed for box-leader pairs that share a cell
of a coarse grid (overlapping boxes always do), then the groups are summed with ``bincount``.
Arithmetic is float64 as in the reference; the +1 convention is applied by widening the boxes by
one pixel, so NMS and the membership test compute the same IoU.
"""
from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import nms


def _cells(boxes: np.ndarray, cell: float) -> tuple[np.ndarray, np.ndarray]:
    """(owner, cell key) for every grid cell that each box touches."""
    lo = np.floor(boxes[:, :2] / cell).astype(np.int64)
    hi = np.floor(boxes[:, 2:] / cell).astype(np.int64)
    n = np.maximum(hi - lo + 1, 1)                                   # cells along x, y
    counts = n[:, 0] * n[:, 1]
    owner = np.repeat(np.arange(len(boxes)), counts)
    local = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    cx = lo[owner, 0] + local % n[owner, 0]
    cy = lo[owner, 1] + local // n[owner, 0]
    return owner, cx * (1 << 32) + cy


def _overlapping_pairs(boxes: np.ndarray, leaders: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(box index, leader index) pairs that share a grid cell (a superset of overlaps)."""
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    cell = max(float(np.median(sides)), 1.0)
    shift = boxes[:, :2].min(0)
    b_owner, b_key = _cells(np.concatenate([boxes[:, :2] - shift, boxes[:, 2:] - shift], 1), cell)
    lb = boxes[leaders]
    l_owner, l_key = _cells(np.concatenate([lb[:, :2] - shift, lb[:, 2:] - shift], 1), cell)
    order = np.argsort(l_key, kind="stable")
    l_key, l_owner = l_key[order], l_owner[order]
    start = np.searchsorted(l_key, b_key, "left")
    count = np.searchsorted(l_key, b_key, "right") - start
    pair_box = np.repeat(b_owner, count)
    offset = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    return pair_box, l_owner[np.repeat(start, count) + offset]


def box_vote(dets: np.ndarray, iou_thresh: float = 0.3, top_k: int = 750) -> np.ndarray:
    """dets [N, 5] (x1, y1, x2, y2, score) in pixels -> voted [M, 5], M <= top_k, by score."""
    dets = np.asarray(dets, dtype=np.float64).reshape(-1, 5)
    if len(dets) == 0:
        return np.zeros((0, 5))
    # descending as the reference's argsort()[::-1]: equal scores in reverse input order
    dets = dets[np.argsort(dets[:, 4], kind="stable")[::-1]]
    wide = dets[:, :4].copy()
    wide[:, 2:] += 1                                                  # the +1 pixel convention
    rank = torch.arange(len(dets), 0, -1, dtype=torch.float64)      # NMS in exactly this order
    leaders = nms(torch.from_numpy(wide), rank,
                  float(np.nextafter(iou_thresh, 0))).numpy()         # ">= t" as "> t - ulp"
    leaders.sort()                                                    # score order
    pb, pl = _overlapping_pairs(wide, leaders)
    a, b = wide[pb], wide[leaders[pl]]
    w = np.maximum(0.0, np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]))
    h = np.maximum(0.0, np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]))
    inter = w * h
    area = (wide[:, 2] - wide[:, 0]) * (wide[:, 3] - wide[:, 1])
    iou = inter / (area[leaders[pl]] + area[pb] - inter)
    hit = iou >= iou_thresh
    pb, pl = pb[hit], pl[hit]
    order = np.lexsort((pl, pb))                                      # by box, then leader
    first = np.ones(len(order), bool)
    first[1:] = pb[order][1:] != pb[order][:-1]
    member_of = np.full(len(dets), len(leaders))
    member_of[pb[order][first]] = pl[order][first]                    # each box's first leader
    scores = dets[:, 4]
    sizes = np.bincount(member_of, minlength=len(leaders) + 1)[:-1]
    total = np.bincount(member_of, scores, len(leaders) + 1)[:-1]
    weighted = np.stack([np.bincount(member_of, dets[:, k] * scores, len(leaders) + 1)[:-1]
                         for k in range(4)], 1)
    keep = sizes > 1                                                  # isolated boxes dropped
    out = np.concatenate([weighted[keep] / total[keep, None], scores[leaders[keep], None]], 1)
    return out[:top_k] if top_k > 0 else out          # 0: no cap
