"""Ignore rows (label -1) in the DSFD multibox loss: their anchors are neither positives nor
mined negatives; without them nothing changes."""
import pytest
import torch

from models.dsfd.anchors import make_anchors, vgg_feature_sizes
from layers.box_utils import center_to_corners
from models.dsfd.loss import (IGNORE_LABEL, MultiBoxLoss, ProgressiveAnchorLoss,
                              match_anchors, pad_targets)
from data.config import default_config
from models.dsfd.net import DSFDOutput

STEPS = [4, 8, 16, 32, 64, 128]
SIZES1 = [8, 16, 32, 64, 128, 256]
SIZE = 256
FS = vgg_feature_sizes(SIZE, SIZE)
PRIORS = make_anchors((SIZE, SIZE), FS, STEPS, SIZES1)
P = len(PRIORS)
LEVEL1 = FS[0][0] * FS[0][1]                          # first anchor of level 1 (32x32, 16 px)


def anchor_box(row, col, label, shift=0.0):
    """The box of level-1 anchor (row, col), optionally shifted right by ``shift`` pixels."""
    k = LEVEL1 + row * FS[1][1] + col
    box = center_to_corners(PRIORS[k:k + 1]) + torch.tensor([shift, 0, shift, 0]) / SIZE
    return torch.cat([box, torch.full((1, 1), float(label))], 1), k


def matched(rows):
    truths, valid = pad_targets([rows], "cpu")
    return match_anchors(truths[..., :4], valid, PRIORS, FS, 0.35)[1][0]


def logits(seed, batch=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, P, 4, generator=g), torch.randn(batch, P, 2, generator=g)


def test_no_ignore_rows_is_the_plain_loss_and_an_ignored_anchor_changes_it():
    face, _ = anchor_box(5, 5, 1)
    far, k = anchor_box(20, 25, 1)
    loc, conf = logits(0)
    conf[0, k] = torch.tensor([-5.0, 5.0])            # looks like a face: a hard negative
    loss = MultiBoxLoss()
    as_face = loss(loc, conf, PRIORS, [torch.cat([face, far])], FS)
    as_background = loss(loc, conf, PRIORS, [face], FS)
    ignored = loss(loc, conf, PRIORS, [torch.cat([face, anchor_box(20, 25, IGNORE_LABEL)[0]])],
                   FS)
    assert not torch.allclose(ignored[1], as_background[1])
    assert not torch.allclose(ignored[1], as_face[1])
    # the face alone gives the localisation loss in both cases (one positive each time)
    torch.testing.assert_close(ignored[0], as_background[0], rtol=0, atol=0)


@pytest.mark.parametrize("seed", range(3))
def test_loss_equals_the_loss_with_the_ignored_anchors_conf_masked_out(seed):
    face, _ = anchor_box(5, 5, 1)
    ign, _ = anchor_box(20, 25, IGNORE_LABEL)
    region = matched(torch.cat([ign[:, :4], torch.ones(1, 1)], 1))     # its anchors as a face
    assert region.sum() >= 1
    loc, conf = logits(seed)
    conf[0, region] = torch.tensor([-5.0, 5.0])
    loss = MultiBoxLoss()
    with_ignore = loss(loc, conf, PRIORS, [torch.cat([face, ign])], FS)
    # masking out = a confident background there (loss ~1e-26, never among the hardest)
    masked = conf.clone()
    masked[0, region] = torch.tensor([30.0, -30.0])
    reference = loss(loc, masked, PRIORS, [face], FS)
    torch.testing.assert_close(with_ignore[0], reference[0], rtol=0, atol=0)
    torch.testing.assert_close(with_ignore[1], reference[1], rtol=1e-6, atol=0)


def test_ignored_anchors_get_no_gradient_and_faces_do():
    face, kf = anchor_box(5, 5, 1)
    ign, ki = anchor_box(20, 25, IGNORE_LABEL)
    loc, conf = logits(3)
    conf[0, ki] = torch.tensor([-5.0, 5.0])
    loc.requires_grad_(True)
    conf.requires_grad_(True)
    loss_l, loss_c = MultiBoxLoss()(loc, conf, PRIORS, [torch.cat([face, ign])], FS)
    (loss_l + loss_c).backward()
    assert conf.grad[0, ki].abs().sum() == 0 and loc.grad[0, ki].abs().sum() == 0
    assert conf.grad[0, kf].abs().sum() > 0
    # the same anchor as background is a mined negative: it gets a gradient
    conf.grad = None
    MultiBoxLoss()(loc, conf, PRIORS, [face], FS)[1].backward()
    assert conf.grad[0, ki].abs().sum() > 0


def test_a_face_keeps_its_anchor_against_an_ignore_box_sharing_it():
    face, k = anchor_box(5, 5, 1)
    ign, _ = anchor_box(5, 5, IGNORE_LABEL, shift=2.0)     # best anchor: the face's too
    loc, conf = logits(4)
    conf.requires_grad_(True)
    loss = MultiBoxLoss()
    for rows in ([face, ign], [ign, face]):                   # whatever the annotation order
        conf.grad = None
        loss_l, loss_c = loss(loc, conf, PRIORS, [torch.cat(rows)], FS)
        (loss_l + loss_c).backward()
        assert conf.grad[0, k, 1] < 0                         # pushed towards "face"
    a = loss(loc, conf, PRIORS, [torch.cat([face, ign])], FS)
    b = loss(loc, conf, PRIORS, [torch.cat([ign, face])], FS)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_an_image_with_only_ignore_rows_has_no_positive_and_no_mined_ignored_anchor():
    ign, k = anchor_box(10, 10, IGNORE_LABEL)
    face, _ = anchor_box(3, 3, 1)
    loc, conf = logits(5, batch=2)
    conf.requires_grad_(True)
    loss_l, loss_c = MultiBoxLoss()(loc, conf, PRIORS, [ign, face], FS)
    (loss_l + loss_c).backward()
    assert torch.isfinite(loss_l) and torch.isfinite(loss_c)
    assert conf.grad[0, k].abs().sum() == 0
    # image 0 has no positive, so no mined negative either: no gradient at all there
    assert conf.grad[0].abs().sum() == 0 and conf.grad[1].abs().sum() > 0


def test_mining_never_picks_ignored_anchors_even_when_negatives_run_short():
    loss = MultiBoxLoss(neg_pos_ratio=3)
    conf = torch.randn(1, 10, 2)
    conf_t = torch.zeros(1, 10, dtype=torch.long)
    pos = torch.zeros(1, 10, dtype=torch.bool)
    pos[0, :3] = True
    conf_t[pos] = 1
    ignore = torch.zeros_like(pos)
    ignore[0, 3:6] = True
    neg = loss._hard_negatives(conf, conf_t, pos, pos.sum(1), ignore)
    assert not (neg & ignore).any()
    assert neg[0, 6:].all()                                   # the 4 true negatives, all


def test_progressive_anchor_loss_with_ignore_rows():
    cfg = default_config()
    pal = ProgressiveAnchorLoss(cfg.ANCHOR)
    fs = vgg_feature_sizes(SIZE, SIZE)
    P2 = sum(h * w for h, w in fs)
    g = torch.Generator().manual_seed(0)
    out = DSFDOutput(torch.randn(2, P2, 4, generator=g), torch.randn(2, P2, 2, generator=g),
                     torch.randn(2, P2, 4, generator=g), torch.randn(2, P2, 2, generator=g), fs)
    targets = [torch.tensor([[0.1, 0.1, 0.3, 0.3, 1.0], [0.5, 0.5, 0.7, 0.8, -1.0]]),
               torch.tensor([[0.2, 0.2, 0.4, 0.5, 1.0]])]
    losses = pal(out, targets, (SIZE, SIZE))
    assert set(losses) == {"loc_pal1", "conf_pal1", "loc_pal2", "conf_pal2"}
    assert all(torch.isfinite(v) for v in losses.values())
    # the ignore box is far from the faces: the positives, hence the localisation terms, are
    # those of the batch without it
    plain = pal(out, [targets[0][:1], targets[1]], (SIZE, SIZE))
    for key in ("loc_pal1", "loc_pal2"):
        torch.testing.assert_close(losses[key], plain[key], rtol=0, atol=0)
