"""YuNet's loss on hand-made cases, and the batched SimOTA against a per-image transcription of
the official assigner (mmdet/core/bbox/assigners/sim_ota_assigner.py, as read)."""
import math

import pytest
import torch
import torch.nn.functional as F

from models.yunet.loss import YuNetLoss, box_iou, diou_loss, eiou_loss, simota_assign
from models.yunet.postprocess import grid_priors
from models.yunet.net import YuNetOutput

SIZES = [(8, 8), (4, 4), (2, 2)]          # a 64 x 64 input
IMAGE = (64, 64)


# ---- box losses ---------------------------------------------------------------------------

def test_eiou_known_values():
    pred = torch.tensor([[0.0, 0, 2, 2], [0, 0, 1, 1], [10, 10, 20, 30], [0, 0, 2, 2]])
    target = torch.tensor([[1.0, 1, 3, 3], [2, 0, 3, 1], [10, 10, 20, 30], [0, 0, 2, 2.2]])
    loss = eiou_loss(pred, target)
    # overlap 1, union 7: 1 - 1/7 = 0.857 > 0.1, so 0.857 - 0.05
    assert loss[0].item() == pytest.approx(6 / 7 - 0.05, rel=1e-5)
    # disjoint by a gap of 1: the extended intersection is -1, union 3: 1 + 1/3 - 0.05
    assert loss[1].item() == pytest.approx(4 / 3 - 0.05, rel=1e-5)
    assert loss[2].item() == pytest.approx(0.0, abs=1e-9)                # identical
    # IoU 4 / 4.4: l = 1/11 < 0.1, the quadratic branch 0.5 l^2 / 0.1
    assert loss[3].item() == pytest.approx(0.5 * (1 / 11) ** 2 / 0.1, rel=1e-4)


def test_diou_known_value():
    pred, target = torch.tensor([[0.0, 0, 2, 2]]), torch.tensor([[1.0, 1, 3, 3]])
    # IoU 1/7; centres (1,1), (2,2): rho^2 = 2; enclosing 3 x 3: c^2 = 18
    assert diou_loss(pred, target).item() == pytest.approx(1 - 1 / 7 + 2 / 18, rel=1e-5)


def test_box_iou_broadcasts():
    a = torch.tensor([[0.0, 0, 2, 2], [5, 5, 6, 6]])
    b = torch.tensor([[1.0, 1, 3, 3]])
    torch.testing.assert_close(box_iou(a[:, None], b[None]), torch.tensor([[1 / 7], [0.0]]))


# ---- SimOTA: the official per-image algorithm, transcribed --------------------------------

def reference_simota(priors, scores, decoded, gts, radius=2.5, topk=10):
    """``priors [P, 4]`` (cx, cy, sx, sy), ``scores [P]``, ``decoded [P, 4]``, ``gts [G, 4]``
    -> (pos [P], gt index [P], IoU [P]): the released assigner step by step, per gt."""
    P, G = len(priors), len(gts)
    x, y = priors[:, 0:1], priors[:, 1:2]
    sx, sy = priors[:, 2:3], priors[:, 3:4]
    in_gts = torch.stack([x - gts[:, 0], y - gts[:, 1], gts[:, 2] - x, gts[:, 3] - y],
                         1).min(1).values > 0                                 # [P, G]
    gcx, gcy = (gts[:, 0] + gts[:, 2]) / 2, (gts[:, 1] + gts[:, 3]) / 2
    in_cts = torch.stack([x - (gcx - radius * sx), y - (gcy - radius * sy),
                          (gcx + radius * sx) - x, (gcy + radius * sy) - y], 1).min(1).values > 0
    valid = in_gts.any(1) | in_cts.any(1)
    both = in_gts[valid] & in_cts[valid]
    pos = torch.zeros(P, dtype=torch.bool)
    gt_of = torch.zeros(P, dtype=torch.long)
    iou_of = torch.zeros(P)
    if valid.sum() == 0:
        return pos, gt_of, iou_of
    ious = box_iou(decoded[valid][:, None], gts[None])                       # [V, G]
    iou_cost = -torch.log(ious + 1e-7)
    cls_cost = F.binary_cross_entropy(scores[valid].sqrt()[:, None].expand(-1, G),
                                      torch.ones(int(valid.sum()), G), reduction="none")
    cost = cls_cost + 3.0 * iou_cost + 100000.0 * (~both)
    matching = torch.zeros_like(cost, dtype=torch.uint8)
    k = min(topk, len(ious))
    dynamic_ks = torch.clamp(torch.topk(ious, k, dim=0).values.sum(0).int(), min=1)
    for g in range(G):
        _, idx = torch.topk(cost[:, g], k=int(dynamic_ks[g]), largest=False)
        matching[idx, g] = 1
    multi = matching.sum(1) > 1
    if multi.any():
        best = cost[multi].argmin(1)
        matching[multi] = 0
        matching[multi.nonzero()[:, 0], best] = 1
    fg = matching.sum(1) > 0
    where = valid.nonzero()[:, 0][fg]
    pos[where] = True
    gt_of[where] = matching[fg].argmax(1)
    iou_of[where] = (matching * ious).sum(1)[fg]
    return pos, gt_of, iou_of


def _random_case(gen, B=3, crowded=False):
    priors = grid_priors(SIZES, (8, 16, 32))                                  # [P, 3]
    P = len(priors)
    scores = torch.rand(B, P, generator=gen) * 0.9 + 0.01
    decoded_c = priors[:, :2] + torch.rand(B, P, 2, generator=gen) * 16
    wh = torch.rand(B, P, 2, generator=gen) * 24 + 2
    decoded = torch.cat([decoded_c - wh / 2, decoded_c + wh / 2], -1)
    counts = [int(c) for c in torch.randint(0, 6, (B,), generator=gen)]
    if crowded:                                            # one image with many faces
        counts[0] = 40
    G = max(counts + [1])
    gts = torch.zeros(B, G, 4)
    valid = torch.zeros(B, G, dtype=torch.bool)
    for b, n in enumerate(counts):
        xy = torch.rand(n, 2, generator=gen) * 48
        size = torch.rand(n, 2, generator=gen) * 30 + 3
        gts[b, :n] = torch.cat([xy, (xy + size).clamp(max=64)], 1)
        valid[b, :n] = True
    return priors, scores, decoded, gts, valid, counts


def test_batched_simota_equals_the_per_image_official_algorithm():
    gen = torch.Generator().manual_seed(0)
    checked = 0
    for case in range(12):
        priors, scores, decoded, gts, valid, counts = _random_case(gen, crowded=case % 4 == 0)
        centres = priors[:, :2] + 0.5 * priors[:, 2:]
        pos, gt_idx, iou = simota_assign(centres, priors[:, 2], scores, decoded, gts, valid)
        for b, n in enumerate(counts):
            offset = torch.cat([centres, priors[:, 2:], priors[:, 2:]], 1)
            ref_pos, ref_gt, ref_iou = reference_simota(offset, scores[b], decoded[b], gts[b, :n])
            assert torch.equal(pos[b], ref_pos)
            assert torch.equal(gt_idx[b][pos[b]], ref_gt[ref_pos])
            torch.testing.assert_close(iou[b], ref_iou)
            checked += int(ref_pos.sum())
    assert checked > 50


def test_assignment_picks_the_centre_cells():
    """An untrained-looking prediction (each cell predicts a stride-sized box at its corner):
    the positives sit inside the face and near its centre, the centre cell among them."""
    priors = grid_priors(SIZES, (8, 16, 32))
    centres = priors[:, :2] + 0.5 * priors[:, 2:]
    s = priors[:, 2:]
    decoded = torch.cat([priors[:, :2] - s / 2 + s / 2, priors[:, :2] + s / 2 + s / 2], 1)[None]
    face = torch.tensor([[[20.0, 20, 44, 44]]])
    pos, gt_idx, iou = simota_assign(centres, priors[:, 2], torch.full((1, len(priors)), 0.5),
                                     decoded, face, torch.ones(1, 1, dtype=torch.bool))
    chosen = centres[pos[0]]
    assert len(chosen) >= 1
    assert ((chosen > 20) & (chosen < 44)).all()                            # inside the face
    assert ((chosen - 32).abs() <= 2.5 * priors[pos[0], 2:]).all()          # near its centre
    assert (iou[0][pos[0]] > 0).all() and (gt_idx[0][pos[0]] == 0).all()
    # a prior outside the face and its centre region is never a positive
    far = ((centres - 32).abs() > 2.5 * priors[:, 2:]).any(1) & ~(
        (centres > 20) & (centres < 44)).all(1)
    assert not pos[0][far].any()


# ---- the loss -------------------------------------------------------------------------------

def _output(B=1, cls=-8.0, obj=-8.0):
    """Confident background everywhere; every cell predicts a tiny box (IoU ~0 with faces)."""
    P = sum(h * w for h, w in SIZES)
    cut = [0, 64, 80, 84]
    split = lambda t: [t[:, cut[i]:cut[i + 1]].clone() for i in range(3)]   # noqa: E731
    return (split(torch.full((B, P, 1), cls)), split(torch.full((B, P, 1), obj)),
            split(torch.tensor([0.0, 0.0, -5.0, -5.0]).repeat(B, P, 1)),
            split(torch.zeros(B, P, 10)))


def _face_at(level, row, col, box_cells=(2.0, 2.0), points=True):
    """A target centred on cell (row, col) of ``level``, and the output that predicts it
    exactly from that cell (cls/obj confident there)."""
    stride = (8, 16, 32)[level]
    cls, obj, bbox, kps = _output()
    w, h = box_cells
    cx, cy = (col + 0.5) * stride, (row + 0.5) * stride
    idx = row * SIZES[level][1] + col
    bbox[level][0, idx] = torch.tensor([0.5, 0.5, math.log(w), math.log(h)])
    pts = torch.tensor([[-0.3, -0.2], [0.3, -0.2], [0.0, 0.0], [-0.2, 0.3], [0.2, 0.3]])
    kps[level][0, idx] = (pts * torch.tensor([w, h]) + 0.5).reshape(-1)
    cls[level][0, idx], obj[level][0, idx] = 8.0, 8.0
    box = torch.tensor([cx - w * stride / 2, cy - h * stride / 2, cx + w * stride / 2,
                        cy + h * stride / 2]) / 64
    lms = ((pts * torch.tensor([w, h]) * stride + torch.tensor([cx, cy])) / 64).reshape(-1)
    if not points:
        lms = torch.full((10,), -1.0)
    target = torch.cat([box, torch.ones(1), lms])[None]
    return YuNetOutput(cls, obj, bbox, kps, SIZES), target


def test_perfect_prediction_beats_a_shifted_one():
    loss = YuNetLoss()
    out, target = _face_at(level=1, row=1, col=2)
    perfect = loss(out, [target], IMAGE)
    assert set(perfect) == {"loss_cls", "loss_obj", "loss_bbox", "loss_kps"}
    assert perfect["loss_bbox"].item() < 1e-6 and perfect["loss_kps"].item() < 1e-6
    shifted = target.clone()
    shifted[0, [0, 2, 5, 7, 9, 11, 13]] += 6 / 64                        # 6 px to the right
    worse = loss(out, [shifted], IMAGE)
    for key in ("loss_bbox", "loss_kps", "loss_cls"):      # cls: its target is the IoU
        assert worse[key] > perfect[key] + 1e-3, key
    assert sum(worse.values()) > sum(perfect.values())


def test_landmark_term_is_zero_without_landmarks_and_weighted_by_annotated_points():
    loss = YuNetLoss()
    out, target = _face_at(level=0, row=3, col=4, points=False)
    out.kps[0][0] += 0.7                                                   # wrong everywhere
    terms = loss(out, [target], IMAGE)
    assert terms["loss_kps"].item() == 0.0
    assert all(torch.isfinite(v) for v in terms.values())
    # two of five points annotated: only they count, the face weighs 2/5, normalised by 2/5
    out, target = _face_at(level=0, row=3, col=4)
    with_all = loss(out, [target], IMAGE)["loss_kps"]
    out.kps[0][0] += 0.7
    partial = target.clone()
    partial[0, 9:15] = -1                                                  # points 2, 3, 4 absent
    full_err, part_err = loss(out, [target], IMAGE), loss(out, [partial], IMAGE)
    n_pos = int(simota_positives(out, target))
    beta = 1 / 9
    per_coord = 0.7 - 0.5 * beta                                           # |0.7| >= beta
    assert with_all.item() < 1e-6
    assert full_err["loss_kps"].item() == pytest.approx(0.1 * 10 * per_coord, rel=1e-3)
    assert part_err["loss_kps"].item() == pytest.approx(0.1 * 4 * per_coord, rel=1e-3)
    assert n_pos >= 1


def simota_positives(out, target):
    loss = YuNetLoss()
    priors = loss.priors(out.feature_sizes, "cpu")
    cls = torch.cat(out.cls, 1)[..., 0]
    obj = torch.cat(out.obj, 1)[..., 0]
    bbox = torch.cat(out.bbox, 1)
    s, xy = priors[:, 2:], priors[:, :2]
    c = bbox[..., :2] * s + xy
    half = bbox[..., 2:].exp() * s / 2
    pos, _, _ = simota_assign(xy + s / 2, priors[:, 2], cls.sigmoid() * obj.sigmoid(),
                              torch.cat([c - half, c + half], -1), target[None, :, :4] * 64,
                              torch.ones(1, len(target), dtype=torch.bool))
    return pos.sum()


def test_terms_follow_the_official_formulas():
    """cls: BCE against the IoU on positives; obj: BCE on every prior; both / N."""
    loss = YuNetLoss()
    out, target = _face_at(level=2, row=0, col=1, box_cells=(1.5, 1.2))
    terms = loss(out, [target], IMAGE)
    cls = torch.cat(out.cls, 1)[0, :, 0]
    obj = torch.cat(out.obj, 1)[0, :, 0]
    n = int(simota_positives(out, target))
    assert n == 1                                          # one perfect prediction, k = 1
    pos = obj > 0
    expect_obj = F.binary_cross_entropy_with_logits(obj, pos.float(), reduction="sum") / n
    expect_cls = F.binary_cross_entropy_with_logits(cls[pos], torch.ones(1), reduction="sum")
    torch.testing.assert_close(terms["loss_obj"], expect_obj)
    torch.testing.assert_close(terms["loss_cls"], expect_cls, rtol=1e-4, atol=1e-5)


def test_image_without_faces_and_weights_and_gradients():
    loss = YuNetLoss(w_obj=2.0)
    out, target = _face_at(level=1, row=2, col=2)
    for t in (*out.cls, *out.obj, *out.bbox, *out.kps):
        t.requires_grad_(True)
    batch = YuNetOutput([torch.cat([c, c]) for c in out.cls], [torch.cat([o, o]) for o in out.obj],
                        [torch.cat([b, b]) for b in out.bbox], [torch.cat([k, k]) for k in out.kps],
                        SIZES)
    terms = loss(batch, [target, torch.zeros(0, 15)], IMAGE)
    single = YuNetLoss()(out, [target], IMAGE)
    sum(terms.values()).backward()
    grads = torch.cat([t.grad.flatten() for t in (*out.cls, *out.obj, *out.bbox)])
    assert torch.isfinite(grads).all() and grads.abs().sum() > 0
    # the empty image adds only background objectness (all its priors are negatives); x W_OBJ
    obj = torch.cat(out.obj, 1)[0, :, 0].detach()
    background = F.binary_cross_entropy_with_logits(obj, torch.zeros_like(obj), reduction="sum")
    assert terms["loss_obj"].item() == pytest.approx(
        2 * (single["loss_obj"].item() + background.item()), rel=1e-5)
    torch.testing.assert_close(terms["loss_bbox"], single["loss_bbox"])
    empty = loss(out, [torch.zeros(0, 15)], IMAGE)
    assert empty["loss_cls"].item() == empty["loss_bbox"].item() == empty["loss_kps"].item() == 0


def test_from_config():
    from data.config import default_config
    cfg = default_config()
    cfg.YUNET.W_BBOX, cfg.YUNET.BOX_LOSS = 2.5, "diou"
    loss = YuNetLoss.from_config(cfg)
    assert loss.w_bbox == 2.5 and loss.box_loss is diou_loss and loss.center_radius == 2.5


def test_normaliser_is_the_positives_averaged_over_ranks(monkeypatch):
    """mmdetection's reduce_mean: with a pretend second rank holding twice this rank's
    positives (and landmark weight), every term is divided by 1.5 x this rank's count."""
    import models.yunet.loss as yl
    out, target = _face_at(level=1, row=1, col=1)
    out.kps[1][0] += 0.3
    target = target.clone()
    target[0, :4] += 2 / 64
    alone = YuNetLoss()(out, [target], IMAGE)
    monkeypatch.setattr(yl.dist, "all_reduce_sum", lambda t: t * 3)
    monkeypatch.setattr(yl.dist, "world_size", lambda: 2)
    shared = YuNetLoss()(out, [target], IMAGE)
    for key in alone:
        assert shared[key].item() == pytest.approx(alone[key].item() / 1.5, rel=1e-5), key


# ---- ignore rows (label -1) -----------------------------------------------------------------

def released_forward(self, out, targets, image_size):
    """``YuNetLoss.forward`` as it was before ignore rows existed (every row a face), kept
    verbatim so that the no-ignore path can be compared bit for bit."""
    from models.yunet.loss import EPS_KPS, decode_boxes, dist, pad_targets
    cls = torch.cat(out.cls, 1)[..., 0].float()
    obj = torch.cat(out.obj, 1)[..., 0].float()
    bbox = torch.cat(out.bbox, 1).float()
    kps = torch.cat(out.kps, 1).float()
    B, P = cls.shape
    priors = self.priors(out.feature_sizes, cls.device)
    xy, s = priors[:, :2], priors[:, 2:]
    decoded = decode_boxes(bbox, priors)
    h, w = image_size
    truth, valid = pad_targets(targets, cls.device)
    scale = truth.new_tensor([w, h])
    gt_boxes = (truth[..., :4].view(B, -1, 2, 2) * scale).view(B, -1, 4)
    gt_points = truth[..., 5:15].reshape(B, -1, 5, 2)
    visible = ~(gt_points == -1).all(-1)
    gt_points = gt_points * scale
    pos, gt_index, pos_iou = simota_assign(
        xy + 0.5 * s, priors[:, 2], cls.sigmoid() * obj.sigmoid(), decoded.detach(),
        gt_boxes, valid, self.center_radius)
    num_pos = pos.sum().float()
    n = (dist.all_reduce_sum(num_pos.detach()) / dist.world_size()).clamp(min=1.0)
    b_idx, p_idx = pos.nonzero(as_tuple=True)
    g_idx = gt_index[b_idx, p_idx]
    loss_cls = F.binary_cross_entropy_with_logits(cls[b_idx, p_idx], pos_iou[b_idx, p_idx],
                                                  reduction="sum") / n
    loss_obj = F.binary_cross_entropy_with_logits(obj, pos.float(), reduction="sum") / n
    loss_bbox = self.box_loss(decoded[b_idx, p_idx], gt_boxes[b_idx, g_idx]).sum() / n
    vis = visible[b_idx, g_idx]
    target = (gt_points[b_idx, g_idx] - xy[p_idx, None]) / s[p_idx, None]
    per_coord = F.smooth_l1_loss(kps[b_idx, p_idx].view(-1, 5, 2), target,
                                 reduction="none", beta=self.kps_beta)
    weight = vis.float().mean(-1)
    kps_sum = (per_coord * vis[..., None] * weight[:, None, None]).sum()
    denom = dist.all_reduce_sum(weight.sum().detach()) / dist.world_size()
    loss_kps = kps_sum / (denom + EPS_KPS)
    return {"loss_cls": self.w_cls * loss_cls, "loss_obj": self.w_obj * loss_obj,
            "loss_bbox": self.w_bbox * loss_bbox, "loss_kps": self.w_kps * loss_kps}


def _random_batch(gen, B=4):
    """Random raw outputs (with gradient) and random faces: some images empty, some faces
    without landmarks, a few partly annotated."""
    P = sum(h * w for h, w in SIZES)
    cut = [0, 64, 80, 84]

    def levels(c, scale=1.0, shift=0.0):
        t = torch.randn(B, P, c, generator=gen) * scale + shift
        return [t[:, cut[i]:cut[i + 1]].clone().requires_grad_(True) for i in range(3)]

    out = YuNetOutput(levels(1, 2.0, -2.0), levels(1, 2.0, -2.0), levels(4, 0.5),
                      levels(10, 0.5, 0.5), SIZES)
    targets = []
    for b in range(B):
        n = int(torch.randint(0, 7, (1,), generator=gen)) if b else 0       # image 0: empty
        xy = torch.rand(n, 2, generator=gen) * 0.7
        wh = torch.rand(n, 2, generator=gen) * 0.4 + 0.05
        points = xy[:, None] + torch.rand(n, 5, 2, generator=gen) * wh[:, None]
        points[torch.rand(n, generator=gen) < 0.3] = -1.0                   # no landmarks
        points[:, 4][torch.rand(n, generator=gen) < 0.2] = -1.0             # partly annotated
        targets.append(torch.cat([xy, (xy + wh).clamp(max=1), torch.ones(n, 1),
                                  points.reshape(n, 10)], 1))
    return out, targets


def _terms_and_grads(fn, out, targets):
    for t in (*out.cls, *out.obj, *out.bbox, *out.kps):
        t.grad = None
    terms = fn(out, targets, IMAGE)
    sum(terms.values()).backward()
    return terms, [t.grad.clone() for t in (*out.cls, *out.obj, *out.bbox, *out.kps)]


def test_without_ignore_rows_the_loss_is_the_released_one_bit_for_bit():
    loss = YuNetLoss()
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        out, targets = _random_batch(gen)
        new, new_grads = _terms_and_grads(loss, out, targets)
        old, old_grads = _terms_and_grads(lambda *a: released_forward(loss, *a), out, targets)
        assert new["loss_cls"] > 0 and new["loss_kps"] > 0
        for key in old:
            assert torch.equal(new[key], old[key]), key
        assert all(torch.equal(a, b) for a, b in zip(new_grads, old_grads))


def _prepared(out):
    """What the loss hands to the assigner for ``out`` (one image)."""
    loss = YuNetLoss()
    priors = loss.priors(out.feature_sizes, "cpu")
    cls = torch.cat(out.cls, 1)[..., 0].detach()
    obj = torch.cat(out.obj, 1)[..., 0].detach()
    s, xy = priors[:, 2:], priors[:, :2]
    bbox = torch.cat(out.bbox, 1).detach()
    c = bbox[..., :2] * s + xy
    half = bbox[..., 2:].exp() * s / 2
    return xy + s / 2, priors[:, 2], cls.sigmoid() * obj.sigmoid(), torch.cat([c - half,
                                                                               c + half], -1)


def _positives_of(out, boxes):
    """SimOTA's positives when ``boxes`` ([n, 4] normalised) are the only faces."""
    centres, strides, scores, decoded = _prepared(out)
    pos, _, _ = simota_assign(centres, strides, scores, decoded, boxes[None] * 64,
                              torch.ones(1, len(boxes), dtype=torch.bool))
    return pos[0]


def _ignore_row(box):
    return torch.cat([torch.tensor(box), torch.tensor([-1.0]), torch.full((10,), -1.0)])[None]


def test_an_ignore_box_is_no_positive_and_its_simota_priors_are_no_negatives():
    loss = YuNetLoss()
    out, face = _face_at(level=0, row=1, col=1)                 # a face in the top-left corner
    for t in (*out.cls, *out.obj, *out.bbox, *out.kps):
        t.requires_grad_(True)
    ignore = _ignore_row([0.55, 0.55, 0.95, 0.95])               # far from it, bottom-right
    alone = loss(out, [face], IMAGE)
    both = loss(out, [torch.cat([face, ignore])], IMAGE)
    # the face's terms are unchanged: the ignore box took no positive
    for key in ("loss_cls", "loss_bbox", "loss_kps"):
        assert torch.equal(both[key], alone[key]), key
    # objectness: every prior but those SimOTA gives to the ignore box when it is a face
    covered = _positives_of(out, ignore[:, :4])
    face_pos = _positives_of(out, face[:, :4])
    assert covered.sum() >= 1 and not (covered & face_pos).any()
    obj = torch.cat(out.obj, 1)[0, :, 0]
    per_prior = F.binary_cross_entropy_with_logits(obj, face_pos.float(), reduction="none")
    n = face_pos.sum()
    torch.testing.assert_close(both["loss_obj"], per_prior[~covered].sum() / n)
    assert both["loss_obj"] < alone["loss_obj"]
    # no gradient reaches the covered priors' objectness; the other priors get theirs
    both["loss_obj"].backward()
    grad = torch.cat([o.grad for o in out.obj], 1)[0, :, 0]
    assert (grad[covered] == 0).all() and (grad[~covered] != 0).all()


def test_an_ignore_box_on_a_face_never_takes_its_positives():
    loss = YuNetLoss()
    out, face = _face_at(level=1, row=2, col=1, box_cells=(2.5, 2.5))
    duplicate = face.clone()
    duplicate[0, 4] = -1                                          # the same box, ignored
    duplicate[0, 5:] = -1
    larger = _ignore_row([0.1, 0.2, 0.7, 0.95])                   # and one around it,
    idx = 1 * 2 + 0                                   # predicted exactly by a stride-32 cell
    out.bbox[2][0, idx] = torch.tensor([0.8, 0.15, math.log(1.2), math.log(1.5)])
    out.cls[2][0, idx], out.obj[2][0, idx] = 8.0, 8.0
    alone = loss(out, [face], IMAGE)
    both = loss(out, [torch.cat([duplicate, face, larger])], IMAGE)
    for key in ("loss_cls", "loss_bbox", "loss_kps"):
        assert torch.equal(both[key], alone[key]), key
    centres, strides, scores, decoded = _prepared(out)
    truth = torch.cat([duplicate, face, larger])[None]
    pos, gt, _, ignored = loss.assign(centres, strides, scores, decoded, truth[..., :4] * 64,
                                      torch.ones(1, 3, dtype=torch.bool), truth[..., 4])
    assert torch.equal(pos[0], _positives_of(out, face[:, :4]))
    assert (gt[pos] == 1).all()                                   # the face's row
    assert not (ignored & pos).any()
    assert ignored[0].nonzero().flatten().tolist() == [64 + 16 + idx]     # that cell only


def test_an_image_with_only_ignore_boxes():
    loss = YuNetLoss()
    out, _ = _face_at(level=0, row=2, col=5)
    ignore = torch.cat([_ignore_row([0.1, 0.1, 0.4, 0.5]), _ignore_row([0.6, 0.5, 0.9, 0.9])])
    terms = loss(out, [ignore], IMAGE)
    assert terms["loss_cls"].item() == terms["loss_bbox"].item() == 0
    assert terms["loss_kps"].item() == 0
    covered = _positives_of(out, ignore[:, :4])                    # both boxes as faces
    obj = torch.cat(out.obj, 1)[0, :, 0]
    background = F.binary_cross_entropy_with_logits(obj, torch.zeros_like(obj), reduction="none")
    assert covered.sum() >= 2
    torch.testing.assert_close(terms["loss_obj"], background[~covered].sum())   # N = 1


def test_an_ignore_row_outside_the_image_changes_nothing():
    """No prior is a candidate of a box beyond the image and its centre radius."""
    loss = YuNetLoss()
    gen = torch.Generator().manual_seed(5)
    out, targets = _random_batch(gen)
    plain = loss(out, targets, IMAGE)
    far = _ignore_row([-9.0, -9.0, -8.0, -8.0])
    with_far = loss(out, [torch.cat([t, far]) for t in targets], IMAGE)
    for key in plain:
        torch.testing.assert_close(with_far[key], plain[key], rtol=1e-6, atol=0)
