"""The batched multibox loss against a literal port of the reference, and hand-made cases."""
import pytest
import torch

from models.dsfd.anchors import make_anchors, vgg_feature_sizes
from layers.box_utils import center_to_corners, decode, encode
from models.dsfd.loss import MultiBoxLoss, ProgressiveAnchorLoss, match_anchors, pad_targets
from data.config import default_config
from models.dsfd.net import DSFDOutput
from tests.reference_ports import match_ssd, multibox_loss as reference_loss

STEPS = [4, 8, 16, 32, 64, 128]
SIZES = {1: [8, 16, 32, 64, 128, 256], 2: [16, 32, 64, 128, 256, 512]}


def dyadic_faces(n, gen):
    """Faces on a 1/1024 grid (exactly representable, so exact ties stay ties)."""
    xy = torch.randint(-20, 900, (n, 2), generator=gen).float()
    wh = torch.randint(2, 400, (n, 2), generator=gen).float()
    x2 = (xy + wh).clamp(max=1030)
    return torch.cat([xy / 1024, x2 / 1024, torch.ones(n, 1)], 1)


@pytest.mark.parametrize("seed", range(12))
def test_batched_loss_equals_reference_port(seed):
    gen = torch.Generator().manual_seed(seed)
    size = 512 if seed % 3 == 0 else 256
    fs = vgg_feature_sizes(size, size)
    priors = make_anchors((size, size), fs, STEPS, SIZES[1 + seed % 2])
    counts = [3, 0, 17, 1] if seed % 2 else [30, 5]
    targets = [dyadic_faces(n, gen) for n in counts]
    B, P = len(targets), len(priors)
    loc, conf = torch.randn(B, P, 4, generator=gen), torch.randn(B, P, 2, generator=gen)
    loss_l, loss_c = MultiBoxLoss()(loc, conf, priors, targets, fs)
    ref_l, ref_c, ref_conf_t, _ = reference_loss(loc, conf, priors, targets)
    assert torch.allclose(loss_l, ref_l, rtol=1e-6) and torch.allclose(loss_c, ref_c, rtol=1e-6)
    truths, valid = pad_targets(targets, "cpu")
    best_idx, pos = match_anchors(truths[..., :4], valid, priors, fs, 0.35)
    assert torch.equal(pos, ref_conf_t > 0)
    for b, t in enumerate(targets):
        if len(t):
            ref_idx, _ = match_ssd(0.35, t[:, :4], priors, t[:, 4])
            assert torch.equal(best_idx[b][pos[b]], ref_idx[pos[b]])


def test_face_exactly_on_an_anchor_has_zero_localisation_loss():
    fs = vgg_feature_sizes(256, 256)
    priors = make_anchors((256, 256), fs, STEPS, SIZES[2])
    k = 64 * 10 + 20                                   # level 0, row 10, column 20
    face = center_to_corners(priors[k:k + 1])
    targets = [torch.cat([face, torch.ones(1, 1)], 1)]
    truths, valid = pad_targets(targets, "cpu")
    _, pos = match_anchors(truths[..., :4], valid, priors, fs, 0.35)
    assert pos[0, k] and torch.allclose(encode(face, priors[k:k + 1], (0.1, 0.2)),
                                        torch.zeros(1, 4), atol=1e-6)
    loc = torch.zeros(1, len(priors), 4)               # predicts "no offset" everywhere
    loss_l, _ = MultiBoxLoss()(loc, torch.zeros(1, len(priors), 2), priors, targets, fs)
    # every positive is the exact anchor or a same-size neighbour; only the anchor itself
    # contributes zero, so check the loss equals the neighbours' part
    assert pos.sum() >= 1
    only = pos.clone()
    only[0, k] = False
    if only.any():
        t = encode(face.expand(int(only.sum()), 4), priors[only[0]], (0.1, 0.2))
        expected = torch.nn.functional.smooth_l1_loss(torch.zeros_like(t), t, reduction="sum")
        assert torch.allclose(loss_l * pos.sum(), expected, atol=1e-5)
    else:
        assert loss_l == 0


def test_lone_exact_face_gives_exactly_zero_loc_loss():
    # first-shot anchors are twice their stride, so a neighbour's IoU is 1/3 < 0.35: the face's
    # own anchor is the only positive
    fs = vgg_feature_sizes(512, 512)
    priors = make_anchors((512, 512), fs, STEPS, SIZES[1])
    k = 128 * 128 + 64 * 64 + 32 * 7 + 9               # level 2 (32x32), row 7, column 9
    face = center_to_corners(priors[k:k + 1])
    targets = [torch.cat([face, torch.ones(1, 1)], 1)]
    truths, valid = pad_targets(targets, "cpu")
    _, pos = match_anchors(truths[..., :4], valid, priors, fs, 0.35)
    assert pos[0].nonzero().flatten().tolist() == [k]
    loss_l, _ = MultiBoxLoss()(torch.zeros(1, len(priors), 4), torch.zeros(1, len(priors), 2),
                               priors, targets, fs)
    assert loss_l.item() == pytest.approx(0.0, abs=1e-6)


def test_negatives_are_three_times_positives_per_image():
    gen = torch.Generator().manual_seed(0)
    fs = vgg_feature_sizes(256, 256)
    priors = make_anchors((256, 256), fs, STEPS, SIZES[1])
    targets = [dyadic_faces(4, gen), dyadic_faces(9, gen), torch.zeros(0, 5)]
    crit = MultiBoxLoss()
    truths, valid = pad_targets(targets, "cpu")
    _, pos = match_anchors(truths[..., :4], valid, priors, fs, 0.35)
    conf = torch.randn(3, len(priors), 2, generator=gen)
    conf_t = pos.long()
    neg = crit._hard_negatives(conf, conf_t, pos, pos.sum(1))
    assert torch.equal(neg.sum(1), 3 * pos.sum(1))
    assert not (neg & pos).any() and neg[2].sum() == 0
    # they are the highest-loss background anchors (for target 0, loss = softplus(c1 - c0))
    score = torch.nn.functional.softplus(conf[..., 1] - conf[..., 0]).masked_fill(pos, -1)
    for b in range(2):
        chosen, rest = score[b][neg[b]], score[b][~neg[b] & ~pos[b]]
        assert chosen.min() >= rest.max()


def test_no_face_in_the_batch_gives_zero_losses():
    fs = vgg_feature_sizes(128, 128)
    priors = make_anchors((128, 128), fs, STEPS, SIZES[1])
    loss_l, loss_c = MultiBoxLoss()(torch.randn(2, len(priors), 4), torch.randn(2, len(priors), 2),
                                    priors, [torch.zeros(0, 5), torch.zeros(0, 5)], fs)
    assert loss_l == 0 and loss_c == 0


def test_loss_is_differentiable_and_finite():
    gen = torch.Generator().manual_seed(3)
    fs = vgg_feature_sizes(128, 128)
    priors = make_anchors((128, 128), fs, STEPS, SIZES[2])
    loc = torch.randn(2, len(priors), 4, requires_grad=True)
    conf = torch.randn(2, len(priors), 2, requires_grad=True)
    loss_l, loss_c = MultiBoxLoss()(loc, conf, priors, [dyadic_faces(3, gen)] * 2, fs)
    (loss_l + loss_c).backward()
    assert torch.isfinite(loc.grad).all() and conf.grad.abs().sum() > 0


def test_progressive_anchor_loss_sums_both_shots():
    gen = torch.Generator().manual_seed(4)
    cfg = default_config()
    fs = vgg_feature_sizes(128, 128)
    P = sum(h * w for h, w in fs)
    out = DSFDOutput(*(torch.randn(2, P, c, generator=gen) for c in (4, 2, 4, 2)), fs)
    targets = [dyadic_faces(2, gen), dyadic_faces(5, gen)]
    losses = ProgressiveAnchorLoss(cfg.ANCHOR)(out, targets, (128, 128))
    assert sorted(losses) == ["conf_pal1", "conf_pal2", "loc_pal1", "loc_pal2"]
    for shot, sizes in (("pal1", SIZES[1]), ("pal2", SIZES[2])):
        priors = make_anchors((128, 128), fs, STEPS, sizes)
        loc, conf = (out.loc_pal1, out.conf_pal1) if shot == "pal1" else (out.loc_pal2, out.conf_pal2)
        ref_l, ref_c, _, _ = reference_loss(loc, conf, priors, targets)
        assert torch.allclose(losses[f"loc_{shot}"], ref_l, rtol=1e-6)
        assert torch.allclose(losses[f"conf_{shot}"], ref_c, rtol=1e-6)


def test_encode_decode_round_trip():
    gen = torch.Generator().manual_seed(5)
    priors = torch.rand(50, 4, generator=gen) * 0.5 + 0.1
    boxes = center_to_corners(torch.rand(50, 4, generator=gen) * 0.5 + 0.1)
    assert torch.allclose(decode(encode(boxes, priors, (0.1, 0.2)), priors, (0.1, 0.2)), boxes,
                          atol=1e-6)
