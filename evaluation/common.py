"""Pieces shared by the DARK FACE and WIDER FACE evaluators.

Both official tools (MATLAB/Octave; docs/EVALUATION.md, "The protocol reproduced") share one
skeleton:

1. read every prediction file and sort each image's boxes by score, descending (``read_pred.m``);
2. min-max normalise all scores over the whole submission, in single precision (``norm_score.m``);
3. match each image's predictions to its GT, in score order (``evaluation.m``);
4. count proposals and recalled faces at 1000 thresholds ``t = 1 - k/1000`` and sum over images;
5. precision = recalled / proposals, recall = recalled / faces, AP = ``VOCap`` (all-point VOC).

This module holds steps 2, 4 and 5, the str2num-like row parser of step 1, and the CSV / plot
writers. The dataset-specific matching (step 3) lives in ``darkface.py`` and ``widerface.py``.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import numpy as np

NUM_THRESHOLDS = 1000
# t_k = 1 - k/1000 for k = 1..1000, in double, exactly as the tools' ``thresh = 1-t/thresh_num``.
THRESHOLDS = 1.0 - np.arange(1, NUM_THRESHOLDS + 1, dtype=np.float64) / NUM_THRESHOLDS

# norm_score.m starts its running max/min at realmin('single') / realmax('single'), so the
# normalisation runs in single precision.
REALMIN_SINGLE = np.float32(np.finfo(np.float32).tiny)
REALMAX_SINGLE = np.float32(np.finfo(np.float32).max)


class PRCurve(NamedTuple):
    """One precision-recall curve, as a label and two equally long arrays."""
    label: str
    precision: np.ndarray
    recall: np.ndarray


# ---------------------------------------------------------------------------------------------
# AP
# ---------------------------------------------------------------------------------------------
def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point interpolated AP exactly as the official ``VOCap.m``.

    ``mrec = [0; rec; 1]``, ``mpre = [0; prec; 0]``; the precision envelope is taken from the
    right with MATLAB's ``max``, which ignores NaN (hence ``np.fmax``: NaN precision at
    thresholds with no proposal does not poison the envelope); then Δrecall·precision is summed
    over the points where recall changes.
    """
    mrec = np.concatenate(([0.0], np.asarray(recall, dtype=np.float64), [1.0]))
    mpre = np.concatenate(([0.0], np.asarray(precision, dtype=np.float64), [0.0]))
    mpre = np.fmax.accumulate(mpre[::-1])[::-1]
    changed = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[changed] - mrec[changed - 1]) * mpre[changed]))


# ---------------------------------------------------------------------------------------------
# Score normalisation
# ---------------------------------------------------------------------------------------------
def score_range(score_arrays: Iterable[np.ndarray]) -> tuple[np.float32, np.float32]:
    """Global (max, min) of all scores as ``norm_score.m`` finds them: single precision.

    The running max/min start at realmin/realmax of single, and ``max(single, double)`` is
    single, so the result is the float32 rounding of the extreme score, clamped by the start
    values (all-negative scores leave max at realmin, a tiny positive number).
    """
    hi, lo = REALMIN_SINGLE, REALMAX_SINGLE
    for scores in score_arrays:
        if scores.size:
            # fmax/fmin: MATLAB's max/min skip NaN (our readers reject NaN anyway).
            hi = np.fmax(hi, np.float32(np.fmax.reduce(scores)))
            lo = np.fmin(lo, np.float32(np.fmin.reduce(scores)))
    return np.float32(hi), np.float32(lo)


def normalize_scores(scores: np.ndarray, hi: np.float32, lo: np.float32,
                     equal_range_branch: bool) -> np.ndarray:
    """Min-max normalise ``scores`` (double) in single precision, returned as double.

    MATLAB/Octave evaluate ``(score_list - min_score) / (max_score - min_score)`` in single
    because min/max are single: ``float32(s) - min`` and the division are float32 operations;
    the result is stored back into a double matrix. ``equal_range_branch`` is the
    DARK FACE tool's ``max == min`` case, ``s - (min - 1)``; the WIDER tool has no such branch,
    so equal scores there become 0/0 = NaN and never clear a threshold.
    """
    s32 = np.asarray(scores, dtype=np.float64).astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if equal_range_branch and hi == lo:
            out = s32 - (lo - np.float32(1.0))
        else:
            out = (s32 - lo) / (hi - lo)
    return out.astype(np.float64)


# ---------------------------------------------------------------------------------------------
# Threshold accumulation
# ---------------------------------------------------------------------------------------------
def threshold_counts(scores: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """For each threshold t_k, the number of flagged predictions with score >= t_k.

    This is what the official per-image loop sums over images. There, for image i, r = the last
    index (in descending score order) with score >= t, and the image adds ``sum(flag[:r+1])``
    proposals and ``pred_recall[r]`` = cumulative first-recalls up to r. With scores sorted
    descending, the first r+1 predictions are exactly those with score >= t, so the image adds
    the flagged predictions with score >= t, and the sum over images is a sum over all
    predictions of the evaluated images: one searchsorted + bincount + cumsum, no loop.
    Sorting order of ties does not matter: tied predictions clear the same
    thresholds.

    scores: (P,) normalised scores of every prediction of the evaluated images.
    flags:  (P,) bool, which predictions count (a proposal, or a first recall of a GT face).
    Returns (1000,) int64 counts, index k-1 for t_k.
    """
    scores = np.asarray(scores, dtype=np.float64)[np.asarray(flags, dtype=bool)]
    # Number of thresholds each score clears; THRESHOLDS[::-1] is ascending (0, 0.001, ...).
    # NaN (WIDER's 0/0 when all scores are equal) is >= no threshold, but searchsorted would
    # place it after every one.
    cleared = np.where(np.isnan(scores), 0,
                       np.searchsorted(THRESHOLDS[::-1], scores, side="right"))
    # A score clearing m thresholds counts for k = 1001-m .. 1000, i.e. 0-based index 1000-m on.
    first_index = NUM_THRESHOLDS - cleared
    per_first = np.bincount(first_index, minlength=NUM_THRESHOLDS + 1)
    return np.cumsum(per_first[:NUM_THRESHOLDS])


def pr_curve(proposals: np.ndarray, recalled: np.ndarray, num_faces: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """``dataset_pr_info``: precision = recalled/proposals (NaN if 0/0), recall = recalled/faces."""
    proposals = np.asarray(proposals, dtype=np.float64)
    recalled = np.asarray(recalled, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = recalled / proposals
        recall = recalled / np.float64(num_faces)
    return precision, recall


def first_occurrence(ids: np.ndarray) -> np.ndarray:
    """(P,) bool: True at the first position of each value of ``ids`` (values < 0 never count).

    With predictions concatenated image by image in descending score order and GT faces given
    dataset-wide ids, this marks the prediction that recalls each face first, which is where
    the official ``pred_recall`` (the running count of recalled faces) steps up by one.
    """
    ids = np.asarray(ids)
    out = np.zeros(ids.shape, dtype=bool)
    valid = np.flatnonzero(ids >= 0)
    if valid.size:
        _, first = np.unique(ids[valid], return_index=True)
        out[valid[first]] = True
    return out


def sort_by_score(boxes: np.ndarray) -> np.ndarray:
    """Rows of an (n, 5) array sorted by column 4 descending, ties kept in file order.

    ``sort(..., 'descend')`` in MATLAB/Octave is stable, and so is this.
    """
    order = np.argsort(-boxes[:, 4], kind="stable")
    return boxes[order]


# ---------------------------------------------------------------------------------------------
# Reading text files
# ---------------------------------------------------------------------------------------------
_BOM = b"\xef\xbb\xbf"


def read_lines(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file (``str.splitlines``). A leading UTF-8 BOM is dropped;
    bytes that are not UTF-8 raise ValueError naming ``file:line``."""
    data = Path(path).read_bytes()
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        line = len(data[:exc.start].decode("utf-8").splitlines()) or 1
        if data[:exc.start].endswith((b"\n", b"\r")):
            line += 1
        raise ValueError(f"{path}:{line}: byte 0x{data[exc.start]:02x} is not UTF-8 (save the "
                         f"file as UTF-8)") from None


def no_prediction_files(pred_dir: Path, total: int, layout: str, example: Path,
                        allow_missing: bool) -> None:
    """Raise when none of the ``total`` images has its prediction file (a wrong folder layout,
    not a detector that found nothing: test.py writes a file per image, empty or not), unless
    ``allow_missing``."""
    if allow_missing or total == 0:
        return
    found = sum(1 for _ in zip(range(1000), pred_dir.rglob("*.txt")))
    raise FileNotFoundError(
        f"none of the {total} images has a prediction file in {pred_dir}: expected the layout "
        f"{layout}, e.g. {example} ({found if found < 1000 else '1000+'} .txt files found "
        f"there in other places). Fix the folder, or pass --allow-missing to score missing "
        f"files as images without detections")

def parse_rows(lines: Sequence[str], path: str | Path, first_line: int, num_cols: int
               ) -> np.ndarray:
    """Parse ``lines`` the way the tools' ``str2num`` does, into an (n, num_cols) float64 array.

    Numbers may be separated by any whitespace or commas; a line must hold at least
    ``num_cols`` numbers and only the first ``num_cols`` are used (the tools read
    ``raw_info(1..num_cols)``). NaN and Inf are refused, because MATLAB's max/min/sort treat
    them in ways no detector output should depend on. A bad line raises ValueError naming the
    file and its 1-based line number (``first_line`` is the number of ``lines[0]``).
    """
    tokens = [line.replace(",", " ").split() for line in lines]
    if not tokens:
        return np.zeros((0, num_cols), dtype=np.float64)
    try:
        if min(map(len, tokens)) < num_cols:
            raise ValueError
        rows = np.array([t[:num_cols] for t in tokens], dtype=np.float64)
        if not np.isfinite(rows).all():
            raise ValueError
        return rows
    except ValueError:
        pass
    # Slow path: name the offending line (and parse what numpy alone would refuse)
    rows = []
    for offset, (line, toks) in enumerate(zip(lines, tokens)):
        try:
            values = [float(t) for t in toks[:num_cols]]
        except ValueError:
            values = []
        if len(values) < num_cols or not np.isfinite(values).all():
            raise ValueError(f"{path}:{first_line + offset}: expected {num_cols} finite numbers, "
                             f"got {line.strip()!r}")
        rows.append(values)
    return np.array(rows, dtype=np.float64)


def parse_count(line: str, path: str | Path, line_no: int) -> int:
    """A box-count line (a non-negative whole number); ValueError naming file and line if not."""
    try:
        value = float(line.strip())
    except ValueError:
        value = float("nan")
    if not (np.isfinite(value) and value >= 0 and value == int(value)):
        raise ValueError(f"{path}:{line_no}: expected a box count, got {line.strip()!r}")
    return int(value)


# ---------------------------------------------------------------------------------------------
# Writing curves
# ---------------------------------------------------------------------------------------------
def write_pr_csv(path: str | Path, precision: np.ndarray, recall: np.ndarray) -> None:
    """One row per threshold: ``threshold,precision,recall`` (NaN precision written as ``nan``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["threshold", "precision", "recall"])
        for t, p, r in zip(THRESHOLDS, precision, recall):
            writer.writerow([f"{t:.3f}", repr(float(p)), repr(float(r))])


def plot_pr_curves(path: str | Path,
                   panels: Sequence[tuple[str, Sequence[PRCurve], Sequence[PRCurve]]]) -> None:
    """Draw one PR panel per (title, our curves, published curves) into a PNG (Agg backend).

    Our curves are drawn thick and first in the legend; published ones thin, beside them. Every
    legend entry carries the curve's VOC AP.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 6), squeeze=False)
    ours_colors = ["black", "red", "blue", "green"]
    for ax, (title, ours, official) in zip(axes[0], panels):
        for i, curve in enumerate(ours):
            ap = voc_ap(curve.recall, curve.precision)
            ax.plot(curve.recall, curve.precision, linewidth=2.5, zorder=3,
                    color=ours_colors[i % len(ours_colors)], label=f"{curve.label} ({ap:.4f})")
        ranked = sorted(official, key=lambda c: -voc_ap(c.recall, c.precision))
        palette = plt.cm.tab10 if len(ranked) <= 10 else plt.cm.tab20
        for i, curve in enumerate(ranked):
            ap = voc_ap(curve.recall, curve.precision)
            ax.plot(curve.recall, curve.precision, linewidth=1.0, alpha=0.8,
                    color=palette(i % palette.N), label=f"{curve.label} ({ap:.4f})")
        ax.set(title=title, xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1.01))
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower left", fontsize=7 if len(ranked) > 8 else 9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
