"""Tests of evaluation/widerface.py and tools/eval_widerface.py.

``reference_wider`` is an independent, deliberately naive transcription of the official
MATLAB tool (docs/EVALUATION.md) with MATLAB's int32 arithmetic spelled out on Python integers
(exact rational rounding via ``fractions``): loops per prediction, per GT and per threshold.
The vectorised evaluator must give the very same curves on random data. The steps both official
tools share (norm_score.m's score range, image_pr_info's threshold sweep) come from tests/common.py.
"""
import json
import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
import scipy.io as sio

from evaluation.widerface import (SETTINGS, WiderGT, evaluate_widerface,
                                  evaluate_widerface_boxes, load_widerface_gt,
                                  match_first_rounded, read_widerface_pred_file, to_int32)
from tests.helpers import assert_read_fails, float32_score_range, last_row_at_thresholds
from tools import eval_widerface

INT32_MIN, INT32_MAX = -2 ** 31, 2 ** 31 - 1


# ---------------------------------------------------------------------------------------------
# Brute-force reference, straight from what the MATLAB tool does under Octave
# ---------------------------------------------------------------------------------------------
def sat(v):
    return max(INT32_MIN, min(INT32_MAX, v))


def int32_of(x):
    """MATLAB int32(x) for a double: round half away from zero (exactly), saturate."""
    if math.isnan(x):
        return 0
    if math.isinf(x):
        return INT32_MAX if x > 0 else INT32_MIN
    f = Fraction(x)
    r = math.floor(abs(f) + Fraction(1, 2))
    return sat(r if f >= 0 else -r)


def boxoverlap_int32(a, b):
    """boxoverlap(gt_bbx, pred) with gt int32 (Python ints) and pred double, one GT row."""
    x1 = max(a[0], int32_of(b[0]))
    y1 = max(a[1], int32_of(b[1]))
    x2 = min(a[2], int32_of(b[2]))
    y2 = min(a[3], int32_of(b[3]))
    w = sat(sat(x2 - x1) + 1)
    h = sat(sat(y2 - y1) + 1)
    inter = sat(w * h)
    aarea = sat(sat(sat(a[2] - a[0]) + 1) * sat(sat(a[3] - a[1]) + 1))
    barea = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    union = sat(int32_of(aarea + barea) - inter)
    if union == 0:
        o = 0 if inter == 0 else (INT32_MAX if inter > 0 else INT32_MIN)
    else:
        o = int32_of(inter / union)
    if w <= 0 or h <= 0:
        o = 0
    return o


def reference_wider(images, setting):
    """images: list of (gt boxes [[x,y,w,h] ints], keep dict setting -> 1-based list,
    prediction rows [[x,y,w,h,s]] or None)."""
    preds = [None if not p else sorted(p, key=lambda r: -r[4]) for _, _, p in images]
    hi, lo = float32_score_range(preds)
    with np.errstate(invalid="ignore", divide="ignore"):
        preds = [None if rows is None else
                 [r[:4] + [float((np.float32(r[4]) - lo) / (hi - lo))] for r in rows]
                 for rows in preds]

    proposals, recalled, count_face = [0] * 1000, [0] * 1000, 0
    for (boxes, keep, _), rows in zip(images, preds):
        keep_index = keep[setting]
        count_face += len(keep_index)
        if not boxes or not rows:
            continue
        ignore = [0] * len(boxes)
        for k in keep_index:
            ignore[k - 1] = 1
        gt = [[x, y, sat(x + w), sat(y + h)] for x, y, w, h in boxes]
        recall_list = [0] * len(boxes)
        proposal_list = [1] * len(rows)
        pred_recall = []
        for hh, r in enumerate(rows):
            b = [r[0], r[1], r[0] + r[2], r[1] + r[3]]
            overlaps = [boxoverlap_int32(g, b) for g in gt]
            best = max(overlaps)
            idx = overlaps.index(best)
            if best >= 0.5:
                if ignore[idx] == 0:
                    recall_list[idx] = -1
                    proposal_list[hh] = -1
                elif recall_list[idx] == 0:
                    recall_list[idx] = 1
            pred_recall.append(sum(1 for v in recall_list if v == 1))
        for k, last in enumerate(last_row_at_thresholds(rows)):
            if last is not None:
                proposals[k] += sum(1 for p in proposal_list[:last + 1] if p == 1)
                recalled[k] += pred_recall[last]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.array(recalled, float) / np.array(proposals, float)
        recall = np.array(recalled, float) / float(count_face)
    return precision, recall


# ---------------------------------------------------------------------------------------------
# Fake GT folder, shaped like the official .mat files
# ---------------------------------------------------------------------------------------------
def _cell(items):
    out = np.empty((len(items), 1), dtype=object)
    for i, item in enumerate(items):
        out[i, 0] = item
    return out


def write_fake_gt(folder, events):
    """events: list of (event name, [(image name, boxes [[x,y,w,h]], keep {setting: [1-based]})]).

    Mirrors wider_face_val.mat: (E, 1) cells of char arrays / (n, 1) cells of int32 (k, 4)
    boxes, and gt_list as (n, 1) cells of uint8/uint16 (m, 1) index columns.
    """
    folder.mkdir(parents=True, exist_ok=True)
    base = dict(
        event_list=_cell([np.array([e]) for e, _ in events]),
        file_list=_cell([_cell([np.array([name]) for name, _, _ in imgs]) for _, imgs in events]),
        face_bbx_list=_cell([_cell([np.array(b, dtype=np.int32).reshape(-1, 4)
                                    for _, b, _ in imgs]) for _, imgs in events]))
    sio.savemat(folder / "wider_face_val.mat", base)
    for setting in SETTINGS:
        def keep_column(idx):
            dtype = np.uint16 if idx and max(idx) > 255 else np.uint8
            return np.array(idx, dtype=dtype).reshape(-1, 1)
        gt_list = _cell([_cell([keep_column(k[setting]) for _, _, k in imgs])
                         for _, imgs in events])
        sio.savemat(folder / f"wider_{setting}_val.mat", dict(base, gt_list=gt_list))


def write_pred_files(folder, events, preds):
    """preds: (event, image name) -> rows [[x,y,w,h,s]] or None (no file)."""
    for event, imgs in events:
        (folder / event).mkdir(parents=True, exist_ok=True)
        for name, _, _ in imgs:
            rows = preds.get((event, name))
            if rows is None:
                continue
            lines = [f"{name}.jpg", str(len(rows))]
            lines += [" ".join(repr(float(v)) for v in r) for r in rows]
            (folder / event / f"{name}.txt").write_text("\n".join(lines) + "\n")


def random_events(seed, num_events=3, per_event=5):
    """Random GT with random keep lists, and predictions near the GT (fractional corners,
    half-pixel values, duplicates), random boxes, ties, and empty / missing files."""
    rng = np.random.default_rng(seed)
    events, preds = [], {}
    for e in range(num_events):
        imgs = []
        for j in range(per_event):
            name = f"{e}_img_{j}"
            faces = int(rng.integers(0, 7)) if (e + j) % 6 else 0
            xy = rng.integers(0, 200, (faces, 2))
            wh = rng.integers(0, 30, (faces, 2))
            if faces > 2:                        # overlapping faces, as in crowded WIDER images
                xy[1] = xy[0] + rng.integers(-3, 4, 2)
                wh[1] = np.maximum(wh[0] + rng.integers(-2, 3, 2), 0)
            boxes = np.concatenate([xy, wh], 1).tolist()
            hard = sorted(rng.choice(faces, int(rng.integers(0, faces + 1)), replace=False) + 1)
            medium = [k for k in hard if rng.random() < 0.6]
            easy = [k for k in medium if rng.random() < 0.6]
            imgs.append((name, boxes, dict(easy=easy, medium=medium, hard=[int(k) for k in hard])))
            if (e * per_event + j) % 7 == 3:
                preds[(f"event{e}", name)] = None          # missing file
                continue
            rows = []
            for b in boxes:
                for _ in range(int(rng.integers(0, 3))):
                    jit = rng.normal(0, 0.2 * (max(b[2], b[3]) + 1), 4)
                    if rng.random() < 0.3:
                        jit = np.round(jit * 2) / 2          # exact .5 values: rounding ties
                    rows.append([b[0] + jit[0], b[1] + jit[1], b[2] + jit[2], b[3] + jit[3]])
            for _ in range(int(rng.integers(0, 4))):
                rows.append([*rng.uniform(0, 200, 2), *rng.uniform(1, 30, 2)])
            scores = np.round(rng.uniform(0, 1, len(rows)), 2)
            preds[(f"event{e}", name)] = [r + [float(s)] for r, s in zip(rows, scores)]
        events.append((f"event{e}", imgs))
    return events, preds


def evaluate_fake(tmp_path, events, preds):
    write_fake_gt(tmp_path / "gt", events)
    write_pred_files(tmp_path / "pred", events, preds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return evaluate_widerface(tmp_path / "gt", tmp_path / "pred")


def reference_for(events, preds, setting):
    images = [(boxes, keep, preds.get((event, name))) for event, imgs in events
              for name, boxes, keep in imgs]
    return reference_wider(images, setting)


def simple_events(boxes, keep):
    """One event with one image."""
    return [("ev", [("img", boxes, keep)])]


# ---------------------------------------------------------------------------------------------
# Against the brute-force reference
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_matches_bruteforce_reference(tmp_path, seed):
    events, preds = random_events(seed)
    result = evaluate_fake(tmp_path, events, preds)
    for setting in SETTINGS:
        precision, recall = reference_for(events, preds, setting)
        np.testing.assert_array_equal(result["curves"][setting]["precision"], precision)
        np.testing.assert_array_equal(result["curves"][setting]["recall"], recall)


def test_to_int32_rounds_half_away_and_saturates():
    x = np.array([0.5, -0.5, 1.5, 2.5, -2.5, 0.49999999999999994, -0.49999999999999994,
                  2.4, -2.6, 3e9, -3e9, np.inf, -np.inf, np.nan])
    expected = [int32_of(v) for v in x]
    assert expected[:7] == [1, -1, 2, 3, -3, 0, 0]
    np.testing.assert_array_equal(to_int32(x), expected)


@pytest.mark.parametrize("seed", range(3))
def test_overlap_equals_reference_on_awkward_boxes(seed):
    # Degenerate, negative, huge and half-pixel predictions against small int32 GT boxes.
    rng = np.random.default_rng(seed)
    gt = rng.integers(-5, 20, (6, 4))
    xy = rng.integers(-5, 20, (40, 2)) + rng.choice([0, 0.5, 0.49, 0.51], (40, 2))
    wh = rng.choice([-1.5, -0.5, 0, 0.3, 0.5, 2, 7.5, 40, 3e9], (40, 2))
    pred = np.concatenate([xy, wh, np.zeros((40, 1))], 1)
    got = match_first_rounded(pred, gt.astype(np.int32))
    for p, g_idx in zip(pred, got):
        b = [p[0], p[1], p[0] + p[2], p[1] + p[3]]
        overlaps = [boxoverlap_int32([int(x), int(y), sat(int(x + w)), sat(int(y + h))], b)
                    for x, y, w, h in gt]
        best = max(overlaps)
        assert g_idx == (overlaps.index(best) if best >= 0.5 else -1)


def test_overlap_pathological_values():
    # A prediction with negative width/height (x=0.4, w=-0.3: corners 0.4 and 0.1 both round to
    # 0) has a double area of 0.7 * 0.7 = 0.49. Against a 2x1 GT the union is
    # round(2 + 0.49) - 1 = 1, overlap 1; against a 1x1 GT it is round(1.49) - 1 = 0, so
    # 1/0 saturates to intmax, and max() picks that second GT although the first reaches 1.
    gt = np.array([[0, 0, 1, 0], [0, 0, 0, 0]], dtype=np.int32)
    pred = np.array([[0.4, 0.4, -0.3, -0.3, 1.0]])
    assert boxoverlap_int32([0, 0, 1, 0], [0.4, 0.4, 0.1, 0.1]) == 1
    assert boxoverlap_int32([0, 0, 0, 0], [0.4, 0.4, 0.1, 0.1]) == INT32_MAX
    np.testing.assert_array_equal(match_first_rounded(pred, gt), [1])


def test_rounded_union_decides_a_match(tmp_path):
    # GT [0,0,9,9]: area 100. Prediction corners y2 = 4.02 (rounds to 4): inter = 10 * 5 = 50,
    # barea = 10 * 5.02 = 50.2, union = round(150.2) - 50 = 100, overlap round(0.5) = 1.
    # Without rounding the union (100.2) the ratio would be 0.499 and round to 0.
    assert boxoverlap_int32([0, 0, 9, 9], [0, 0, 9, 4.02]) == 1
    events = simple_events([[0, 0, 9, 9]], all_kept(1))
    result = evaluate_fake(tmp_path, events, {("ev", "img"): [[0, 0, 9, 4.02, 0.6],
                                                               [70, 70, 3, 3, 0.1]]})
    assert result["curves"]["hard"]["recall"][0] == 1.0


def test_in_memory_predictions_are_sorted_before_matching():
    # The later, higher-scored duplicate recalls the face: the recall appears at t = 0.999.
    gt = WiderGT(["ev"], ["img"], [np.array([[0, 0, 9, 9]], np.int32)],
                 {s: [np.array([0])] for s in SETTINGS})
    result = evaluate_widerface_boxes(gt, [np.array([[0, 0, 9, 9, 0.2], [0, 0, 9, 9, 0.9]])])
    curve = result["curves"]["easy"]
    assert curve["recall"][0] == 1.0 and curve["precision"][0] == 1.0
    assert curve["precision"][-1] == 0.5


# ---------------------------------------------------------------------------------------------
# The real ground truth
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_gt(shared_data):
    return load_widerface_gt(shared_data / "widerface_val_gt")


def test_real_gt_loads(real_gt):
    assert len(real_gt) == 3226 and len(set(real_gt.events)) == 61
    assert sum(len(b) for b in real_gt.boxes) == 39708
    assert all(b.dtype == np.int32 and b.shape[1] == 4 for b in real_gt.boxes)
    counts = {s: sum(len(k) for k in real_gt.keep[s]) for s in SETTINGS}
    assert counts == dict(hard=31958, medium=13319, easy=7211)
    assert real_gt.events[0] == "0--Parade" and real_gt.names[0] == "0_Parade_marchingband_1_465"


def test_real_gt_perfect_predictions(real_gt):
    # GT boxes with distinct scores. The int32 quirk keeps the AP just below 1: in a few
    # crowded images a face has a near-duplicate annotation EARLIER in the list whose rounded
    # IoU with it is 1, so its perfect box recalls that earlier face instead (and one face
    # has w = -2, which no box can match). Those boxes become false positives.
    score = iter(range(1, 10 ** 6))
    preds = [np.array([[*b, next(score)] for b in boxes], dtype=float).reshape(-1, 5)
             for boxes in real_gt.boxes]
    result = evaluate_widerface_boxes(real_gt, preds)
    for setting in SETTINGS:
        assert 0.999 < result[setting] < 1.0
        assert np.nanmin(result["curves"][setting]["precision"]) > 0.99
    i = real_gt.names.index("0_Parade_marchingband_1_410")
    boxes = real_gt.boxes[i]
    own = match_first_rounded(np.c_[boxes.astype(float), np.ones(len(boxes))], boxes)
    assert own[130] == 129 and own[134] == 133 and own[141] == 140
    for face, earlier in ((130, 129), (134, 133), (141, 140)):
        x, y, w, h = (int(v) for v in boxes[earlier])
        b = boxes[face].astype(float)
        assert boxoverlap_int32([x, y, x + w, y + h], [b[0], b[1], b[0] + b[2], b[1] + b[3]]) == 1


# ---------------------------------------------------------------------------------------------
# Hand-built cases
# ---------------------------------------------------------------------------------------------
def all_kept(n):
    return {s: list(range(1, n + 1)) for s in SETTINGS}


def test_perfect_predictions_give_ap_one(tmp_path):
    events, _ = random_events(7)
    # Keep faces apart so that no perfect box can match another face.
    events = [(ev, [(name, [[40 * i, 40 * i, 20, 25] for i in range(len(boxes))], keep)
                    for name, boxes, keep in imgs]) for ev, imgs in events]
    preds, s = {}, 0
    for ev, imgs in events:
        for name, boxes, _ in imgs:
            preds[(ev, name)] = [b + [s := s + 1] for b in boxes]
    result = evaluate_fake(tmp_path, events, preds)
    for setting in SETTINGS:
        assert result[setting] == pytest.approx(1.0, abs=1e-12)


def test_equal_scores_have_no_max_equals_min_branch(tmp_path):
    # WIDER normalises (s - min) / (max - min) = 0/0: every score is NaN, nothing is counted.
    events = simple_events([[0, 0, 10, 10]], all_kept(1))
    result = evaluate_fake(tmp_path, events, {("ev", "img"): [[0, 0, 10, 10, 1.0]]})
    for setting in SETTINGS:
        assert result[setting] == 0.0
        assert np.isnan(result["curves"][setting]["precision"]).all()


def test_ignored_face_drops_the_prediction(tmp_path):
    # Face 2 is not kept: a box on it is neither a TP nor a FP.
    events = simple_events([[0, 0, 9, 9], [50, 50, 9, 9]], {s: [1] for s in SETTINGS})
    preds = {("ev", "img"): [[50, 50, 9, 9, 0.9], [0, 0, 9, 9, 0.5], [90, 90, 5, 5, 0.1]]}
    result = evaluate_fake(tmp_path, events, preds)
    curve = result["curves"]["hard"]
    assert curve["precision"][0] != curve["precision"][0]      # NaN: only a dropped box
    assert curve["precision"][-1] == 0.5 and curve["recall"][-1] == 1.0   # TP + background FP


def test_duplicates_are_false_positives(tmp_path):
    events = simple_events([[0, 0, 9, 9]], all_kept(1))
    preds = {("ev", "img"): [[0, 0, 9, 9, 0.9], [0.4, 0, 9, 9, 0.1]]}
    curve = evaluate_fake(tmp_path, events, preds)["curves"]["easy"]
    assert curve["precision"][0] == 1.0 and curve["precision"][-1] == 0.5
    assert np.all(curve["recall"] == 1.0)


def test_first_gt_with_rounded_iou_wins_not_max_iou(tmp_path):
    # GT 1 = [0,0,9,9]+ and GT 2 = [3,0,9,9]+; the prediction equals GT 2 (IoU 1) but its IoU
    # with GT 1 is 70/130 = 0.54, which rounds to 1 and comes first: GT 1 is taken.
    boxes = [[0, 0, 9, 9], [3, 0, 9, 9]]
    preds = {("ev", "img"): [[3, 0, 9, 9, 0.8], [100, 100, 9, 9, 0.2]]}
    keep = dict(easy=[2], medium=[1, 2], hard=[1, 2])
    result = evaluate_fake(tmp_path, simple_events(boxes, keep), preds)
    easy, medium = result["curves"]["easy"], result["curves"]["medium"]
    # easy: GT 1 is ignored, so the perfect box of GT 2 is dropped and GT 2 is never recalled.
    assert np.all(easy["recall"] == 0.0)
    # medium: the box recalls GT 1 (not GT 2), one of two faces.
    assert medium["recall"][0] == 0.5 and medium["precision"][0] == 1.0


def test_int32_rounding_accepts_true_iou_below_half(tmp_path):
    # GT [0,0,9,9] (area 100). Prediction h = 3.6: true IoU 46/100 = 0.46, but in int32 the
    # corner rounds to 4, inter = 50, union = round(100 + 46) - 50 = 96, 50/96 rounds to 1.
    events = simple_events([[0, 0, 9, 9]], all_kept(1))
    result = evaluate_fake(tmp_path, events, {("ev", "img"): [[0, 0, 9, 3.6, 0.7],
                                                               [80, 80, 5, 5, 0.1]]})
    assert result["curves"]["hard"]["recall"][0] == 1.0


def test_unsorted_input_gives_the_same_result(tmp_path):
    events, preds = random_events(11)
    rng = np.random.default_rng(0)
    shuffled = {k: None if v is None else [v[i] for i in rng.permutation(len(v))]
                for k, v in preds.items()}
    a = evaluate_fake(tmp_path / "a", events, shuffled)
    b = evaluate_fake(tmp_path / "b", events, {k: None if v is None else
                                               sorted(v, key=lambda r: -r[4])
                                               for k, v in preds.items()})
    for setting in SETTINGS:
        assert a[setting] == b[setting]
        np.testing.assert_array_equal(a["curves"][setting]["precision"],
                                      b["curves"][setting]["precision"])


def test_empty_images_and_missing_files(tmp_path):
    events = [("ev", [("a", [[0, 0, 9, 9]], all_kept(1)),
                      ("b", [], all_kept(0)),             # no faces: FPs there are free
                      ("c", [[0, 0, 9, 9]], all_kept(1)),  # count 0
                      ("d", [[0, 0, 9, 9]], all_kept(1)),  # empty file
                      ("e", [[0, 0, 9, 9]], all_kept(1))])]  # missing file
    preds = {("ev", "a"): [[0, 0, 9, 9, 0.9]], ("ev", "b"): [[0, 0, 9, 9, 0.95]] * 4,
             ("ev", "c"): [], ("ev", "d"): []}
    write_fake_gt(tmp_path / "gt", events)
    write_pred_files(tmp_path / "pred", events, preds)
    (tmp_path / "pred" / "ev" / "d.txt").write_text("")
    with pytest.warns(UserWarning, match="1 of 5 images have no prediction file"):
        result = evaluate_widerface(tmp_path / "gt", tmp_path / "pred")
    curve = result["curves"]["hard"]
    assert curve["recall"][-1] == 0.25 and curve["precision"][-1] == 1.0
    assert result["hard"] == pytest.approx(0.25)


def test_malformed_files_name_file_and_line(tmp_path):
    path = tmp_path / "x.txt"
    for text, match in [("x.jpg\n2\n1 2 3 4 0.5\n1 2 3 0.5\n", r"x\.txt:4: "),
                        ("x.jpg\n3\n1 2 3 4 0.5\n1 2 3 4 0.5\n",
                         r"x\.txt:5: the file announces 3 boxes"),
                        ("x.jpg\nthree\n", r"x\.txt:2: expected a box count")]:
        assert_read_fails(read_widerface_pred_file, path, text, ValueError, match)
    # Lines after the announced count are ignored, as read_pred.m does.
    path.write_text("x.jpg\n1\n1\t2  3 4 0.5\nnot a box\n")
    np.testing.assert_array_equal(read_widerface_pred_file(path), [[1, 2, 3, 4, 0.5]])


def test_in_memory_api_and_length_check(tmp_path):
    events, preds = random_events(2)
    write_fake_gt(tmp_path / "gt", events)
    gt = load_widerface_gt(tmp_path / "gt")
    assert isinstance(gt, WiderGT)
    arrays = [np.array(preds.get((ev, name)) or [], dtype=float).reshape(-1, 5)
              for ev, name in zip(gt.events, gt.names)]
    in_memory = evaluate_widerface_boxes(gt, arrays)
    from_files = evaluate_fake(tmp_path / "f", events, preds)
    assert all(in_memory[s] == from_files[s] for s in SETTINGS)
    with pytest.raises(ValueError, match="prediction arrays"):
        evaluate_widerface_boxes(gt, arrays[:-1])


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def test_cli_json_plot_csv(tmp_path, capsys, shared_data):
    events, preds = random_events(3)
    write_fake_gt(tmp_path / "gt", events)
    write_pred_files(tmp_path / "pred", events, preds)
    argv = ["--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred"), "--json",
            "--plot", str(tmp_path / "pr.png"), "--csv", str(tmp_path / "pr"),
            "--official-curves", str(shared_data / "official_pr_curves" / "widerface_val")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert eval_widerface.main(argv) == 0
        expected = evaluate_widerface(tmp_path / "gt", tmp_path / "pred")
    out = json.loads(capsys.readouterr().out)
    assert out == {s: expected[s] for s in SETTINGS}
    assert (tmp_path / "pr.png").stat().st_size > 0
    for setting in SETTINGS:
        assert len((tmp_path / f"pr_{setting}.csv").read_text().splitlines()) == 1001
