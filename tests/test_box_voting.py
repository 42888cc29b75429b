"""Vectorised box voting against a literal port of the reference's loop."""
import numpy as np
import pytest

from layers.box_voting import box_vote
from tests.reference_ports import bbox_vote


def clustered(rng, n, max_side):
    centres = rng.uniform(0, 500, (max(n // 5, 1), 2))
    xy = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 6, (n, 2))
    wh = rng.uniform(5, max_side, (n, 2))
    return np.concatenate([xy, xy + wh, rng.uniform(0.05, 1, (n, 1))], 1)


@pytest.mark.parametrize("seed", range(10))
def test_equals_reference(seed):
    rng = np.random.default_rng(seed)
    dets = clustered(rng, int(rng.integers(1, 500)), 60 if seed % 2 else 400)
    if seed % 3 == 0:                                   # many exactly equal scores
        dets[:, 4] = np.round(dets[:, 4], 1)
    ours, ref = box_vote(dets), bbox_vote(dets.copy())
    assert ours.shape == ref.shape
    assert np.allclose(ours, ref, rtol=1e-12, atol=1e-9)


def test_singletons_dropped_weighted_mean_and_max_score():
    dets = np.array([[0, 0, 10, 10, 0.9], [1, 1, 11, 11, 0.3], [100, 100, 110, 110, 0.8]])
    out = box_vote(dets)
    assert out.shape == (1, 5) and out[0, 4] == 0.9
    assert np.allclose(out[0, :4], (0.9 * dets[0, :4] + 0.3 * dets[1, :4]) / 1.2)


def test_empty_and_top_k():
    assert box_vote(np.zeros((0, 5))).shape == (0, 5)
    rng = np.random.default_rng(0)
    pairs = np.repeat(clustered(rng, 50, 20), 2, axis=0)        # every box twice: 50 groups+
    assert len(box_vote(pairs, top_k=10)) == 10
