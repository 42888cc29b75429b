"""WIDER FACE validation evaluation, as the official MATLAB ``eval_tools`` compute it.

Reproduces ``wider_eval.m`` / ``read_pred.m`` / ``norm_score.m`` / ``evaluation.m`` /
``boxoverlap.m`` / ``VOCap.m`` (as run under GNU Octave; docs/EVALUATION.md) in numpy:

* GT: ``wider_face_val.mat`` (``event_list``, ``file_list``, ``face_bbx_list``: int32 x y w h)
  and ``wider_{easy,medium,hard}_val.mat`` (``gt_list``: per image the 1-based indices of the
  faces that count in that setting; the other faces are ignored).
* Predictions: ``<pred_dir>/<event>/<image name>.txt``: line 1 the image name (ignored),
  line 2 the count, then ``count`` lines ``x y w h score``. A missing or empty file, or a count
  of 0, means no predictions.
* Scores are min-max normalised over all files in single precision (no ``max == min`` branch:
  equal scores become NaN and clear no threshold).
* Matching follows ``boxoverlap.m`` in int32 arithmetic (GT boxes are int32), see
  :func:`wider_overlap`: each prediction takes the first GT, in annotation order, of largest
  rounded overlap; a rounded overlap >= 0.5 (in practice == 1) is a match. A match with an
  ignored face drops the prediction (neither proposal nor false positive); a match with a kept
  face recalls it once; duplicates are false positives.
* Images with no GT or no predictions are skipped; their kept faces still count in recall.
* 1000 thresholds, sums over images, AP = VOCap.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io as sio
from tqdm import tqdm

from evaluation.common import (first_occurrence, no_prediction_files, normalize_scores,
                               parse_count, parse_rows, pr_curve, read_lines, score_range,
                               sort_by_score, threshold_counts, voc_ap)

SETTINGS = ("easy", "medium", "hard")
INT32_MIN, INT32_MAX = -2 ** 31, 2 ** 31 - 1


@dataclass
class WiderGT:
    """The WIDER FACE val ground truth, one entry per image in event order."""
    events: list[str]                 # event folder of each image, e.g. "0--Parade"
    names: list[str]                  # image name without extension
    boxes: list[np.ndarray]           # (n, 4) int32 x y w h, annotation order
    keep: dict[str, list[np.ndarray]]  # setting -> per image, 0-based kept face indices

    def __len__(self) -> int:
        return len(self.names)


# ---------------------------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------------------------
def _cell_strings(cell: np.ndarray) -> list[str]:
    return [str(np.asarray(c).ravel()[0]) for c in np.asarray(cell).ravel()]


def _event_lists(mat: dict) -> tuple[list[str], list[str], list[np.ndarray]]:
    """Per image (event, name, int32 boxes) from a loaded ``wider_*_val.mat``."""
    events, names, boxes = [], [], []
    event_names = _cell_strings(mat["event_list"])
    for event, files, bbxs in zip(event_names, mat["file_list"].ravel(),
                                  mat["face_bbx_list"].ravel()):
        for name, bbx in zip(_cell_strings(files), np.asarray(bbxs).ravel()):
            bbx = np.asarray(bbx)
            if bbx.dtype != np.int32:
                # The official file is int32 and boxoverlap.m's arithmetic depends on it.
                if bbx.size and not np.array_equal(bbx, np.round(bbx)):
                    raise ValueError(f"non-integer GT box in {event}/{name}")
                bbx = bbx.astype(np.int32)
            events.append(event)
            names.append(name)
            boxes.append(bbx.reshape(-1, 4))
    return events, names, boxes


def load_widerface_gt(gt_dir: str | Path) -> WiderGT:
    """Load ``wider_face_val.mat`` and the three ``wider_<setting>_val.mat`` keep lists."""
    gt_dir = Path(gt_dir)
    path = gt_dir / "wider_face_val.mat"
    if not path.is_file():
        raise FileNotFoundError(f"WIDER FACE GT file not found: {path}")
    events, names, boxes = _event_lists(sio.loadmat(path))
    keep = {}
    for setting in SETTINGS:
        setting_path = gt_dir / f"wider_{setting}_val.mat"
        if not setting_path.is_file():
            raise FileNotFoundError(f"WIDER FACE GT file not found: {setting_path}")
        mat = sio.loadmat(setting_path)
        # evaluation.m takes files and boxes from the setting file itself; we take them from
        # wider_face_val.mat (as read_pred.m does) and insist that the two agree.
        s_events, s_names, s_boxes = _event_lists(mat)
        if (s_events, s_names) != (events, names) or not all(
                np.array_equal(a, b) for a, b in zip(s_boxes, boxes)):
            raise ValueError(f"{setting_path} lists other images or boxes than {path}")
        indices = [np.asarray(k).ravel().astype(np.int64) - 1
                   for cell in mat["gt_list"].ravel() for k in np.asarray(cell).ravel()]
        for i, idx in enumerate(indices):
            if idx.size and (idx.min() < 0 or idx.max() >= len(boxes[i])):
                raise ValueError(f"{setting_path}: keep index out of range for "
                                 f"{events[i]}/{names[i]}")
        keep[setting] = indices
    return WiderGT(events, names, boxes, keep)


# ---------------------------------------------------------------------------------------------
# Predictions
# ---------------------------------------------------------------------------------------------
def read_widerface_pred_file(path: str | Path) -> np.ndarray:
    """(n, 5) float64 ``x y w h score`` rows of one prediction file, sorted by score.

    Line 1 (image name) is ignored, line 2 is the count, the next ``count`` lines are boxes and
    anything after them is ignored, as in ``read_pred.m``. An empty file has no boxes.
    """
    lines = read_lines(path)
    if not any(line.strip() for line in lines):
        return np.zeros((0, 5), dtype=np.float64)
    if len(lines) < 2:
        raise ValueError(f"{path}:2: expected the box count on line 2")
    count = parse_count(lines[1], path, 2)
    if len(lines) - 2 < count:
        raise ValueError(f"{path}:{len(lines) + 1}: the file announces {count} boxes but has "
                         f"only {len(lines) - 2} box lines")
    return sort_by_score(parse_rows(lines[2:2 + count], path, 3, 5))


def load_widerface_preds(pred_dir: str | Path, gt: WiderGT, progress: bool = False,
                         allow_missing: bool = False) -> list[np.ndarray]:
    """Prediction rows of every GT image; a missing file gives an empty array (one warning).
    When no image has a file at all (a wrong layout) FileNotFoundError, unless
    ``allow_missing``."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"WIDER FACE prediction folder not found: {pred_dir}")
    preds, missing = [], 0
    for event, name in tqdm(list(zip(gt.events, gt.names)), desc="read predictions",
                            disable=not progress):
        path = pred_dir / event / f"{name}.txt"
        if path.is_file():
            preds.append(read_widerface_pred_file(path))
        else:
            preds.append(np.zeros((0, 5), dtype=np.float64))
            missing += 1
    if missing == len(gt):
        example = pred_dir / gt.events[0] / f"{gt.names[0]}.txt" if len(gt) else pred_dir
        no_prediction_files(pred_dir, len(gt), "<pred>/<event>/<image name>.txt (test.py "
                            "--format wider)", example, allow_missing)
    if missing:
        warnings.warn(f"{missing} of {len(gt)} images have no prediction file in {pred_dir}; "
                      "they count as images with no predictions", stacklevel=2)
    return preds


# ---------------------------------------------------------------------------------------------
# boxoverlap.m in int32
# ---------------------------------------------------------------------------------------------
def _saturate(x: np.ndarray) -> np.ndarray:
    return np.clip(x, INT32_MIN, INT32_MAX)


def to_int32(x: np.ndarray) -> np.ndarray:
    """MATLAB's double -> int32 conversion: round half away from zero, then saturate.

    Returned as int64 holding int32 values (so that the following products cannot wrap).
    ``x - trunc(x)`` is exact in floating point, so the half-way test is exact too (unlike
    ``floor(|x| + 0.5)``, which rounds 0.49999999999999994 up). NaN maps to 0.
    """
    x = np.asarray(x, dtype=np.float64)
    whole = np.trunc(x)
    with np.errstate(invalid="ignore"):
        rounded = whole + np.copysign(np.abs(x - whole) >= 0.5, x)
    rounded = np.nan_to_num(rounded, nan=0.0, posinf=INT32_MAX, neginf=INT32_MIN)
    return _saturate(rounded).astype(np.int64)


def wider_overlap(gt_xyxy: np.ndarray, pred_xyxy: np.ndarray) -> np.ndarray:
    """(P, G) rounded overlaps of ``boxoverlap(gt_bbx, pred_info(h,1:4))`` for every prediction.

    gt_xyxy: (G, 4) int64 holding the int32 corners (x1, y1, x1 + w, y1 + h) of the GT.
    pred_xyxy: (P, 4) float64 corners (x, y, x + w, y + h) of the predictions.

    How MATLAB evaluates boxoverlap.m when ``a`` (GT) is int32 and ``b`` (prediction) double.
    Any int32-with-double operation is done in double and the result converted to int32
    (round half away from zero, saturating at the int32 limits); int32-with-int32 likewise
    yields the saturated, rounded exact result.
      x1 = max(a(:,1), b(1))  -> int32: max(a1, round(b1)) (rounding is monotone, so rounding
                                  b before or after the comparison gives the same value)
      y1, x2 = min(a(:,3), b(3)), y2 likewise
      w = x2-x1+1             -> int32, exact (saturating)
      h = y2-y1+1             -> int32
      inter = w.*h            -> int32 (saturating)
      aarea = (a3-a1+1).*(a4-a2+1) -> int32, exact
      barea = (b3-b1+1)*(b4-b2+1)  -> DOUBLE, from the unrounded prediction corners
      aarea+barea-inter       -> (aarea+barea) is int32 + double = round(aarea + barea), then
                                  minus inter in int32
      o = inter ./ union      -> int32 ./ int32 = round(inter/union): 0 or 1 for ordinary boxes
                                  (x/0 saturates to intmax/intmin, 0/0 is 0)
      o(w <= 0) = 0; o(h <= 0) = 0
    So the IoU test ``max_overlap >= 0.5`` becomes ``round(inter/union) >= 1``, i.e. the int32
    IoU >= 0.5, and ``max`` returns the FIRST GT reaching the largest rounded value (1), not the
    GT of largest true IoU.
    """
    p = to_int32(pred_xyxy)                                              # (P, 4)
    g = gt_xyxy.astype(np.int64)                                         # (G, 4)
    x1 = np.maximum(g[None, :, 0], p[:, None, 0])                        # (P, G)
    y1 = np.maximum(g[None, :, 1], p[:, None, 1])
    x2 = np.minimum(g[None, :, 2], p[:, None, 2])
    y2 = np.minimum(g[None, :, 3], p[:, None, 3])
    w = _saturate(_saturate(x2 - x1) + 1)
    h = _saturate(_saturate(y2 - y1) + 1)
    inter = _saturate(w * h)
    g_area = _saturate(_saturate(_saturate(g[:, 2] - g[:, 0]) + 1)
                       * _saturate(_saturate(g[:, 3] - g[:, 1]) + 1))   # (G,)
    p_area = (((pred_xyxy[:, 2] - pred_xyxy[:, 0]) + 1)
              * ((pred_xyxy[:, 3] - pred_xyxy[:, 1]) + 1))               # (P,) double
    union = _saturate(to_int32(g_area[None, :] + p_area[:, None]) - inter)
    with np.errstate(invalid="ignore", divide="ignore"):
        overlap = to_int32(inter / union)                                # 0/0 -> NaN -> 0
    overlap[(w <= 0) | (h <= 0)] = 0
    return overlap


def match_first_rounded(pred: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """For each prediction (x y w h score rows), the matched GT index (int32 quirk) or -1."""
    g = gt_boxes.astype(np.int64)
    gt_xyxy = np.concatenate([g[:, :2], _saturate(g[:, :2] + g[:, 2:4])], axis=1)
    pred_xyxy = np.concatenate([pred[:, :2], pred[:, :2] + pred[:, 2:4]], axis=1)
    overlap = wider_overlap(gt_xyxy, pred_xyxy)
    best = np.argmax(overlap, axis=1)                  # first GT of the largest value, as max()
    matched = overlap[np.arange(len(pred)), best] >= 0.5
    return np.where(matched, best, -1)


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------
def evaluate_widerface_boxes(gt: WiderGT, preds: list[np.ndarray], progress: bool = False
                             ) -> dict:
    """Evaluate in-memory predictions (one (n, 5) ``x y w h score`` array per GT image, any order).

    Matching does not depend on the setting, so it runs once; each setting then only changes
    which matches are kept faces. Returns ``dict(easy=, medium=, hard=, curves=)`` where
    ``curves[setting] = dict(precision=(1000,), recall=(1000,))``.
    """
    if len(preds) != len(gt):
        raise ValueError(f"{len(preds)} prediction arrays for {len(gt)} GT images")
    rows = [sort_by_score(np.asarray(p, dtype=np.float64).reshape(-1, 5)) for p in preds]
    hi, lo = score_range(r[:, 4] for r in rows)

    gt_offsets = np.concatenate(([0], np.cumsum([len(b) for b in gt.boxes])))
    scores, gt_ids = [], []
    for i in tqdm(range(len(gt)), desc="match", disable=not progress):
        if len(gt.boxes[i]) == 0 or len(rows[i]) == 0:
            continue
        matched = match_first_rounded(rows[i], gt.boxes[i])
        scores.append(normalize_scores(rows[i][:, 4], hi, lo, equal_range_branch=False))
        gt_ids.append(np.where(matched >= 0, matched + gt_offsets[i], -1))
    scores = np.concatenate(scores) if scores else np.zeros(0)
    gt_ids = np.concatenate(gt_ids) if gt_ids else np.zeros(0, dtype=np.int64)

    result, curves = {}, {}
    for setting in SETTINGS:
        kept_face = np.zeros(gt_offsets[-1], dtype=bool)
        for i, idx in enumerate(gt.keep[setting]):
            kept_face[gt_offsets[i] + idx] = True
        num_faces = sum(len(idx) for idx in gt.keep[setting])
        hit = gt_ids >= 0
        hit_kept = hit & kept_face[np.where(hit, gt_ids, 0)]
        proposal = ~(hit & ~hit_kept)                 # matches with an ignored face are dropped
        first_recall = first_occurrence(np.where(hit_kept, gt_ids, -1))
        precision, recall = pr_curve(threshold_counts(scores, proposal),
                                     threshold_counts(scores, first_recall), num_faces)
        result[setting] = voc_ap(recall, precision)
        curves[setting] = dict(precision=precision, recall=recall)
    result["curves"] = curves
    return result


def evaluate_widerface(gt_dir: str | Path, pred_dir: str | Path, progress: bool = False,
                       allow_missing: bool = False) -> dict:
    """Evaluate ``pred_dir/<event>/<name>.txt`` against the official .mat files in ``gt_dir``.
    A folder in which no GT image has its prediction file raises FileNotFoundError
    (``allow_missing``: score it as no detections).

    Returns ``dict(easy=AP, medium=AP, hard=AP, curves={setting: dict(precision, recall)})``.
    """
    gt = load_widerface_gt(gt_dir)
    preds = load_widerface_preds(pred_dir, gt, progress=progress, allow_missing=allow_missing)
    return evaluate_widerface_boxes(gt, preds, progress=progress)
