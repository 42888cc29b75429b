"""Fusing the detections of several teachers into one set of pseudo boxes (docs/DUAL_TEACHER.md).

Inputs are per image: a list over teachers of ``[n_t, 5]`` pixel arrays ``x1, y1, x2, y2, score``
(or ``[n_t, 5 + 2L]`` with ``L`` landmarks after the score, the detection convention of
``models/interface.py``), optionally with the landmarks given separately as ``[n_t, 2L]``. A
teacher without landmarks gives none; in the output its boxes count as having no landmarks
(all ``-1``). Outputs are :class:`Fused`: ``dets`` ``[m, 5]`` (``[m, 5 + 2L]`` when any teacher
had landmarks) sorted by descending score, and ``support`` ``[m]``, the number of distinct
teachers with a box in each fused box's cluster.

**Weighted box fusion** (Solovyev, Wang & Gabruseva, "Weighted boxes fusion: ensembling boxes
from object detection models", 2021; their ``ensemble_boxes`` package). With teacher weights
``w_t`` every box's score becomes ``c = s * w_t``; boxes are visited by descending ``c``; a box
joins the cluster whose *current fused box* it overlaps most if that IoU is ``> iou_thr``,
otherwise it starts a new cluster. A cluster's fused box is the ``c``-weighted mean of its
boxes' corners (landmarks likewise, over the members that have them), updated after every
join. Its score is the paper's ``"avg"`` rule, ``mean(c) * min(T, N) / sum(w)`` with ``N``
teachers and ``T`` boxes in the cluster: with equal weights, the mean score times ``T / N``, so a
box found by one teacher of two keeps half its score. When every teacher gives at most one box
per cluster (NMS-ed outputs do) that is ``sum over the cluster's teachers of w_t * s_t / sum(w)``:
a weighted mean in which an absent teacher counts as score 0. A teacher with several boxes in one
cluster (e.g. from test-time passes) enters that sum once, with the mean of its scores, so it
cannot outvote the others by agreeing with itself and the score stays in [0, 1]; the paper's
formula would count each box (docs/DECISIONS.md).

**Score-aware cross-teacher NMS**: boxes ranked by ``s * w_t / max(w)``; greedy NMS (IoU
``> iou_thr`` suppresses) keeps the best box of each cluster with its own corners and that
score; a cluster is the kept box and the boxes it suppressed (each suppressed box belongs to the
first kept box, in rank order, that overlaps it by more than ``iou_thr``).

WBF is sequential by construction (a box's cluster depends on the fused boxes made so far), so
it loops over boxes once, with each step vectorised over the current clusters: O(n x clusters)
per image. Everything is float64 numpy; IoU is the continuous one (no ``+ 1`` pixel).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch
from torchvision.ops import box_iou, nms

MISSING = -1.0          # the landmark marker of a face without landmarks (models/interface.py)


class Fused(NamedTuple):
    dets: np.ndarray        # [m, 5] or [m, 5 + 2L] pixels, descending score
    support: np.ndarray     # [m] int64: distinct teachers in each cluster


class _Pool(NamedTuple):
    """Every teacher's boxes in one array (after the score filter)."""
    boxes: np.ndarray       # [n, 4]
    scores: np.ndarray      # [n] score x teacher weight
    teacher: np.ndarray     # [n] int64
    landmarks: np.ndarray | None    # [n, 2L] or None when no teacher has landmarks
    has_lm: np.ndarray      # [n] bool


def _teacher_weights(n_teachers: int, weights) -> np.ndarray:
    w = np.ones(n_teachers) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (n_teachers,):
        raise ValueError(f"{n_teachers} teachers but {w.size} weights")
    if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"teacher weights must be finite, >= 0 and not all 0, got {w.tolist()}")
    return w


def _split(d, lm, t: int) -> tuple[np.ndarray, np.ndarray | None]:
    """One teacher's ``[n, 5]`` boxes and ``[n, 2L]`` landmarks (or None)."""
    d = np.asarray(d, dtype=np.float64)
    d = d.reshape(0, 5) if d.size == 0 and d.ndim != 2 else d
    if d.ndim != 2 or d.shape[1] < 5 or (d.shape[1] - 5) % 2:
        raise ValueError(f"teacher {t}: expected [n, 5] or [n, 5 + 2L] detections, got "
                         f"{d.shape}")
    if lm is not None:
        if d.shape[1] > 5:
            raise ValueError(f"teacher {t}: landmarks given twice (in the detections and apart)")
        lm = np.asarray(lm, dtype=np.float64)
        lm = lm.reshape(lm.shape[0], -1) if lm.ndim == 3 else lm        # [n, L, 2] accepted
        if lm.ndim != 2 or len(lm) != len(d) or lm.shape[1] % 2:
            raise ValueError(f"teacher {t}: landmarks {lm.shape} do not fit {len(d)} boxes")
    elif d.shape[1] > 5:
        lm = d[:, 5:]
    return d[:, :5], lm


def _pool(dets: Sequence, landmarks, weights: np.ndarray, skip_thr: float) -> _Pool:
    landmarks = [None] * len(dets) if landmarks is None else list(landmarks)
    if len(landmarks) != len(dets):
        raise ValueError(f"{len(dets)} teachers but {len(landmarks)} landmark arrays")
    parts = [_split(d, lm, t) for t, (d, lm) in enumerate(zip(dets, landmarks))]
    widths = {lm.shape[1] for _, lm in parts if lm is not None and lm.shape[1]}
    if len(widths) > 1:
        raise ValueError(f"teachers give different numbers of landmark coordinates: {widths}")
    width = widths.pop() if widths else 0
    boxes = np.concatenate([b for b, _ in parts]) if parts else np.zeros((0, 5))
    teacher = np.concatenate([np.full(len(b), t) for t, (b, _) in enumerate(parts)]) \
        if parts else np.zeros(0, np.int64)
    lms = None
    if width:
        lms = np.concatenate([lm if lm is not None and lm.shape[1] == width
                              else np.full((len(b), width), MISSING) for b, lm in parts])
    # a box of score 0 (or weight 0) cannot weigh in a score-weighted mean: dropped
    keep = (boxes[:, 4] >= skip_thr) & (boxes[:, 4] * weights[teacher] > 0)
    lms = lms[keep] if lms is not None else None
    has_lm = ~(lms == MISSING).all(1) if lms is not None else np.zeros(int(keep.sum()), bool)
    return _Pool(boxes[keep, :4], boxes[keep, 4] * weights[teacher[keep]],
                 teacher[keep].astype(np.int64), lms, has_lm)


def _iou_one(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one box [4] with boxes [k, 4] -> [k]."""
    w = np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0])
    h = np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1])
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    union = area + (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1]) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _per_teacher(cluster: np.ndarray, teacher: np.ndarray, c: np.ndarray,
                 m: int) -> tuple[np.ndarray, np.ndarray]:
    """``[m]`` distinct teachers per cluster, and ``[m]`` the sum over them of each teacher's
    mean ``c`` in the cluster."""
    base = int(teacher.max(initial=0)) + 1
    pairs, inverse = np.unique(cluster * base + teacher, return_inverse=True)
    mean_c = np.bincount(inverse, c) / np.bincount(inverse)                  # per (cluster, t)
    owner = pairs // base
    return (np.bincount(owner, minlength=m).astype(np.int64),
            np.bincount(owner, mean_c, minlength=m))


def _weighted_landmarks(pool: _Pool, cluster: np.ndarray, m: int) -> np.ndarray:
    """[m, 2L] score-weighted mean landmarks of each cluster's members that have them."""
    lm = pool.landmarks
    c = np.where(pool.has_lm, pool.scores, 0.0)
    total = np.bincount(cluster, c, minlength=m)                                  # [m]
    sums = np.zeros((m, lm.shape[1]))
    np.add.at(sums, cluster, np.where(pool.has_lm[:, None], lm, 0.0) * c[:, None])
    out = np.full((m, lm.shape[1]), MISSING)
    found = total > 0
    out[found] = sums[found] / total[found, None]
    return out


def _result(boxes: np.ndarray, scores: np.ndarray, landmarks, support: np.ndarray) -> Fused:
    order = np.argsort(-scores, kind="stable")
    cols = [boxes, scores[:, None]] + ([landmarks] if landmarks is not None else [])
    return Fused(np.concatenate(cols, 1)[order], support[order])


def _empty(pool: _Pool) -> Fused:
    width = 5 + (pool.landmarks.shape[1] if pool.landmarks is not None else 0)
    return Fused(np.zeros((0, width)), np.zeros(0, np.int64))


def weighted_box_fusion(dets: Sequence, weights=None, iou_thr: float = 0.55,
                        skip_thr: float = 0.0, landmarks: Sequence | None = None) -> Fused:
    """Weighted box fusion of the teachers' detections of one image (see the module doc).

    ``dets``: list over teachers of ``[n_t, 5]`` (or ``[n_t, 5 + 2L]``) pixel arrays;
    ``weights``: one per teacher (default 1); boxes scoring below ``skip_thr`` are left out;
    ``landmarks``: optional list of ``[n_t, 2L]`` arrays (None entries for teachers without).
    """
    w = _teacher_weights(len(dets), weights)
    pool = _pool(dets, landmarks, w, skip_thr)
    n = len(pool.boxes)
    if n == 0:
        return _empty(pool)
    fused = np.empty((n, 4))            # current fused box of each cluster
    corner_sum = np.empty((n, 4))       # sum of c * corners
    score_sum = np.empty(n)             # sum of c
    cluster = np.empty(n, np.int64)
    m = 0
    for i in np.argsort(-pool.scores, kind="stable"):
        box, c = pool.boxes[i], pool.scores[i]
        j = -1
        if m:
            iou = _iou_one(box, fused[:m])
            j = int(np.argmax(iou))
            j = j if iou[j] > iou_thr else -1
        if j < 0:
            j, m = m, m + 1
            corner_sum[j], score_sum[j] = 0.0, 0.0
        corner_sum[j] += c * box
        score_sum[j] += c
        fused[j] = corner_sum[j] / score_sum[j]
        cluster[i] = j
    support, teacher_sum = _per_teacher(cluster, pool.teacher, pool.scores, m)
    scores = teacher_sum / w.sum()
    lms = _weighted_landmarks(pool, cluster, m) if pool.landmarks is not None else None
    return _result(fused[:m], scores, lms, support)


def cross_teacher_nms(dets: Sequence, weights=None, iou_thr: float = 0.55,
                      skip_thr: float = 0.0, landmarks: Sequence | None = None) -> Fused:
    """Score-aware NMS across teachers (see the module doc); same arguments as
    :func:`weighted_box_fusion`. A kept box without landmarks takes those of its best-ranked
    cluster member that has them."""
    w = _teacher_weights(len(dets), weights)
    pool = _pool(dets, landmarks, w, skip_thr)
    n = len(pool.boxes)
    if n == 0:
        return _empty(pool)
    scores = pool.scores / w.max()
    order = np.argsort(-scores, kind="stable")
    boxes = torch.from_numpy(pool.boxes[order])
    rank = torch.arange(n, 0, -1, dtype=torch.float64)          # NMS in exactly this order
    kept = np.sort(nms(boxes, rank, iou_thr).numpy())            # positions, in rank order
    # each suppressed box's cluster: the first kept box before it that overlaps it > iou_thr
    by_pos = np.empty(n, np.int64)
    by_pos[kept] = np.arange(len(kept))
    gone = np.setdiff1d(np.arange(n), kept)
    if len(gone):
        hit = (box_iou(boxes[kept], boxes[gone]) > iou_thr).numpy()     # [k, s]
        hit &= kept[:, None] < gone[None, :]
        by_pos[gone] = hit.argmax(0)
    cluster = np.empty(n, np.int64)
    cluster[order] = by_pos
    support, _ = _per_teacher(cluster, pool.teacher, pool.scores, len(kept))
    lms = None
    if pool.landmarks is not None:
        # landmarks of the best-ranked member with landmarks (the kept box itself if it has)
        pos = np.empty(n, np.int64)
        pos[order] = np.arange(n)
        best = np.full(len(kept), n)
        np.minimum.at(best, cluster[pool.has_lm], pos[pool.has_lm])
        lms = np.full((len(kept), pool.landmarks.shape[1]), MISSING)
        found = best < n
        lms[found] = pool.landmarks[order][best[found]]
    return _result(pool.boxes[order][kept], scores[order][kept], lms, support)


FUSION = {"wbf": weighted_box_fusion, "nms": cross_teacher_nms}


def filter_by_agreement(fused: Fused, min_agree: int) -> Fused:
    """The fused boxes supported by at least ``min_agree`` teachers."""
    keep = fused.support >= min_agree
    return Fused(fused.dets[keep], fused.support[keep])


def fuse_teachers(dets: Sequence, method: str = "wbf", weights=None, iou_thr: float = 0.55,
                  skip_thr: float = 0.0, score_thr: float = 0.0, min_agree: int = 1,
                  landmarks: Sequence | None = None) -> Fused:
    """``method`` (``wbf`` | ``nms``) fusion, then the agreement filter, then fused boxes scoring
    below ``score_thr`` dropped."""
    if method not in FUSION:
        raise ValueError(f"fusion method {method!r} is not one of {sorted(FUSION)}")
    fused = filter_by_agreement(FUSION[method](dets, weights, iou_thr, skip_thr, landmarks),
                                min_agree)
    keep = fused.dets[:, 4] >= score_thr
    return Fused(fused.dets[keep], fused.support[keep])
