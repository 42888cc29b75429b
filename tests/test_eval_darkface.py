"""Tests of evaluation/darkface.py and tools/eval_darkface.py.

``reference_darkface`` below is an independent, deliberately naive transcription of the
official Octave tool (docs/EVALUATION.md): Python loops per prediction, per GT and per
threshold. The vectorised evaluator must give the very same curves on random data. The steps
both official tools share (norm_score.m's score range, image_pr_info's threshold sweep) come from
tests/common.py, used by the WIDER FACE reference too.
"""
import json
import math
import warnings

import numpy as np
import pytest

from evaluation.darkface import (evaluate_darkface, evaluate_darkface_boxes, load_darkface_gt,
                                 read_darkface_pred_file)
from tests.helpers import assert_read_fails, float32_score_range, last_row_at_thresholds
from tools import eval_darkface


# ---------------------------------------------------------------------------------------------
# Brute-force reference, straight from what the Octave tool does
# ---------------------------------------------------------------------------------------------
def reference_darkface(gt, preds):
    """gt: id -> list of [x1, y1, x2, y2]; preds: id -> list of [x1, y1, x2, y2, s] or None."""
    # read_pred.m: stable sort by score, descending.
    preds = {i: sorted(p, key=lambda r: -r[4]) for i, p in preds.items() if p}
    # norm_score.m in single precision, with the max == min branch.
    hi, lo = float32_score_range(preds.values())
    for rows in preds.values():
        for r in rows:
            if hi != lo:
                r[4] = float((np.float32(r[4]) - lo) / (hi - lo))
            else:
                r[4] = float(np.float32(r[4]) - (lo - np.float32(1)))

    proposals, recalled, count_face = [0] * 1000, [0] * 1000, 0
    for image_id, boxes in gt.items():
        count_face += len(boxes)
        rows = preds.get(image_id)
        if not boxes or not rows:
            continue
        recall_list = [0] * len(boxes)
        pred_recall = []
        for r in rows:
            overlaps = []
            for g in boxes:
                w = min(g[2], r[2]) - max(g[0], r[0]) + 1
                h = min(g[3], r[3]) - max(g[1], r[1]) + 1
                inter = w * h
                aarea = (g[2] - g[0] + 1) * (g[3] - g[1] + 1)
                barea = (r[2] - r[0] + 1) * (r[3] - r[1] + 1)
                o = 0.0 if w <= 0 or h <= 0 else inter / (aarea + barea - inter)
                overlaps.append(o)
            best = max(overlaps)
            idx = overlaps.index(best)                     # first on ties
            if best >= 0.5:
                recall_list[idx] = 1
            pred_recall.append(sum(1 for v in recall_list if v == 1))
        for k, last in enumerate(last_row_at_thresholds(rows)):
            if last is not None:
                proposals[k] += last + 1
                recalled[k] += pred_recall[last]
    precision = [r / p if p else math.nan for r, p in zip(recalled, proposals)]
    recall = [r / count_face if count_face else math.nan for r in recalled]
    return np.array(precision), np.array(recall)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def write_gt(folder, gt):
    folder.mkdir(parents=True, exist_ok=True)
    for image_id, boxes in gt.items():
        lines = [str(len(boxes))] + [" ".join(f"{v:g}" for v in b) for b in boxes]
        (folder / f"{image_id}.txt").write_text("\n".join(lines) + "\n")


def write_preds(folder, preds):
    folder.mkdir(parents=True, exist_ok=True)
    for image_id, rows in preds.items():
        if rows is not None:
            (folder / f"{image_id}.txt").write_text("".join(
                " ".join(repr(float(v)) for v in r) + "\n" for r in rows))


def random_dataset(seed, num_images=12):
    """GT, and predictions with jitter, duplicates, random boxes, ties and empty images."""
    rng = np.random.default_rng(seed)
    gt, preds = {}, {}
    for n in range(num_images):
        image_id = str(100 + n)
        faces = int(rng.integers(0, 6)) if n % 5 else 0
        xy = rng.uniform(0, 300, (faces, 2))
        wh = rng.uniform(4, 40, (faces, 2))
        if faces > 2:                              # overlapping faces: a box may reach both
            xy[1] = xy[0] + rng.uniform(-4, 4, 2)
        boxes = np.round(np.concatenate([xy, xy + wh], 1)).tolist()
        gt[image_id] = boxes
        if n % 8 == 3:
            preds[image_id] = None                       # missing file
            continue
        if n == 6:
            preds[image_id] = []                         # empty file
            continue
        rows = []
        for b in boxes:
            for _ in range(int(rng.integers(0, 3))):     # 0, 1 or 2 (a duplicate) per face
                j = rng.normal(0, 0.15 * (b[2] - b[0] + 1), 4)
                rows.append([b[0] + j[0], b[1] + j[1], b[2] + j[2], b[3] + j[3]])
        for _ in range(int(rng.integers(0, 5))):         # background boxes
            x, y = rng.uniform(0, 300, 2)
            rows.append([x, y, x + rng.uniform(4, 40), y + rng.uniform(4, 40)])
        scores = np.round(rng.uniform(-2, 3, len(rows)), 1)   # ties, negative scores
        preds[image_id] = [r + [float(s)] for r, s in zip(rows, scores)]
    return gt, preds


def evaluate_files(tmp_path, gt, preds, **kw):
    write_gt(tmp_path / "gt", gt)
    write_preds(tmp_path / "pred", preds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return evaluate_darkface(tmp_path / "gt", tmp_path / "pred", **kw)


def assert_same_curve(result, precision, recall):
    np.testing.assert_array_equal(result["precision"], precision)
    np.testing.assert_array_equal(result["recall"], recall)


# ---------------------------------------------------------------------------------------------
# Against the brute-force reference
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_matches_bruteforce_reference(tmp_path, seed):
    gt, preds = random_dataset(seed)
    precision, recall = reference_darkface(
        gt, {i: [list(r) for r in p] for i, p in preds.items() if p is not None})
    result = evaluate_files(tmp_path, gt, preds)
    assert_same_curve(result, precision, recall)
    assert 0 < result["ap"] < 1


# ---------------------------------------------------------------------------------------------
# Hand-built cases
# ---------------------------------------------------------------------------------------------
def test_perfect_predictions_give_ap_one(tmp_path):
    gt, _ = random_dataset(1, num_images=20)
    perfect = {i: [b + [1.0] for b in boxes] for i, boxes in gt.items()}   # max == min branch
    assert evaluate_files(tmp_path / "a", gt, perfect)["ap"] == pytest.approx(1.0, abs=1e-12)
    distinct, s = {}, 0.0
    for i, boxes in gt.items():
        distinct[i] = []
        for b in boxes:
            s += 1.0
            distinct[i].append(b + [s])
    assert evaluate_files(tmp_path / "b", gt, distinct)["ap"] == pytest.approx(1.0, abs=1e-12)


def test_equal_scores_use_the_max_equals_min_branch(tmp_path):
    gt = {"1": [[0, 0, 9, 9], [20, 20, 29, 29]]}
    # Both predictions 0.3: normalised to 0.3 - (0.3 - 1) = 1 in single precision.
    res = evaluate_files(tmp_path, gt, {"1": [[0, 0, 9, 9, 0.3], [50, 50, 60, 60, 0.3]]})
    assert np.all(res["precision"] == 0.5) and np.all(res["recall"] == 0.5)


def test_duplicates_add_proposals_not_recall(tmp_path):
    gt = {"1": [[0, 0, 9, 9]]}
    res = evaluate_files(tmp_path, gt, {"1": [[0, 0, 9, 9, 0.9], [0, 0, 9, 9, 0.1]]})
    # Normalised scores 1 and 0: at t > 0 one TP; at t = 0 both count.
    assert res["precision"][0] == 1.0 and res["precision"][-1] == 0.5
    assert np.all(res["recall"] == 1.0)
    assert res["ap"] == pytest.approx(1.0)


def test_prediction_takes_max_iou_gt_first_on_ties(tmp_path):
    # The first prediction has IoU 90/110 with both GTs and takes the first; the second is
    # exactly [0, 0, 9, 9] (IoU 1 with that box only).
    pred = {"1": [[1, 0, 10, 9, 1.0], [0, 0, 9, 9, 0.0]]}
    res = evaluate_files(tmp_path / "a", {"1": [[0, 0, 9, 9], [2, 0, 11, 9]]}, pred)
    assert res["recall"][0] == 0.5 and res["recall"][-1] == 0.5     # both took [0, 0, 9, 9]
    res = evaluate_files(tmp_path / "b", {"1": [[2, 0, 11, 9], [0, 0, 9, 9]]}, pred)
    assert res["recall"][0] == 0.5 and res["recall"][-1] == 1.0     # tie went to [2, 0, 11, 9]


def test_max_iou_not_first_above_threshold(tmp_path):
    # GT 0 has IoU ~0.67 with the prediction, GT 1 has IoU 1: DARK FACE takes the max (GT 1).
    gt = {"1": [[0, 0, 9, 9], [2, 0, 11, 9]]}
    pred = {"1": [[2, 0, 11, 9, 0.9], [0, 0, 9, 9, 0.5]]}
    res = evaluate_files(tmp_path, gt, pred)
    assert res["recall"][0] == 0.5 and res["recall"][-1] == 1.0
    assert res["precision"][-1] == 1.0


def test_unsorted_input_gives_the_same_result(tmp_path):
    gt, preds = random_dataset(3)
    shuffled = {i: (None if p is None else [p[j] for j in np.random.default_rng(0).permutation(
        len(p))]) for i, p in preds.items()}
    sorted_ = {i: (None if p is None else sorted(p, key=lambda r: -r[4]))
               for i, p in preds.items()}
    a = evaluate_files(tmp_path / "a", gt, shuffled)
    b = evaluate_files(tmp_path / "b", gt, sorted_)
    assert_same_curve(a, b["precision"], b["recall"])
    assert a["ap"] == b["ap"]


def test_empty_images(tmp_path):
    gt = {"1": [[0, 0, 9, 9]], "2": [], "3": [[0, 0, 9, 9]], "4": [[0, 0, 9, 9]]}
    preds = {"1": [[0, 0, 9, 9, 0.9]],
             "2": [[0, 0, 9, 9, 1.0]] * 3,               # FPs on a face-less image are free
             "3": [],                                     # empty file: skipped, face counts
             "4": None}                                   # missing file: the same
    write_gt(tmp_path / "gt", gt)
    write_preds(tmp_path / "pred", preds)
    with pytest.warns(UserWarning, match="1 of 4 images have no prediction file"):
        res = evaluate_darkface(tmp_path / "gt", tmp_path / "pred")
    assert np.all(res["recall"][-1] == 1 / 3)
    assert res["precision"][-1] == 1.0
    assert res["ap"] == pytest.approx(1 / 3)


def test_ids_restrict_the_evaluation(tmp_path):
    gt = {"1": [[0, 0, 9, 9]], "2": [[0, 0, 9, 9]]}
    preds = {"1": [[0, 0, 9, 9, 0.9]], "2": [[50, 50, 59, 59, 0.5]]}
    assert evaluate_files(tmp_path, gt, preds)["ap"] == pytest.approx(0.5)
    assert evaluate_files(tmp_path, gt, preds, ids=["1"])["ap"] == pytest.approx(1.0)
    with pytest.raises(FileNotFoundError, match="no GT file for image id '3'"):
        evaluate_files(tmp_path, gt, preds, ids=["1", "3"])


def test_in_memory_api_equals_files(tmp_path):
    gt, preds = random_dataset(4)
    from_files = evaluate_files(tmp_path, gt, preds)
    in_memory = evaluate_darkface_boxes(
        {i: np.array(b, dtype=float).reshape(-1, 4) for i, b in gt.items()},
        {i: np.array(p, dtype=float) for i, p in preds.items() if p is not None})
    assert_same_curve(in_memory, from_files["precision"], from_files["recall"])


def test_malformed_lines_name_file_and_line(tmp_path):
    pred = tmp_path / "7.txt"
    assert_read_fails(read_darkface_pred_file, pred, "1 2 3 4 0.5\n1 2 three 4 0.5\n",
                      ValueError, r"7\.txt:2: ")
    assert_read_fails(read_darkface_pred_file, pred, "1 2 3 4 0.5\n\n1 2 3 4\n",
                      ValueError, r"7\.txt:3: ")
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    (gt_dir / "1.txt").write_text("2\n0 0 9 9\n")
    with pytest.raises(ValueError, match=r"1\.txt:3: the file announces 2 faces"):
        load_darkface_gt(gt_dir)
    (gt_dir / "1.txt").write_text("two\n0 0 9 9\n")
    with pytest.raises(ValueError, match=r"1\.txt:1: expected a box count"):
        load_darkface_gt(gt_dir)


def test_reader_skips_blank_lines_and_sorts(tmp_path):
    pred = tmp_path / "1.txt"
    pred.write_text("1 2 3 4 0.2\n\n5\t6 7 8 0.9\n\n")
    np.testing.assert_array_equal(read_darkface_pred_file(pred),
                                  [[5, 6, 7, 8, 0.9], [1, 2, 3, 4, 0.2]])


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def test_cli_json_plot_csv(tmp_path, capsys, shared_data):
    gt, preds = random_dataset(5)
    write_gt(tmp_path / "gt", gt)
    write_preds(tmp_path / "pred", preds)
    ids = tmp_path / "ids.txt"
    ids.write_text("100\n101.png\n\n102\n")
    argv = ["--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred"), "--ids", str(ids),
            "--json", "--plot", str(tmp_path / "pr.png"), "--csv", str(tmp_path / "pr.csv"),
            "--official-curves", str(shared_data / "official_pr_curves" / "darkface")]
    assert eval_darkface.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    expected = evaluate_darkface(tmp_path / "gt", tmp_path / "pred", ids=["100", "101", "102"])
    assert out == {"ap": expected["ap"]}
    assert (tmp_path / "pr.png").stat().st_size > 0
    assert len((tmp_path / "pr.csv").read_text().splitlines()) == 1001
