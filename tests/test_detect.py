"""Test-time post-processing against a literal port of the reference's Detect."""
import pytest
import torch

from models.dsfd.anchors import make_anchors, vgg_feature_sizes
from models.dsfd.postprocess import postprocess
from tests.reference_ports import detect as reference_detect

SIZES2 = [16, 32, 64, 128, 256, 512]


def outputs(seed, batch, hw, face_bias=0.0):
    gen = torch.Generator().manual_seed(seed)
    fs = vgg_feature_sizes(*hw)
    priors = make_anchors(hw, fs, [4, 8, 16, 32, 64, 128], SIZES2)
    P = len(priors)
    loc = torch.randn(batch, P, 4, generator=gen) * 0.5
    conf = torch.randn(batch, P, 2, generator=gen) * 2
    conf[..., 1] += face_bias
    return loc, conf, priors


@pytest.mark.parametrize("seed, bias, top_k", [(0, -4.0, 750), (1, -2.0, 750), (2, -3.0, 20)])
def test_matches_reference_detect(seed, bias, top_k):
    loc, conf, priors = outputs(seed, 3, (128, 192), bias)
    ours = postprocess(loc, conf, priors, top_k=top_k, nms_top_k=300)
    ref = reference_detect(loc, conf, priors, top_k=top_k, nms_top_k=300)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        # same set of boxes; order may differ only among equal scores
        assert torch.allclose(a[a[:, 4].argsort()], b[b[:, 4].argsort()], atol=1e-6)
        assert (a[1:, 4] <= a[:-1, 4]).all()


def test_thresholds_and_limits():
    loc, conf, priors = outputs(3, 2, (128, 128), -1.0)
    dets = postprocess(loc, conf, priors, conf_thresh=0.05, nms_thresh=0.3, nms_top_k=5000,
                       top_k=7)
    for d in dets:
        assert len(d) == 7 and (d[:, 4] > 0.05).all()
        x1, y1, x2, y2 = d[:, :4].unbind(1)
        inter_w = (torch.min(x2[:, None], x2) - torch.max(x1[:, None], x1)).clamp(min=0)
        inter_h = (torch.min(y2[:, None], y2) - torch.max(y1[:, None], y1)).clamp(min=0)
        area = (x2 - x1) * (y2 - y1)
        iou = inter_w * inter_h / (area[:, None] + area - inter_w * inter_h)
        assert (iou.fill_diagonal_(0) <= 0.3 + 1e-6).all()


def test_nothing_above_threshold_gives_empty_results():
    loc, conf, priors = outputs(4, 2, (64, 64))
    conf[..., 1] = -20
    dets = postprocess(loc, conf, priors)
    assert [d.shape for d in dets] == [(0, 5), (0, 5)]


def test_images_in_a_batch_are_independent():
    loc, conf, priors = outputs(5, 3, (96, 96), -3.0)
    batch = postprocess(loc, conf, priors)
    for b in range(3):
        single = postprocess(loc[b:b + 1], conf[b:b + 1], priors)[0]
        assert torch.equal(batch[b], single)
