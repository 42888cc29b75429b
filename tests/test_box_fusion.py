"""Weighted box fusion, cross-teacher NMS and the agreement filter on hand-made cases."""
import numpy as np
import pytest

from layers.box_fusion import (cross_teacher_nms, filter_by_agreement, fuse_teachers,
                               weighted_box_fusion)


def det(*rows):
    return np.array(rows, dtype=np.float64).reshape(-1, 5)


def test_two_identical_boxes_fuse_to_the_same_box_with_the_mean_score():
    a = det([10, 20, 50, 80, 0.9])
    b = det([10, 20, 50, 80, 0.7])
    fused = weighted_box_fusion([a, b])
    assert fused.dets.shape == (1, 5) and fused.support.tolist() == [2]
    np.testing.assert_allclose(fused.dets[0, :4], [10, 20, 50, 80])
    # mean(0.9, 0.7) * min(2, 2) / 2
    assert fused.dets[0, 4] == pytest.approx(0.8)


def test_a_box_of_one_teacher_in_two_keeps_half_its_score():
    fused = weighted_box_fusion([det([10, 20, 50, 80, 0.9]), det()])
    assert fused.support.tolist() == [1]
    assert fused.dets[0, 4] == pytest.approx(0.45)
    np.testing.assert_allclose(fused.dets[0, :4], [10, 20, 50, 80])


def test_two_far_boxes_stay_two():
    fused = weighted_box_fusion([det([0, 0, 10, 10, 0.9]), det([100, 100, 120, 120, 0.8])])
    assert len(fused.dets) == 2 and fused.support.tolist() == [1, 1]
    np.testing.assert_allclose(fused.dets[:, :4], [[0, 0, 10, 10], [100, 100, 120, 120]])
    np.testing.assert_allclose(fused.dets[:, 4], [0.45, 0.4])       # sorted by score


def test_fused_corners_are_the_score_weighted_mean():
    a = det([0, 0, 100, 100, 0.9])
    b = det([10, 0, 110, 100, 0.3])                   # IoU 90 / 110 = 0.82
    fused = weighted_box_fusion([a, b])
    x1 = (0.9 * 0 + 0.3 * 10) / 1.2
    np.testing.assert_allclose(fused.dets[0, :4], [x1, 0, x1 + 100, 100])
    assert fused.dets[0, 4] == pytest.approx(0.6)


def test_teacher_weights_shift_the_fused_coordinate_by_the_expected_amount():
    a = det([0, 0, 100, 100, 0.8])
    b = det([10, 0, 110, 100, 0.8])
    equal = weighted_box_fusion([a, b])
    assert equal.dets[0, 0] == pytest.approx(5.0)
    # weights 3 : 1 -> x1 = (3 * 0.8 * 0 + 1 * 0.8 * 10) / (4 * 0.8) = 2.5
    weighted = weighted_box_fusion([a, b], weights=[3, 1])
    assert weighted.dets[0, 0] == pytest.approx(2.5)
    assert weighted.dets[0, 2] == pytest.approx(102.5)
    # score: mean(c) * min(T, N) / sum(w) = ((2.4 + 0.8) / 2) * 2 / 4 = 0.8
    assert weighted.dets[0, 4] == pytest.approx(0.8)
    # alone, the heavier teacher's box keeps 3/4 of its score, the lighter one's 1/4
    far = det([300, 300, 340, 340, 0.8])
    alone = weighted_box_fusion([det([0, 0, 100, 100, 0.8]), far], weights=[3, 1])
    np.testing.assert_allclose(alone.dets[:, 4], [0.6, 0.2])


def test_a_box_joins_the_cluster_of_the_current_fused_box():
    # b overlaps a by IoU 0.6 (> 0.55) and joins; the fused box moves towards b, and c, which
    # overlaps a only by 0.5 but the fused box by more, joins as well
    a = det([0, 0, 100, 100, 0.9])
    b = det([25, 0, 125, 100, 0.9])                   # IoU(a, b) = 75 / 125 = 0.6
    c = det([33.5, 0, 133.5, 100, 0.5])               # IoU(a, c) = 0.498, IoU(ab, c) = 0.65
    fused = weighted_box_fusion([a, b, c])
    assert len(fused.dets) == 1 and fused.support.tolist() == [3]
    expected = (0.9 * 0 + 0.9 * 25 + 0.5 * 33.5) / 2.3
    assert fused.dets[0, 0] == pytest.approx(expected)
    assert fused.dets[0, 4] == pytest.approx((0.9 + 0.9 + 0.5) / 3)
    # the IoU threshold is strict
    assert len(weighted_box_fusion([a, b], iou_thr=0.6).dets) == 2


def test_several_boxes_of_one_teacher_count_it_once():
    # e.g. two test-time passes of the same teacher in one cluster: it enters with its mean
    a = det([0, 0, 100, 100, 0.9], [2, 0, 102, 100, 0.7])
    fused = weighted_box_fusion([a, det()])
    assert fused.support.tolist() == [1]
    assert fused.dets[0, 4] == pytest.approx(0.8 * 1 / 2)
    # with the other teacher agreeing: (mean(0.9, 0.7) + 0.6) / 2, never above 1
    fused = weighted_box_fusion([a, det([1, 0, 101, 100, 0.6])])
    assert fused.support.tolist() == [2] and fused.dets[0, 4] == pytest.approx(0.7)
    ones = det([0, 0, 100, 100, 1.0], [2, 0, 102, 100, 1.0])
    heavy = weighted_box_fusion([ones, det([1, 0, 101, 100, 1.0])], weights=[3, 1])
    assert heavy.dets[0, 4] == pytest.approx(1.0)


def test_skip_threshold_and_zero_scores_leave_boxes_out():
    a = det([0, 0, 10, 10, 0.9], [50, 50, 60, 60, 0.05], [80, 80, 90, 90, 0.0])
    fused = weighted_box_fusion([a], skip_thr=0.1)
    assert len(fused.dets) == 1
    fused = weighted_box_fusion([a])
    assert len(fused.dets) == 2                        # the score-0 box cannot be weighted


def test_landmarks_are_fused_the_same_way_and_missing_ones_ignored():
    lm_a = np.arange(10, dtype=np.float64)[None]
    lm_b = lm_a + 10
    a = det([0, 0, 100, 100, 0.9])
    b = det([10, 0, 110, 100, 0.3])
    c = det([500, 500, 540, 540, 0.5])
    fused = weighted_box_fusion([a, b, c], landmarks=[lm_a, lm_b, None])
    assert fused.dets.shape == (2, 15)
    np.testing.assert_allclose(fused.dets[0, 5:], (0.9 * lm_a[0] + 0.3 * lm_b[0]) / 1.2)
    np.testing.assert_allclose(fused.dets[1, 5:], -1)           # a teacher without landmarks
    # the same through [n, 15] detections, and a DSFD-like teacher in the same cluster
    ab = weighted_box_fusion([np.concatenate([a, lm_a], 1), b])
    np.testing.assert_allclose(ab.dets[0, 5:], lm_a[0])
    with pytest.raises(ValueError, match="landmark"):
        weighted_box_fusion([np.concatenate([a, lm_a], 1), np.concatenate([b, lm_a[:, :4]], 1)])


def test_no_boxes_give_an_empty_result_of_the_right_width():
    assert weighted_box_fusion([det(), det()]).dets.shape == (0, 5)
    assert cross_teacher_nms([det(), np.zeros((0, 15))]).dets.shape == (0, 15)
    with pytest.raises(ValueError, match="weights"):
        weighted_box_fusion([det(), det()], weights=[1])


def test_cross_teacher_nms_keeps_the_best_box_and_counts_its_teachers():
    a = det([0, 0, 100, 100, 0.6], [300, 300, 340, 340, 0.9])
    b = det([5, 0, 105, 100, 0.8])
    fused = cross_teacher_nms([a, b])
    np.testing.assert_allclose(fused.dets, [[300, 300, 340, 340, 0.9], [5, 0, 105, 100, 0.8]])
    assert fused.support.tolist() == [1, 2]
    # weights re-rank: teacher a trusted 4x more wins the cluster; scores scaled by w / max(w)
    fused = cross_teacher_nms([a, b], weights=[4, 1])
    np.testing.assert_allclose(fused.dets[:, :4], [[300, 300, 340, 340], [0, 0, 100, 100]])
    np.testing.assert_allclose(fused.dets[:, 4], [0.9, 0.6])
    assert fused.support.tolist() == [1, 2]


def test_nms_landmarks_come_from_the_best_member_that_has_them():
    a = det([0, 0, 100, 100, 0.9])                    # no landmarks (a DSFD teacher)
    b = np.concatenate([det([5, 0, 105, 100, 0.5]), np.arange(10.0)[None]], 1)
    fused = cross_teacher_nms([a, b])
    assert fused.dets.shape == (1, 15)
    np.testing.assert_allclose(fused.dets[0, :5], [0, 0, 100, 100, 0.9])
    np.testing.assert_allclose(fused.dets[0, 5:], np.arange(10.0))


def test_agreement_filter_keeps_boxes_of_enough_teachers():
    a = det([0, 0, 100, 100, 0.9], [200, 200, 240, 240, 0.8])
    b = det([2, 0, 102, 100, 0.9])
    c = det([1, 1, 101, 101, 0.9], [600, 600, 640, 640, 0.9])
    fused = weighted_box_fusion([a, b, c])
    assert sorted(fused.support.tolist()) == [1, 1, 3]
    assert filter_by_agreement(fused, 2).support.tolist() == [3]
    assert len(filter_by_agreement(fused, 1).dets) == 3
    assert len(filter_by_agreement(fused, 4).dets) == 0
    both = fuse_teachers([a, b, c], "nms", min_agree=2, score_thr=0.5)
    assert both.support.tolist() == [3] and both.dets[0, 4] == pytest.approx(0.9)
    assert len(fuse_teachers([a, b, c], "wbf", score_thr=0.5).dets) == 1
    with pytest.raises(ValueError, match="fusion method"):
        fuse_teachers([a], "soft")


def test_wbf_is_order_independent_for_distinct_scores_and_handles_many_boxes():
    rng = np.random.default_rng(0)
    teachers = []
    for _ in range(3):
        xy = rng.uniform(0, 1000, (200, 2))
        wh = rng.uniform(5, 60, (200, 2))
        teachers.append(np.concatenate([xy, xy + wh, rng.uniform(0.05, 1, (200, 1))], 1))
    fused = weighted_box_fusion(teachers, iou_thr=0.5)
    again = weighted_box_fusion([t[::-1] for t in teachers], iou_thr=0.5)
    np.testing.assert_allclose(fused.dets, again.dets)
    assert (np.diff(fused.dets[:, 4]) <= 0).all()
    assert ((fused.support >= 1) & (fused.support <= 3)).all()
    # a fused box's score never exceeds the highest member score
    assert fused.dets[:, 4].max() <= max(t[:, 4].max() for t in teachers) + 1e-12


def _iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


def _wbf_loop(teachers, weights, thr):
    """The algorithm as the paper states it, one box and one cluster at a time."""
    boxes = [(s * weights[t], t, b[:4]) for t, d in enumerate(teachers) for b in d
             for s in [b[4]]]
    boxes.sort(key=lambda r: -r[0])
    clusters, fused = [], []
    for c, t, b in boxes:
        ious = [_iou(b, f) for f in fused]
        if ious and max(ious) > thr:
            j = int(np.argmax(ious))
            clusters[j].append((c, t, b))
        else:
            clusters.append([(c, t, b)])
            fused.append(None)
            j = len(clusters) - 1
        cs = np.array([m[0] for m in clusters[j]])
        fused[j] = (cs[:, None] * np.array([m[2] for m in clusters[j]])).sum(0) / cs.sum()
    out = []
    for f, members in zip(fused, clusters):
        ts = {m[1] for m in members}
        score = sum(np.mean([m[0] for m in members if m[1] == t]) for t in ts) / sum(weights)
        if len(ts) == len(members):             # one box per teacher: the paper's formula
            paper = np.mean([m[0] for m in members]) * min(len(members), len(teachers))
            assert score == pytest.approx(paper / sum(weights))
        out.append([*f, score, len(ts)])
    out = np.array(out)
    return out[np.argsort(-out[:, 4], kind="stable")]


def _random_teachers(seed, n=60):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 400, (n // 2, 2))
    teachers = []
    for _ in range(3):
        pick = rng.choice(len(centres), n // 3, replace=False)
        c = centres[pick] + rng.normal(0, 3, (len(pick), 2))
        wh = rng.uniform(20, 40, (len(pick), 2))
        scores = rng.uniform(0.1, 1, (len(pick), 1))
        teachers.append(np.concatenate([c - wh / 2, c + wh / 2, scores], 1))
    return teachers


@pytest.mark.parametrize("seed", range(4))
def test_wbf_equals_a_literal_loop_on_random_overlapping_teachers(seed):
    teachers = _random_teachers(seed)
    weights = [1.0, 2.0, 0.5]
    ref = _wbf_loop(teachers, weights, 0.55)
    fused = weighted_box_fusion(teachers, weights=weights, iou_thr=0.55)
    np.testing.assert_allclose(fused.dets, ref[:, :5], rtol=1e-12, atol=1e-9)
    assert fused.support.tolist() == ref[:, 5].astype(int).tolist()


@pytest.mark.parametrize("seed", range(4))
def test_cross_teacher_nms_equals_a_greedy_loop(seed):
    teachers = _random_teachers(seed)
    rows = sorted(((b[4], t, b) for t, d in enumerate(teachers) for b in d), key=lambda r: -r[0])
    kept, members = [], []
    for s, t, b in rows:
        for k, (ks, kt, kb) in enumerate(kept):
            if _iou(kb, b) > 0.55:
                members[k].add(t)
                break
        else:
            kept.append((s, t, b))
            members.append({t})
    fused = cross_teacher_nms(teachers, iou_thr=0.55)
    np.testing.assert_allclose(fused.dets, [r[2] for r in kept])
    assert fused.support.tolist() == [len(m) for m in members]
