"""YuNet's training loss: SimOTA assignment, BCE (cls, obj), EIoU (boxes), smooth L1 (landmarks).

The released configuration (libfacedetection.train ``yunet_n.py`` / ``yunet_s.py``, head
``YuNet_Head.loss`` and ``SimOTAAssigner``), batched over the images of the batch:

* **Priors**: every cell of the stride-8/16/32 maps; boxes and landmarks are regressed from the
  cell's top-left corner ``(col * s, row * s)``, while the assignment tests the cell centre
  ``(col + 0.5, row + 0.5) * s``.
* **SimOTA** (``center_radius`` 2.5, top-10 IoUs for the dynamic k, IoU cost weight 3, class
  cost weight 1): a prior is a *candidate* when its centre lies inside some face box or within
  ``2.5 s`` of some face centre (both per axis, strict inequalities). For candidate ``p`` and face
  ``g`` the cost is ``BCE(sqrt(sigmoid(cls_p) * sigmoid(obj_p)), 1) - 3 log(IoU_pg + 1e-7)``,
  plus 1e5 unless ``p`` lies both inside box ``g`` and within its centre radius. Face ``g`` takes
  its ``k_g = max(1, int(sum of its 10 largest candidate IoUs))`` cheapest candidates; a prior
  taken by several faces keeps only its cheapest face.
* **Losses** (sums, each divided by ``N = max(positives, 1)``, the positives averaged over DDP
  ranks as mmdetection's ``reduce_mean``): ``W_CLS`` x BCE of the positives' cls logits against
  their IoU with the assigned face (IoU-aware soft targets); ``W_OBJ`` x BCE of every prior's obj
  logit against 1 (positive) / 0; ``W_BBOX`` x EIoU of the positives' decoded boxes;
  ``W_KPS`` x smooth L1 (``beta = KPS_BETA``) of the positives' landmark offsets (in stride
  units), each face weighted by the fraction of its 5 points that are annotated and divided by
  the sum of those weights (faces without landmarks, all -1, weigh 0).

**Ignore rows** (ours; the project's pseudo-label convention, as the DSFD and RetinaFace losses):
a target row labelled -1 is an ignore region. The faces are assigned without them (SimOTA on the
label-1 rows only), so no ignore row is ever a positive and a face's positives do not depend on
the ignore rows. A second SimOTA run with every row treated as a face gives the priors SimOTA
would assign to each ignore box if it were a face (its dynamic-k cheapest candidates, conflicts
with faces resolved by cost as usual), kept when they are the box's own candidates (centre in
the box or its centre square: a box beyond the image covers nothing): those priors, unless they
are positives of a face, are *ignored*, i.e. left out of the objectness term (the only term with
negatives). Without -1 rows the second run does not happen and every term is bit for bit the
released loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.yunet.postprocess import decode_boxes, grid_priors
from utils import dist

INF = 100000.0              # SimOTA's cost for a pair outside the box-and-centre region
CANDIDATE_TOPK = 10
IOU_WEIGHT = 3.0
CLS_WEIGHT = 1.0
EPS_KPS = torch.finfo(torch.float32).eps    # mmdetection's avg_factor epsilon
IGNORE_LABEL = -1           # an ignore region (a pseudo box between two thresholds)


# ---- box losses (elementwise over aligned rows, x1, y1, x2, y2) --------------------------------

def eiou_loss(pred: Tensor, target: Tensor, smooth_point: float = 0.1,
              eps: float = 1e-6) -> Tensor:
    """libfacedetection's "extended IoU" loss, ``[n]``.

    The intersection is extended to disjoint boxes (it turns negative with the gap instead of
    stopping at 0), ``l = 1 - intersection / union``, then smoothed like a Huber loss at
    ``smooth_point``: ``0.5 l^2 / smooth_point`` below it, ``l - 0.5 smooth_point`` above."""
    px1, py1, px2, py2 = pred.unbind(-1)
    tx1, ty1, tx2, ty2 = target.unbind(-1)
    ex1, ey1 = torch.minimum(px1, tx1), torch.minimum(py1, ty1)            # enclosing top-left
    ix1, iy1 = torch.maximum(px1, tx1), torch.maximum(py1, ty1)
    ix2, iy2 = torch.minimum(px2, tx2), torch.minimum(py2, ty2)
    xmin, xmax = torch.minimum(ix1, ix2), torch.maximum(ix1, ix2)
    ymin, ymax = torch.minimum(iy1, iy2), torch.maximum(iy1, iy2)
    # (ix2-ix1)(iy2-iy1) when the boxes overlap, negative in proportion to the gap otherwise
    inter = ((ix2 - ex1) * (iy2 - ey1) + (xmin - ex1) * (ymin - ey1)
             - (ix1 - ex1) * (ymax - ey1) - (xmax - ex1) * (iy1 - ey1))
    union = (px2 - px1) * (py2 - py1) + (tx2 - tx1) * (ty2 - ty1) - inter + eps
    loss = 1 - inter / union
    small = (loss < smooth_point).detach()
    return torch.where(small, 0.5 * loss ** 2 / smooth_point, loss - 0.5 * smooth_point)


def diou_loss(pred: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """``1 - IoU + rho^2 / c^2`` (mmdetection's DIoU loss, what the released yunet_s used)."""
    lt = torch.maximum(pred[:, :2], target[:, :2])
    rb = torch.minimum(pred[:, 2:], target[:, 2:])
    overlap = (rb - lt).clamp(min=0).prod(-1)
    area_p = (pred[:, 2:] - pred[:, :2]).prod(-1)
    area_t = (target[:, 2:] - target[:, :2]).prod(-1)
    iou = overlap / (area_p + area_t - overlap + eps)
    enclose = (torch.maximum(pred[:, 2:], target[:, 2:])
               - torch.minimum(pred[:, :2], target[:, :2])).clamp(min=0)
    c2 = (enclose ** 2).sum(-1) + eps
    rho2 = (((target[:, :2] + target[:, 2:]) - (pred[:, :2] + pred[:, 2:])) ** 2).sum(-1) / 4
    return 1 - iou + rho2 / c2


BOX_LOSSES = {"eiou": eiou_loss, "diou": diou_loss}


# ---- SimOTA ---------------------------------------------------------------------------------

@torch.no_grad()
def simota_assign(centres: Tensor, strides: Tensor, scores: Tensor, decoded: Tensor,
                  gt_boxes: Tensor, gt_valid: Tensor, center_radius: float = 2.5,
                  candidate_topk: int = CANDIDATE_TOPK, iou_weight: float = IOU_WEIGHT,
                  cls_weight: float = CLS_WEIGHT):
    """SimOTA for a whole batch, without a per-image loop.

    Face-major layout: one row per face of the batch, holding the candidates of that face's
    image (padded to the largest candidate count), so the memory is that of the official
    per-image cost matrices, not batch x priors x the most faces of any image.

    ``centres [P, 2]`` cell centres and ``strides [P]``; ``scores [B, P]`` =
    sigmoid(cls) * sigmoid(obj); ``decoded [B, P, 4]`` predicted boxes; ``gt_boxes [B, G, 4]``
    with ``gt_valid [B, G]`` (padding False). Returns ``pos [B, P]`` bool, ``gt_index [B, P]``
    (meaningful where ``pos``) and ``pos_iou [B, P]`` (IoU with the assigned face).
    """
    B, P = scores.shape
    device = scores.device
    pos = torch.zeros(B, P, dtype=torch.bool, device=device)
    gt_index = torch.zeros(B, P, dtype=torch.long, device=device)
    pos_iou = torch.zeros(B, P, dtype=scores.dtype, device=device)
    face_img, face_local = gt_valid.nonzero(as_tuple=True)                  # [F], by image
    if len(face_img) == 0 or P == 0:
        return pos, gt_index, pos_iou
    gts = gt_boxes[face_img, face_local]                                    # [F, 4]
    in_box, in_ctr = _prior_in_face(centres, strides, gts, center_radius)   # [F, P] each
    # candidates of an image: priors in the box or centre square of any of its faces
    hits = torch.zeros(B, P, device=device).index_add_(0, face_img, (in_box | in_ctr).float())
    candidate = hits > 0                                                    # [B, P]
    counts = candidate.sum(1)
    V = int(counts.max())
    if V == 0:
        return pos, gt_index, pos_iou
    order = torch.sort((~candidate).to(torch.uint8), dim=1, stable=True).indices[:, :V]
    vmask = torch.arange(V, device=device)[None] < counts[:, None]          # [B, V]

    prior = order[face_img]                                                 # [F, V]
    valid = vmask[face_img]
    both = torch.gather(in_box, 1, prior) & torch.gather(in_ctr, 1, prior)
    iou = box_iou(decoded[face_img[:, None], prior], gts[:, None]) * valid   # [F, V]
    # BCE(sqrt(p), 1) with torch's log clamp at -100 (one class: the same for every face)
    cls_cost = -torch.log(scores[face_img[:, None], prior].float().sqrt()).clamp(max=100.0)
    cost = cls_weight * cls_cost - iou_weight * torch.log(iou + 1e-7) + INF * (~both)
    cost = cost.masked_fill(~valid, float("inf"))

    matched = _dynamic_k_match(cost, iou, valid, candidate_topk)
    final = _one_face_per_prior(face_img, cost, matched, B)
    f_idx, v_idx = (final & valid).nonzero(as_tuple=True)
    b = face_img[f_idx]
    p = order[b, v_idx]
    pos[b, p] = True
    gt_index[b, p] = face_local[f_idx]
    pos_iou[b, p] = iou[f_idx, v_idx].to(pos_iou.dtype)
    return pos, gt_index, pos_iou


def _prior_in_face(centres: Tensor, strides: Tensor, gts: Tensor, center_radius: float):
    """Face f vs prior p ``[F, P]``: the cell centre strictly inside the box, and inside the
    square of half-side ``center_radius`` strides around the box centre."""
    x1, y1, x2, y2 = gts[:, :, None].unbind(1)                              # [F, 1]
    cx, cy = centres[None, :, 0], centres[None, :, 1]                       # [1, P]
    in_box = (cx > x1) & (cy > y1) & (cx < x2) & (cy < y2)                  # [F, P]
    r = center_radius * strides[None]
    gcx, gcy = (x1 + x2) / 2, (y1 + y2) / 2
    in_ctr = (cx > gcx - r) & (cy > gcy - r) & (cx < gcx + r) & (cy < gcy + r)
    return in_box, in_ctr


def _dynamic_k_match(cost: Tensor, iou: Tensor, valid: Tensor, candidate_topk: int) -> Tensor:
    """``[F, V]`` bool: per face, dynamic k from its best IoUs, then its k cheapest
    candidates."""
    F_, V = cost.shape
    dynamic_k = iou.topk(min(candidate_topk, V), dim=1).values.sum(1).int().clamp(min=1)
    k_max = int(dynamic_k.max())
    cheapest = cost.topk(k_max, dim=1, largest=False).indices               # [F, k_max]
    chosen = torch.arange(k_max, device=cost.device)[None] < dynamic_k[:, None]
    matched = torch.zeros(F_, V, dtype=torch.bool, device=cost.device).scatter_(1, cheapest,
                                                                                  chosen)
    return matched & valid


def _one_face_per_prior(face_img: Tensor, cost: Tensor, matched: Tensor, B: int) -> Tensor:
    """``[F, V]`` bool: a candidate taken by several faces keeps the face of lowest cost among
    all faces of its image (ties: the first face), as torch.min over the official cost
    matrix's row."""
    F_, V = cost.shape
    device = cost.device
    slot = (face_img[:, None] * V + torch.arange(V, device=device)).reshape(-1)   # (image, v)
    n_match = torch.zeros(B * V, dtype=torch.long, device=device).index_add_(
        0, slot, matched.reshape(-1).long())
    flat_cost = cost.reshape(-1)
    best = torch.full((B * V,), float("inf"), device=device).scatter_reduce(
        0, slot, flat_cost, "amin")
    face_id = torch.arange(F_, device=device)[:, None].expand(F_, V).reshape(-1)
    is_best = flat_cost == best[slot]
    first = torch.full((B * V,), F_, device=device).scatter_reduce(
        0, slot[is_best], face_id[is_best], "amin")
    final = torch.where(n_match[slot] > 1, face_id == first[slot], matched.reshape(-1))
    return final.view(F_, V)


def box_iou(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    """IoU of ``a [..., 4]`` and ``b [..., 4]``, broadcast over the leading dimensions
    (``a[:, None]``, ``b[None]`` give the pairwise matrix), as mmdetection's ``bbox_overlaps``."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    overlap = (rb - lt).clamp(min=0).prod(-1)
    union = (a[..., 2:] - a[..., :2]).prod(-1) + (b[..., 2:] - b[..., :2]).prod(-1) - overlap
    return overlap / union.clamp(min=eps)


# ---- the loss module ------------------------------------------------------------------------

def pad_targets(targets: list[Tensor], device) -> tuple[Tensor, Tensor]:
    """Per-image ``[n_i, 15]`` -> ``[B, G, 15]`` (zeros where padded) and ``valid [B, G]``."""
    G = max((len(t) for t in targets), default=0)
    out = torch.zeros(len(targets), G, 15, device=device)
    valid = torch.zeros(len(targets), G, dtype=torch.bool, device=device)
    for i, t in enumerate(targets):          # one copy per image, not per face
        out[i, :len(t)] = t.to(device=device, dtype=torch.float32)
        valid[i, :len(t)] = True
    return out, valid


class YuNetLoss(nn.Module):
    """``loss(out, targets, image_size) -> {"loss_cls", "loss_obj", "loss_bbox", "loss_kps"}``.

    ``out``: :class:`models.yunet.net.YuNetOutput`; ``targets``: per-image ``[n, 15]`` float tensors
    (normalised x1, y1, x2, y2, label, 10 landmark coordinates or -1; label 1 is a face, -1 an
    ignore region, see the module doc); ``image_size``: the input's (H, W). Each term is
    already weighted."""

    def __init__(self, strides=(8, 16, 32), center_radius: float = 2.5, w_cls: float = 1.0,
                 w_obj: float = 1.0, w_bbox: float = 5.0, w_kps: float = 0.1,
                 kps_beta: float = 1 / 9, box_loss: str = "eiou"):
        super().__init__()
        if box_loss not in BOX_LOSSES:
            raise ValueError(f"box_loss must be one of {sorted(BOX_LOSSES)}, not {box_loss!r}")
        self.strides = tuple(strides)
        self.center_radius = center_radius
        self.w_cls, self.w_obj, self.w_bbox, self.w_kps = w_cls, w_obj, w_bbox, w_kps
        self.kps_beta = kps_beta
        self.box_loss = BOX_LOSSES[box_loss]
        self._priors: dict = {}

    @classmethod
    def from_config(cls, cfg) -> "YuNetLoss":
        y = cfg.YUNET
        return cls(y.STRIDES, y.CENTER_RADIUS, y.W_CLS, y.W_OBJ, y.W_BBOX, y.W_KPS,
                   y.KPS_BETA, y.BOX_LOSS)

    def priors(self, feature_sizes, device) -> Tensor:
        key = (tuple(map(tuple, feature_sizes)), str(device))
        if key not in self._priors:
            self._priors[key] = grid_priors(feature_sizes, self.strides, device)
        return self._priors[key]

    def forward(self, out, targets: list[Tensor], image_size) -> dict[str, Tensor]:
        cls = torch.cat(out.cls, 1)[..., 0].float()                          # [B, P]
        obj = torch.cat(out.obj, 1)[..., 0].float()
        bbox = torch.cat(out.bbox, 1).float()                                # [B, P, 4]
        kps = torch.cat(out.kps, 1).float()                                  # [B, P, 10]
        B, P = cls.shape
        priors = self.priors(out.feature_sizes, cls.device)                  # [P, 3]
        xy, s = priors[:, :2], priors[:, 2:]
        decoded = decode_boxes(bbox, priors)                                 # [B, P, 4] px

        h, w = image_size
        truth, valid = pad_targets(targets, cls.device)                      # [B, G, 15]
        scale = truth.new_tensor([w, h])
        gt_boxes = (truth[..., :4].view(B, -1, 2, 2) * scale).view(B, -1, 4)
        gt_points = truth[..., 5:15].reshape(B, -1, 5, 2)
        visible = ~(gt_points == -1).all(-1)                                  # [B, G, 5]
        gt_points = gt_points * scale

        pos, gt_index, pos_iou, ignored = self.assign(
            xy + 0.5 * s, priors[:, 2], cls.sigmoid() * obj.sigmoid(), decoded.detach(),
            gt_boxes, valid, truth[..., 4])

        # N: the positives averaged over ranks (mmdetection's reduce_mean), at least 1
        num_pos = pos.sum().float()
        n = (dist.all_reduce_sum(num_pos.detach()) / dist.world_size()).clamp(min=1.0)
        b_idx, p_idx = pos.nonzero(as_tuple=True)
        g_idx = gt_index[b_idx, p_idx]

        loss_cls = F.binary_cross_entropy_with_logits(cls[b_idx, p_idx], pos_iou[b_idx, p_idx],
                                                      reduction="sum") / n
        if ignored is None:
            loss_obj = F.binary_cross_entropy_with_logits(obj, pos.float(), reduction="sum") / n
        else:                                  # ignored priors are neither positive nor negative
            keep = ~ignored
            loss_obj = F.binary_cross_entropy_with_logits(obj[keep], pos[keep].float(),
                                                          reduction="sum") / n
        loss_bbox = self.box_loss(decoded[b_idx, p_idx], gt_boxes[b_idx, g_idx]).sum() / n

        # landmarks, in stride units from the cell's corner; weight = annotated fraction
        vis = visible[b_idx, g_idx]                                          # [M, 5]
        target = (gt_points[b_idx, g_idx] - xy[p_idx, None]) / s[p_idx, None]  # [M, 5, 2]
        per_coord = F.smooth_l1_loss(kps[b_idx, p_idx].view(-1, 5, 2), target,
                                     reduction="none", beta=self.kps_beta)
        weight = vis.float().mean(-1)                                         # [M]
        # a point without annotation adds nothing (only matters for partly annotated faces)
        kps_sum = (per_coord * vis[..., None] * weight[:, None, None]).sum()
        denom = dist.all_reduce_sum(weight.sum().detach()) / dist.world_size()
        loss_kps = kps_sum / (denom + EPS_KPS)

        return {"loss_cls": self.w_cls * loss_cls, "loss_obj": self.w_obj * loss_obj,
                "loss_bbox": self.w_bbox * loss_bbox, "loss_kps": self.w_kps * loss_kps}

    @torch.no_grad()
    def assign(self, centres: Tensor, strides: Tensor, scores: Tensor, decoded: Tensor,
               gt_boxes: Tensor, valid: Tensor, labels: Tensor):
        """SimOTA of the faces, and the priors the ignore rows cover (module doc).

        Arguments as :func:`simota_assign`, plus ``labels [B, G]``. Returns ``pos``,
        ``gt_index``, ``pos_iou`` (of the faces only) and ``ignored [B, P]`` bool, or None when
        no row is an ignore row (then this is exactly :func:`simota_assign`)."""
        is_ignore = valid & (labels == IGNORE_LABEL)                         # [B, G]
        if not bool(is_ignore.any()):
            return (*simota_assign(centres, strides, scores, decoded, gt_boxes, valid,
                                   self.center_radius), None)
        pos, gt_index, pos_iou = simota_assign(centres, strides, scores, decoded, gt_boxes,
                                               valid & ~is_ignore, self.center_radius)
        # every row a face: the priors SimOTA gives to an ignore box, among its own candidates
        # (a box with none, e.g. beyond the image, would otherwise take a prior at cost 1e5)
        all_pos, all_index, _ = simota_assign(centres, strides, scores, decoded, gt_boxes,
                                              valid, self.center_radius)
        box = gt_boxes.gather(1, all_index[..., None].expand(-1, -1, 4))     # [B, P, 4]
        cx, cy = centres[None, :, 0], centres[None, :, 1]
        x1, y1, x2, y2 = box.unbind(-1)
        r = self.center_radius * strides[None]
        own = (((cx > x1) & (cy > y1) & (cx < x2) & (cy < y2))
               | (((cx - (x1 + x2) / 2).abs() < r) & ((cy - (y1 + y2) / 2).abs() < r)))
        covered = all_pos & is_ignore.gather(1, all_index) & own             # [B, P]
        return pos, gt_index, pos_iou, covered & ~pos
