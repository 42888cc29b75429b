"""Tests of evaluation/common.py and evaluation/official_curves.py."""
import math

import numpy as np
import pytest

from evaluation.common import (NUM_THRESHOLDS, REALMAX_SINGLE, REALMIN_SINGLE, THRESHOLDS,
                               PRCurve, first_occurrence, normalize_scores, parse_count,
                               parse_rows, plot_pr_curves, score_range, threshold_counts,
                               voc_ap, write_pr_csv)
from evaluation.official_curves import (darkface_curves, load_darkface_curve, read_octave_text,
                                        wider_curves)

# Leaderboard numbers of the data README (easy, medium, hard in %).
WIDER_PUBLISHED = {
    "DSFD": (96.63, 95.73, 90.50),
    "SRN": (96.44, 95.28, 90.17),
    "PyramidBox": (96.12, 95.00, 88.91),
    "FAN": (95.23, 94.01, 90.08),
    "SSH": (93.12, 92.11, 84.58),
    "SFD": (93.78, 92.56, 85.90),
    "s3fd.pytorch": (93.58, 91.46, 73.27),
    "HR": (92.57, 91.05, 80.60),
    "LDCF+": (79.00, 76.91, 52.25),
    "acf": (65.92, 54.18, 27.32),
}
DARKFACE_PUBLISHED = {"DSFD": 0.4709, "PyramidBox": 0.3527, "SSH": 0.3324, "Faster-RCNN": 0.1148}


def voc_ap_loop(rec, prec):
    """VOCap.m transcribed line by line (MATLAB max ignores NaN)."""
    mrec = [0.0] + list(rec) + [1.0]
    mpre = [0.0] + list(prec) + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        a, b = mpre[i], mpre[i + 1]
        mpre[i] = b if math.isnan(a) else a if math.isnan(b) else max(a, b)
    ap = 0.0
    for i in range(1, len(mrec)):
        if mrec[i] != mrec[i - 1]:
            ap += (mrec[i] - mrec[i - 1]) * mpre[i]
    return ap


# ---------------------------------------------------------------------------------------------
# VOC AP
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_voc_ap_equals_vocap_loop(seed):
    rng = np.random.default_rng(seed)
    rec = np.sort(rng.random(200))
    rec[50:60] = rec[50]                                   # flat stretches
    prec = rng.random(200)
    prec[rng.random(200) < 0.2] = np.nan                   # thresholds with no proposal
    assert voc_ap(rec, prec) == pytest.approx(voc_ap_loop(rec, prec), abs=1e-12)


def test_voc_ap_ignores_nan_precision():
    # No proposal above the first thresholds: NaN precision must not poison the envelope.
    rec = np.array([0.0, 0.0, 0.5, 1.0])
    prec = np.array([np.nan, np.nan, 1.0, 0.5])
    assert voc_ap(rec, prec) == pytest.approx(0.5 * 1.0 + 0.5 * 0.5)
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0])) == pytest.approx(1.0)


@pytest.mark.parametrize("method", sorted(WIDER_PUBLISHED))
def test_wider_official_curves_give_leaderboard_ap(shared_data, method):
    root = shared_data / "official_pr_curves" / "widerface_val"
    for setting, published in zip(("easy", "medium", "hard"), WIDER_PUBLISHED[method]):
        curve = next(c for c in wider_curves(root, setting) if c.label == method)
        assert round(100 * voc_ap(curve.recall, curve.precision), 2) == published


def test_all_wider_official_curves_load(shared_data):
    root = shared_data / "official_pr_curves" / "widerface_val"
    for setting in ("easy", "medium", "hard"):
        curves = wider_curves(root, setting)
        assert len(curves) == 22
        for c in curves:
            assert c.precision.shape == c.recall.shape and c.precision.ndim == 1
            assert np.all(np.diff(c.recall) >= 0)          # columns not swapped
            assert 0 < voc_ap(c.recall, c.precision) < 1


def test_darkface_official_curves_give_published_ap(shared_data):
    curves = darkface_curves(shared_data / "official_pr_curves" / "darkface")
    got = {c.label: round(voc_ap(c.recall, c.precision), 4) for c in curves}
    assert got == DARKFACE_PUBLISHED
    assert all(len(c.precision) == NUM_THRESHOLDS for c in curves)


def test_read_octave_text(tmp_path):
    path = tmp_path / "x.mat"
    path.write_text("# Created by Octave 6.0.0\n# name: pr_curve\n# type: matrix\n# rows: 3\n"
                    "# columns: 2\n 1 0.25\n 0.5 0.5\n 0.25 1\n\n\n# name: n\n# type: scalar\n"
                    "7\n\n\n# name: algo_name\n# type: sq_string\n# elements: 1\n# length: 6\n"
                    "my net\n\n\n")
    data = read_octave_text(path)
    np.testing.assert_array_equal(data["pr_curve"], [[1, 0.25], [0.5, 0.5], [0.25, 1]])
    assert data["n"].item() == 7 and data["algo_name"] == "my net"
    curve = load_darkface_curve(path)
    assert curve.label == "my net"
    np.testing.assert_array_equal(curve.precision, [1, 0.5, 0.25])
    np.testing.assert_array_equal(curve.recall, [0.25, 0.5, 1])


def test_read_octave_text_rejects_short_matrix(tmp_path):
    path = tmp_path / "bad.mat"
    path.write_text("# name: pr_curve\n# type: matrix\n# rows: 2\n# columns: 2\n 1 2\n 3\n")
    with pytest.raises(ValueError, match="pr_curve"):
        read_octave_text(path)


# ---------------------------------------------------------------------------------------------
# Thresholds and normalisation
# ---------------------------------------------------------------------------------------------
def test_thresholds_are_the_tools():
    assert THRESHOLDS.shape == (1000,) and THRESHOLDS.dtype == np.float64
    for k in (1, 7, 333, 999, 1000):
        assert THRESHOLDS[k - 1] == 1 - k / 1000          # the same double expression
    assert THRESHOLDS[-1] == 0.0


def test_score_range_starts_at_single_realmin_realmax():
    hi, lo = score_range([np.array([-3.0, -1.0]), np.zeros(0)])
    assert hi == REALMIN_SINGLE and hi.dtype == np.float32   # all negative: max stays realmin
    assert lo == np.float32(-3.0)
    hi, lo = score_range([])
    assert (hi, lo) == (REALMIN_SINGLE, REALMAX_SINGLE)
    hi, lo = score_range([np.array([0.1, 0.7]), np.array([0.3])])
    assert hi == np.float32(0.7) and lo == np.float32(0.1)


def test_normalize_scores_is_single_precision():
    scores = np.array([0.05, 0.3, 0.123456789, 0.99])
    hi, lo = score_range([scores])
    got = normalize_scores(scores, hi, lo, equal_range_branch=False)
    for s, g in zip(scores, got):
        expect = (np.float32(s) - np.float32(0.05)) / (np.float32(0.99) - np.float32(0.05))
        assert isinstance(expect, np.float32) and g == float(expect)
    # In double the middle value differs: the single rounding is really there.
    double = (scores - 0.05) / (0.99 - 0.05)
    assert not np.array_equal(got, double)


def test_single_precision_changes_which_threshold_is_cleared():
    # A score exactly at t_k in double can fall below it once rounded to single.
    k = next(k for k in range(1, 1001) if np.float32(THRESHOLDS[k - 1]) < THRESHOLDS[k - 1])
    t = THRESHOLDS[k - 1]
    scores = np.array([0.0, t, 1.0])
    norm = normalize_scores(scores, *score_range([scores]), equal_range_branch=False)
    assert norm[1] < t
    counts = threshold_counts(norm, np.array([False, True, False]))
    assert counts[k - 1] == 0 and counts[k] == 1


def test_equal_range_branch():
    scores = np.array([0.7, 0.7])
    hi, lo = score_range([scores])
    np.testing.assert_array_equal(normalize_scores(scores, hi, lo, True), [1.0, 1.0])
    assert np.isnan(normalize_scores(scores, hi, lo, False)).all()   # WIDER: 0/0


# ---------------------------------------------------------------------------------------------
# Threshold accumulation
# ---------------------------------------------------------------------------------------------
def per_image_counts_loop(images):
    """The tools' image_pr_info summed over images: per threshold, the last index >= t."""
    proposals, recalled = np.zeros(1000, np.int64), np.zeros(1000, np.int64)
    for scores, proposal, pred_recall in images:
        for k in range(1, 1001):
            t = 1 - k / 1000
            last = max((i for i, s in enumerate(scores) if s >= t), default=None)
            if last is not None:
                proposals[k - 1] += sum(1 for p in proposal[:last + 1] if p == 1)
                recalled[k - 1] += pred_recall[last]
    return proposals, recalled


@pytest.mark.parametrize("seed", range(3))
def test_threshold_counts_equal_per_image_loop(seed):
    rng = np.random.default_rng(seed)
    images, flat_scores, flat_prop, flat_first = [], [], [], []
    gt_offset = 0
    for _ in range(6):
        n = int(rng.integers(1, 25))
        scores = np.sort(np.round(rng.random(n), 3))[::-1]          # sorted, with ties
        gt = rng.integers(-1, 4, n)                                   # matched GT or -1
        proposal = np.where(rng.random(n) < 0.2, -1, 1)
        recall_list, pred_recall = set(), []
        for g, p in zip(gt, proposal):
            if g >= 0 and p == 1:
                recall_list.add(g)
            pred_recall.append(len(recall_list))
        images.append((scores, proposal, pred_recall))
        flat_scores.append(scores)
        flat_prop.append(proposal == 1)
        flat_first.append(np.where((gt >= 0) & (proposal == 1), gt + gt_offset, -1))
        gt_offset += 10
    ref_prop, ref_rec = per_image_counts_loop(images)
    scores = np.concatenate(flat_scores)
    np.testing.assert_array_equal(threshold_counts(scores, np.concatenate(flat_prop)), ref_prop)
    first = first_occurrence(np.concatenate(flat_first))
    np.testing.assert_array_equal(threshold_counts(scores, first), ref_rec)


def test_first_occurrence():
    got = first_occurrence(np.array([-1, 3, 3, 5, -1, 3, 5, 0]))
    np.testing.assert_array_equal(got, [0, 1, 0, 1, 0, 0, 0, 1])


# ---------------------------------------------------------------------------------------------
# Parsing and writing
# ---------------------------------------------------------------------------------------------
def test_parse_rows_accepts_any_whitespace():
    rows = parse_rows(["1 2 3 4 0.5", "\t5\t6  7 8   0.25 ", "1,2,3,4,1e-1", "1 2 3 4 5 9"],
                      "f.txt", 1, 5)
    np.testing.assert_array_equal(rows, [[1, 2, 3, 4, 0.5], [5, 6, 7, 8, 0.25],
                                         [1, 2, 3, 4, 0.1], [1, 2, 3, 4, 5]])


@pytest.mark.parametrize("bad", ["1 2 3 4", "1 2 3 x 0.5", "1 2 3 4 nan", ""])
def test_parse_rows_names_file_and_line(bad):
    with pytest.raises(ValueError, match=r"dir/f\.txt:12: "):
        parse_rows(["1 2 3 4 0.5", "1 2 3 4 0.5", bad], "dir/f.txt", 10, 5)


def test_parse_count():
    assert parse_count(" 12 ", "f", 2) == 12
    for bad in ("x", "-1", "2.5", ""):
        with pytest.raises(ValueError, match="f:2: expected a box count"):
            parse_count(bad, "f", 2)


def test_write_csv_and_plot(tmp_path):
    precision = np.full(1000, np.nan)
    precision[500:] = 0.5
    recall = np.linspace(0, 1, 1000)
    write_pr_csv(tmp_path / "pr.csv", precision, recall)
    lines = (tmp_path / "pr.csv").read_text().splitlines()
    assert lines[0] == "threshold,precision,recall" and len(lines) == 1001
    assert lines[1].startswith("0.999,nan,0.0") and lines[-1].startswith("0.000,0.5,1.0")
    curve = PRCurve("ours", precision, recall)
    plot_pr_curves(tmp_path / "pr.png", [("a", [curve], [curve._replace(label="b")]),
                                         ("c", [curve], [])])
    assert (tmp_path / "pr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
