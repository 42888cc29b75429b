"""The batched RetinaFace loss against a literal port of the reference's match + MultiBoxLoss
(biubug6/Pytorch_Retinaface utils/box_utils.py and layers/modules/multibox_loss.py: one image
at a time, dense IoU, the Python loop over faces, sort-based hard-negative mining), on random
batches with faces without landmarks, "hard" faces, duplicates and images without positives."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from models.retinaface.loss import RetinaFaceLoss, match, pad_targets
from models.retinaface.priors import encode, encode_landm, point_form, prior_boxes

MIN_SIZES, STEPS, VAR = [[16, 32], [64, 128], [256, 512]], [8, 16, 32], (0.1, 0.2)


# ---- the literal port (reference target layout: boxes, 10 landmarks, label +-1) -----------------

def _jaccard(a, b):
    A, B = a.size(0), b.size(0)
    max_xy = torch.min(a[:, 2:].unsqueeze(1).expand(A, B, 2), b[:, 2:].unsqueeze(0).expand(A, B, 2))
    min_xy = torch.max(a[:, :2].unsqueeze(1).expand(A, B, 2), b[:, :2].unsqueeze(0).expand(A, B, 2))
    inter = torch.clamp(max_xy - min_xy, min=0)
    inter = inter[:, :, 0] * inter[:, :, 1]
    area_a = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])).unsqueeze(1).expand_as(inter)
    area_b = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).unsqueeze(0).expand_as(inter)
    return inter / (area_a + area_b - inter)


def ref_match(threshold, truths, priors, variances, labels, landms, loc_t, conf_t, landm_t, idx):
    overlaps = _jaccard(truths, point_form(priors))
    best_prior_overlap, best_prior_idx = overlaps.max(1, keepdim=True)
    valid_gt_idx = best_prior_overlap[:, 0] >= 0.2
    best_prior_idx_filter = best_prior_idx[valid_gt_idx, :]
    if best_prior_idx_filter.shape[0] <= 0:
        loc_t[idx] = 0
        conf_t[idx] = 0
        return None
    best_truth_overlap, best_truth_idx = overlaps.max(0, keepdim=True)
    best_truth_idx.squeeze_(0)
    best_truth_overlap.squeeze_(0)
    best_prior_idx.squeeze_(1)
    best_prior_idx_filter.squeeze_(1)
    best_truth_overlap.index_fill_(0, best_prior_idx_filter, 2)
    for j in range(best_prior_idx.size(0)):
        best_truth_idx[best_prior_idx[j]] = j
    matches = truths[best_truth_idx]
    conf = labels[best_truth_idx]
    conf[best_truth_overlap < threshold] = 0
    loc_t[idx] = encode(matches, priors, variances)
    conf_t[idx] = conf
    landm_t[idx] = encode_landm(landms[best_truth_idx], priors, variances)
    return best_truth_idx


def ref_multibox_loss(loc_data, conf_data, landm_data, priors, targets, negpos_ratio=7):
    num, num_priors = loc_data.size(0), priors.size(0)
    loc_t = torch.zeros(num, num_priors, 4)
    landm_t = torch.zeros(num, num_priors, 10)
    conf_t = torch.zeros(num, num_priors, dtype=torch.long)
    faces = []
    for idx in range(num):
        faces.append(ref_match(0.35, targets[idx][:, :4], priors, VAR, targets[idx][:, -1],
                               targets[idx][:, 4:14], loc_t, conf_t, landm_t, idx))
    pos1 = conf_t > 0
    N1 = max(pos1.long().sum().float(), 1)
    pos_idx1 = pos1.unsqueeze(pos1.dim()).expand_as(landm_data)
    loss_landm = F.smooth_l1_loss(landm_data[pos_idx1].view(-1, 10), landm_t[pos_idx1].view(-1, 10),
                                  reduction="sum")
    pos = conf_t != 0
    labels = conf_t.clone()
    conf_t[pos] = 1
    pos_idx = pos.unsqueeze(pos.dim()).expand_as(loc_data)
    loss_l = F.smooth_l1_loss(loc_data[pos_idx].view(-1, 4), loc_t[pos_idx].view(-1, 4),
                              reduction="sum")
    batch_conf = conf_data.view(-1, 2)
    x_max = batch_conf.data.max()
    lse = torch.log(torch.sum(torch.exp(batch_conf - x_max), 1, keepdim=True)) + x_max
    loss_c = lse - batch_conf.gather(1, conf_t.view(-1, 1))
    loss_c[pos.view(-1, 1)] = 0
    loss_c = loss_c.view(num, -1)
    _, loss_idx = loss_c.sort(1, descending=True)
    _, idx_rank = loss_idx.sort(1)
    num_pos = pos.long().sum(1, keepdim=True)
    num_neg = torch.clamp(negpos_ratio * num_pos, max=pos.size(1) - 1)
    neg = idx_rank < num_neg.expand_as(idx_rank)
    pos_idx = pos.unsqueeze(2).expand_as(conf_data)
    neg_idx = neg.unsqueeze(2).expand_as(conf_data)
    conf_p = conf_data[(pos_idx + neg_idx).gt(0)].view(-1, 2)
    loss_c = F.cross_entropy(conf_p, conf_t[(pos + neg).gt(0)], reduction="sum")
    N = max(num_pos.data.sum().float(), 1)
    return 2.0 * loss_l / N, loss_c / N, loss_landm / N1, labels, faces


def to_reference(t):
    """Our [n, 15] (box, label 1, landmarks or -1) -> the reference's (box, landmarks, +-1)."""
    label = torch.where(t[:, 5] >= 0, 1.0, -1.0)
    return torch.cat([t[:, :4], t[:, 5:15], label[:, None]], 1)


# ---- random cases --------------------------------------------------------------------------------

def random_faces(g, n, image_size, tiny=False):
    h, w = image_size
    side = torch.rand(n, generator=g) * (1.5 if tiny else 260) + (0.5 if tiny else 4)
    aspect = torch.rand(n, generator=g) * 0.8 + 0.7
    bw, bh = side, side * aspect
    x1 = torch.rand(n, generator=g) * (w - bw * 0.5)
    y1 = torch.rand(n, generator=g) * (h - bh * 0.5)
    boxes = torch.stack([x1 / w, y1 / h, (x1 + bw) / w, (y1 + bh) / h], 1)
    span = boxes[:, None, 2:] - boxes[:, None, :2]
    pts = boxes[:, None, :2] + torch.rand(n, 5, 2, generator=g) * span
    landms = pts.flatten(1)
    landms[torch.rand(n, generator=g) < 0.3] = -1.0                   # faces without landmarks
    return torch.cat([boxes, torch.ones(n, 1), landms], 1)


def make_batch(seed, image_size, grid=False):
    g = torch.Generator().manual_seed(seed)
    targets = [random_faces(g, 12, image_size), random_faces(g, 1, image_size),
               random_faces(g, 3, image_size, tiny=True),            # only hard faces
               torch.cat([random_faces(g, 5, image_size),
                          random_faces(g, 2, image_size, tiny=True)])]
    dup = random_faces(g, 2, image_size)
    targets.append(torch.cat([dup, dup[:1], dup]))                    # same best priors
    if grid:           # corners on the stride-8 grid: many exactly tied IoUs
        h, w = image_size
        q = torch.tensor([w, h, w, h]) / 8
        for t in targets[:2] + targets[3:]:
            t[:, :4] = (t[:, :4] * q).round() / q
            t[:, 2:4] = torch.maximum(t[:, 2:4], t[:, :2] + 1 / q[:2])
    return targets


@pytest.mark.parametrize("seed,image_size,grid", [(0, (160, 160), False), (1, (192, 256), False),
                                                  (2, (256, 200), True), (3, (320, 320), True),
                                                  (4, (97, 131), True)])
def test_loss_equals_literal_port(seed, image_size, grid):
    targets = make_batch(seed, image_size, grid)
    priors = prior_boxes(image_size, MIN_SIZES, STEPS)
    B, P = len(targets), len(priors)
    g = torch.Generator().manual_seed(100 + seed)
    out = SimpleNamespace(loc=torch.randn(B, P, 4, generator=g),
                          conf=torch.randn(B, P, 2, generator=g) * 3,
                          landms=torch.randn(B, P, 10, generator=g))
    loss = RetinaFaceLoss(MIN_SIZES, STEPS, VAR)(out, targets, image_size)
    ref_l, ref_c, ref_landm, labels, faces = ref_multibox_loss(
        out.loc, out.conf, out.landms, priors, [to_reference(t) for t in targets])
    assert (labels != 0).sum() > 20 and (labels > 0).sum() > 10 and (labels < 0).sum() > 0
    assert (labels[2] == 0).all()                                     # the hard-faces image
    torch.testing.assert_close(loss["loss_loc"], ref_l, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss["loss_conf"], ref_c, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss["loss_landm"], ref_landm, rtol=1e-5, atol=1e-6)

    truths, valid = pad_targets(targets, "cpu")
    face, pos = match(truths[..., :4], valid, priors, image_size, MIN_SIZES, STEPS)
    assert torch.equal(pos, labels != 0)
    for b, ref_face in enumerate(faces):
        if ref_face is not None:
            assert torch.equal(face[b][pos[b]], ref_face[pos[b]])


def test_no_positive_and_no_face():
    image_size = (96, 96)
    priors = prior_boxes(image_size, MIN_SIZES, STEPS)
    P = len(priors)
    g = torch.Generator().manual_seed(7)
    targets = [torch.tensor([[0.5, 0.5, 0.505, 0.51, 1] + [-1.0] * 10]), torch.zeros(0, 15)]
    out = SimpleNamespace(loc=torch.randn(2, P, 4, generator=g, requires_grad=True),
                          conf=torch.randn(2, P, 2, generator=g, requires_grad=True),
                          landms=torch.randn(2, P, 10, generator=g, requires_grad=True))
    loss = RetinaFaceLoss()(out, targets, image_size)
    assert all(float(v.detach()) == 0 for v in loss.values())         # N clamps to 1: zeros
    sum(loss.values()).backward()


def test_gradients_and_weighting():
    image_size = (128, 128)
    targets = make_batch(5, image_size)[:2]
    priors = prior_boxes(image_size, MIN_SIZES, STEPS)
    g = torch.Generator().manual_seed(8)
    loc = torch.randn(2, len(priors), 4, generator=g, requires_grad=True)
    out = SimpleNamespace(loc=loc, conf=torch.randn(2, len(priors), 2, generator=g),
                          landms=torch.randn(2, len(priors), 10, generator=g))
    one = RetinaFaceLoss(loc_weight=1.0)(out, targets, image_size)
    two = RetinaFaceLoss()(out, targets, image_size)
    torch.testing.assert_close(two["loss_loc"], 2 * one["loss_loc"])
    two["loss_loc"].backward()
    assert loc.grad.abs().sum() > 0


def test_ignore_rows_are_neither_positives_nor_negatives():
    image_size = (160, 160)
    priors = prior_boxes(image_size, MIN_SIZES, STEPS)
    P = len(priors)
    face = torch.tensor([[0.1, 0.1, 0.4, 0.45, 1] + [0.2, 0.2] * 5])
    ignore = torch.tensor([[0.6, 0.55, 0.9, 0.9, -1] + [-1.0] * 10])
    g = torch.Generator().manual_seed(9)
    conf = torch.randn(1, P, 2, generator=g)
    truths, valid = pad_targets([ignore], "cpu")
    _, on_ignore = match(truths[..., :4], valid, priors, image_size, MIN_SIZES, STEPS)
    conf[on_ignore] = torch.tensor([-8.0, 8.0])        # the hardest negatives, were they mined
    out = SimpleNamespace(loc=torch.randn(1, P, 4, generator=g), conf=conf,
                          landms=torch.randn(1, P, 10, generator=g))
    loss_fn = RetinaFaceLoss()
    plain = loss_fn(out, [face], image_size)
    with_ignore = loss_fn(out, [torch.cat([face, ignore])], image_size)
    assert on_ignore.sum() > 3
    torch.testing.assert_close(with_ignore["loss_loc"], plain["loss_loc"])
    torch.testing.assert_close(with_ignore["loss_landm"], plain["loss_landm"])
    assert with_ignore["loss_conf"] < plain["loss_conf"] - 1
    # an ignore box identical to the face cannot take the face's forced prior
    same = loss_fn(out, [torch.cat([face, face * torch.tensor([1, 1, 1, 1, -1] + [1] * 10)])],
                   image_size)
    assert same["loss_loc"] > 0
