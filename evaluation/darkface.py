"""DARK FACE (UG2+ track 2) evaluation, as the official Octave tool computes it.

Reproduces ``Ir1d/DARKFACE_eval_tools`` (as run under GNU Octave; docs/EVALUATION.md) in numpy:

* GT: ``<id>.txt``, line 1 the face count N, then N lines ``x1 y1 x2 y2`` (corner format),
  read as double. Predictions: ``<id>.txt``, one ``x1 y1 x2 y2 score`` per line, no header.
  (Early versions of the tool's ``evaluation.m`` added x1/y1 to x2/y2 as if the boxes were
  x y w h; the version with the ``max == min`` normalisation branch, the one reproduced here,
  reads both files as corners.)
* Scores are min-max normalised over every prediction file, in single precision, with the
  ``max == min`` branch ``s - (min - 1)``.
* Each prediction, in descending score order, takes the GT of maximum IoU (+1 pixel
  convention; the first on ties). IoU >= 0.5 recalls that GT. There is no one-to-one
  assignment: every prediction is a proposal, a GT is recalled once, duplicates only add
  proposals.
* Images with no GT or no predictions are skipped; their faces still count in the recall
  denominator. A missing prediction file means no predictions.
* 1000 thresholds, precision/recall summed over images, AP = VOCap.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
from tqdm import tqdm

from evaluation.common import (first_occurrence, no_prediction_files, normalize_scores,
                               parse_count, parse_rows, pr_curve, read_lines, score_range,
                               sort_by_score, threshold_counts, voc_ap)

IOU_THRESHOLD = 0.5


def _natural_key(name: str):
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def read_id_list(path: str | Path) -> list[str]:
    """Image ids, one per line (``5701`` or ``5701.png``); blank lines are skipped."""
    ids = []
    for line in read_lines(path):
        line = line.strip()
        if line:
            ids.append(os.path.splitext(line)[0])
    return ids


def read_darkface_gt_file(path: str | Path) -> np.ndarray:
    """(N, 4) float64 corner boxes of one GT file (count line, then N box lines)."""
    lines = read_lines(path)
    if not lines or not lines[0].strip():
        raise ValueError(f"{path}:1: expected the face count on the first line")
    count = parse_count(lines[0], path, 1)
    if len(lines) - 1 < count:
        raise ValueError(f"{path}:{len(lines) + 1}: the file announces {count} faces but has "
                         f"only {len(lines) - 1} box lines")
    return parse_rows(lines[1:1 + count], path, 2, 4)


def load_darkface_gt(gt_dir: str | Path, ids: Iterable[str] | None = None
                     ) -> dict[str, np.ndarray]:
    """Every ``<id>.txt`` of ``gt_dir`` (or only ``ids``) as id -> (N, 4) float64 corner boxes."""
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise FileNotFoundError(f"DARK FACE GT folder not found: {gt_dir}")
    if ids is None:
        ids = [p.stem for p in gt_dir.glob("*.txt")]
    gt = {}
    for image_id in sorted(ids, key=_natural_key):
        path = gt_dir / f"{image_id}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"no GT file for image id {image_id!r}: {path}")
        gt[image_id] = read_darkface_gt_file(path)
    if not gt:
        raise ValueError(f"no GT files (*.txt) in {gt_dir}")
    return gt


def read_darkface_pred_file(path: str | Path) -> np.ndarray:
    """(n, 5) float64 ``x1 y1 x2 y2 score`` rows of one prediction file, sorted by score.

    Every non-blank line is one box (blank lines, e.g. a trailing one, are skipped).
    """
    lines = read_lines(path)
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    if not numbered:
        return np.zeros((0, 5), dtype=np.float64)
    if numbered[-1][0] == len(numbered):  # no blank line before the last box: one fast parse
        rows = parse_rows([line for _, line in numbered], path, 1, 5)
    else:
        rows = np.concatenate([parse_rows([line], path, n, 5) for n, line in numbered])
    return sort_by_score(rows)


def load_darkface_preds(pred_dir: str | Path, ids: Iterable[str], progress: bool = False,
                        allow_missing: bool = False) -> dict[str, np.ndarray]:
    """Prediction rows for each id; a missing file gives an empty array (one warning in all).
    When no id has a file at all (a wrong layout) FileNotFoundError, unless ``allow_missing``."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"DARK FACE prediction folder not found: {pred_dir}")
    preds, missing = {}, 0
    ids = list(ids)
    for image_id in tqdm(ids, desc="read predictions", disable=not progress):
        path = pred_dir / f"{image_id}.txt"
        if path.is_file():
            preds[image_id] = read_darkface_pred_file(path)
        else:
            preds[image_id] = np.zeros((0, 5), dtype=np.float64)
            missing += 1
    if missing == len(ids):
        no_prediction_files(pred_dir, len(ids), "<pred>/<image id>.txt (test.py --format "
                            "darkface)", pred_dir / f"{ids[0]}.txt" if ids else pred_dir,
                            allow_missing)
    if missing:
        warnings.warn(f"{missing} of {len(ids)} images have no prediction file in {pred_dir}; "
                      "they count as images with no predictions", stacklevel=2)
    return preds


def match_max_iou(pred: np.ndarray, gt: np.ndarray, iou_threshold: float = IOU_THRESHOLD
                  ) -> np.ndarray:
    """For each prediction, the index of its max-IoU GT if that IoU >= ``iou_threshold`` (the
    official 0.5 by default), else -1.

    pred: (P, >=4) corners, gt: (G, 4) corners, both double. The arithmetic follows
    ``boxoverlap.m`` operation by operation so the doubles agree bit for bit:
    w = (min x2 - max x1) + 1, inter = w*h, o = inter / ((aarea + barea) - inter), and o = 0
    where w <= 0 or h <= 0. ``argmax`` takes the first GT on ties, like MATLAB's ``max``.
    """
    p = pred[:, None, :4]                                   # (P, 1, 4)
    g = gt[None, :, :]                                      # (1, G, 4)
    w = (np.minimum(g[..., 2], p[..., 2]) - np.maximum(g[..., 0], p[..., 0])) + 1  # (P, G)
    h = (np.minimum(g[..., 3], p[..., 3]) - np.maximum(g[..., 1], p[..., 1])) + 1
    inter = w * h
    g_area = ((gt[:, 2] - gt[:, 0]) + 1) * ((gt[:, 3] - gt[:, 1]) + 1)      # (G,)
    p_area = ((pred[:, 2] - pred[:, 0]) + 1) * ((pred[:, 3] - pred[:, 1]) + 1)  # (P,)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / ((g_area[None, :] + p_area[:, None]) - inter)
    iou[(w <= 0) | (h <= 0)] = 0.0
    best = np.argmax(iou, axis=1)
    best_iou = iou[np.arange(len(pred)), best]
    return np.where(best_iou >= iou_threshold, best, -1)


def evaluate_darkface_boxes(gt: Mapping[str, np.ndarray], preds: Mapping[str, np.ndarray],
                            progress: bool = False, iou_threshold: float = IOU_THRESHOLD) -> dict:
    """Evaluate in-memory boxes: ``gt`` id -> (N, 4) corners, ``preds`` id -> (n, 5) rows.

    Only the ids of ``gt`` are evaluated; an id absent from ``preds`` has no predictions.
    Prediction rows may be in any order (they are sorted here, stably, by score).
    ``iou_threshold``: the official 0.5 unless a benchmark with tighter boxes than the
    detector's says otherwise (bench/night_benchmark.py: dlib's tight face squares).
    Returns ``dict(ap=float, precision=(1000,), recall=(1000,))``.
    """
    ids = list(gt)
    rows = {i: sort_by_score(np.asarray(preds[i], dtype=np.float64).reshape(-1, 5))
            for i in ids if i in preds and len(preds[i])}
    hi, lo = score_range(r[:, 4] for r in rows.values())

    num_faces, gt_offset = 0, 0
    scores, gt_ids = [], []
    for image_id in tqdm(ids, desc="match", disable=not progress):
        boxes = np.asarray(gt[image_id], dtype=np.float64).reshape(-1, 4)
        num_faces += len(boxes)
        pred = rows.get(image_id)
        if len(boxes) and pred is not None:
            matched = match_max_iou(pred, boxes, iou_threshold)
            scores.append(normalize_scores(pred[:, 4], hi, lo, equal_range_branch=True))
            gt_ids.append(np.where(matched >= 0, matched + gt_offset, -1))
        gt_offset += len(boxes)

    scores = np.concatenate(scores) if scores else np.zeros(0)
    gt_ids = np.concatenate(gt_ids) if gt_ids else np.zeros(0, dtype=np.int64)
    proposals = threshold_counts(scores, np.ones(len(scores), dtype=bool))
    recalled = threshold_counts(scores, first_occurrence(gt_ids))
    precision, recall = pr_curve(proposals, recalled, num_faces)
    return dict(ap=voc_ap(recall, precision), precision=precision, recall=recall)


def evaluate_darkface(gt_dir: str | Path, pred_dir: str | Path,
                      ids: Iterable[str] | None = None, progress: bool = False,
                      allow_missing: bool = False) -> dict:
    """Evaluate the prediction folder ``pred_dir`` against the GT folder ``gt_dir``.

    ``ids`` restricts the evaluation (and the score normalisation) to those images, e.g. the
    500-image held-out split; by default every ``*.txt`` of ``gt_dir`` is used. A folder in
    which no GT image has its prediction file raises FileNotFoundError (``allow_missing``: score
    it as no detections).
    Returns ``dict(ap=float, precision=(1000,), recall=(1000,))``.
    """
    gt = load_darkface_gt(gt_dir, ids)
    preds = load_darkface_preds(pred_dir, gt.keys(), progress=progress,
                                allow_missing=allow_missing)
    return evaluate_darkface_boxes(gt, preds, progress=progress)
