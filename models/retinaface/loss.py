"""The RetinaFace multibox loss (biubug6/Pytorch_Retinaface ``MultiBoxLoss`` + ``match``), for a
whole batch at once.

Matching, per image, as the reference:

1. every face's best prior (highest IoU); a face whose best IoU is below ``match_min_iou``
   (0.2, "ignore hard gt") is not forced, and an image with no face reaching it gets no
   positive at all;
2. every prior's best face; the best prior of each forced face gets overlap 2, and every face
   (forced or not, later faces winning) takes its best prior over;
3. priors with overlap >= ``overlap_thresh`` (0.35) are positives.

The reference's targets carry label 1 for faces with landmarks and -1 for faces without: both
are positives for the box and class terms; only the former for the landmark term. Our targets
(models/interface.py) have label 1 and the ten landmark values -1 when absent, so a face counts
as "with landmarks" when its first landmark x is >= 0 (the reference's own test on the raw
annotation).

Rows labelled -1 are ignore regions (the project's pseudo-label convention, shared with the DSFD
loss): matched like faces, faces winning a forced prior they share; the priors they take are
neither positives nor mined negatives. Without such rows the loss is the reference's.

Losses: Smooth-L1 on the encoded boxes of the positives / N, Smooth-L1 on the encoded landmarks
of the positives with landmarks / N_landm, cross-entropy on the positives and the hardest
negatives (``neg_pos`` = 7 per positive and image, at most P - 1) / N, where N counts the
positives (at least 1). Returned weighted as the reference's train.py: loc x ``loc_weight``
(2.0), conf x 1, landm x 1.

Batched matching exploits the prior grid (one size per "virtual level" = level x anchor size,
centres on a regular grid): a face's best prior on a virtual level is (best row, best column)
of its 1-D overlaps, and a prior's best face only matters when it reaches the threshold, which
needs ``min(area) / max(area) >= threshold``, so only faces of compatible size are compared,
and only with the window of priors they overlap. Prior areas differ in the last bit from cell
to cell, so the separable best is then refined on the cells within rounding of it. Every IoU is
computed with the reference's formula and operation order and ties go to the first index, so
the assignment is the reference's (tests/test_retinaface_loss.py compares with a literal port,
duplicated faces and exact ties included).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.retinaface.priors import PriorCache, encode, encode_landm, feature_sizes, point_form
from utils import dist

Size = tuple[int, int]
IGNORE_LABEL = -1   # an ignore region (a low-confidence pseudo box), as in the DSFD loss


def pad_targets(targets: Sequence[Tensor], device) -> tuple[Tensor, Tensor]:
    """List of ``[n_i, 15]`` -> padded ``[B, M, 15]`` (M >= 1) and the validity mask ``[B, M]``."""
    m = max([len(t) for t in targets] + [1])
    padded = torch.zeros(len(targets), m, 15, device=device)
    for b, t in enumerate(targets):     # one copy per image; the maths below is batched
        padded[b, :len(t)] = t.to(device=device, dtype=torch.float32).reshape(-1, 15)
    counts = torch.tensor([len(t) for t in targets], device=device)
    return padded, torch.arange(m, device=device)[None, :] < counts[:, None]


def ignore_rows_first(truths: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Each image's rows with the ignore rows first, the others in their order: the match lets
    the last row win a shared forced prior, so a face keeps its own against an ignore box."""
    order = torch.argsort((truths[..., 4] != IGNORE_LABEL).to(torch.int8), dim=1, stable=True)
    return truths.gather(1, order[..., None].expand_as(truths)), valid.gather(1, order)


def _overlap_1d(lo: Tensor, hi: Tensor, a_lo: Tensor, a_hi: Tensor) -> Tensor:
    """Faces ``[F]`` against prior edges ``[L]`` -> clamped overlaps ``[F, L]``."""
    return (torch.min(hi[:, None], a_hi) - torch.max(lo[:, None], a_lo)).clamp(min=0)


def _window(lo: Tensor, hi: Tensor, a_lo: Tensor, a_hi: Tensor) -> tuple[Tensor, int]:
    """Start ``[n]`` and common length K of a window covering every prior overlapping
    ``[lo, hi]`` (shifted to stay inside the level)."""
    first = torch.searchsorted(a_hi.contiguous(), lo.contiguous(), right=True)
    last = torch.searchsorted(a_lo.contiguous(), hi.contiguous()) - 1
    length = min(max(int((last - first).max()) + 1, 1), len(a_lo))
    return first.clamp(min=0, max=len(a_lo) - length), length


class _VirtualLevel:
    """The priors of one level and one anchor size: a ``fh x fw`` grid at stride ``stride``
    within the prior list, starting at ``start`` (prior of cell t is ``start + stride * t``)."""

    def __init__(self, corners: Tensor, start: int, stride: int, fh: int, fw: int):
        self.start, self.stride, self.fh, self.fw = start, stride, fh, fw
        row0 = corners[start:start + stride * fw:stride]                   # [fw] first row
        col0 = corners[start:start + stride * fw * fh:stride * fw]         # [fh] first column
        self.x1, self.x2 = row0[:, 0], row0[:, 2]
        self.y1, self.y2 = col0[:, 1], col0[:, 3]
        # the reference's area (x2 - x1) * (y2 - y1) per prior, as a [fh, fw] table
        self.area = (self.x2 - self.x1)[None, :] * (self.y2 - self.y1)[:, None]

    def prior_index(self, i: Tensor, j: Tensor) -> Tensor:
        return self.start + self.stride * (i * self.fw + j)


class _FaceList(NamedTuple):
    """The real faces of a padded batch, flattened: ``box [F, 4]``, ``image [F]`` (batch
    index), ``index [F]`` (annotation order within the image), ``area [F]``."""
    box: Tensor
    image: Tensor
    index: Tensor
    area: Tensor


def _best_faces(level: _VirtualLevel, faces: _FaceList, iw: Tensor, ih: Tensor, cand: Tensor,
                overlap: Tensor, face: Tensor) -> None:
    """Max IoU over the candidate faces (and the first face reaching it) of every prior of the
    level, inside each face's window; written into the level's strided slice of ``overlap`` and
    ``face`` ``[B, P]``."""
    f = cand.nonzero().squeeze(1)                                            # [n]
    b, m = faces.image[f], faces.index[f]
    gx1, gy1, gx2, gy2 = faces.box[f].unbind(-1)
    c0, kw = _window(gx1, gx2, level.x1, level.x2)
    r0, kh = _window(gy1, gy2, level.y1, level.y2)
    cols = c0[:, None] + torch.arange(kw, device=c0.device)                 # [n, kw]
    rows = r0[:, None] + torch.arange(kh, device=r0.device)                 # [n, kh]
    inter = iw[f].gather(1, cols)[:, None, :] * ih[f].gather(1, rows)[:, :, None]
    area = level.area[rows[:, :, None], cols[:, None, :]]                    # [n, kh, kw]
    iou = (inter / (faces.area[f][:, None, None] + area - inter)).flatten(1)
    cell = (rows[:, :, None] * level.fw + cols[:, None, :]).flatten(1)      # [n, kh * kw]
    cells = level.fh * level.fw
    flat = b[:, None] * cells + cell
    best = torch.zeros(overlap.shape[0] * cells, device=iou.device)
    best.scatter_reduce_(0, flat.flatten(), iou.flatten(), "amax")
    hit = iou == best[flat]
    big = torch.iinfo(torch.long).max
    first = torch.full_like(best, big, dtype=torch.long)
    first.scatter_reduce_(0, flat[hit], m[:, None].expand_as(hit)[hit], "amin")
    sl = slice(level.start, level.start + level.stride * cells, level.stride)
    overlap[:, sl] = best.view(-1, cells)
    face[:, sl] = first.masked_fill_(first == big, 0).view(-1, cells)


def _near_max_window(o: Tensor) -> tuple[Tensor, int]:
    """Start ``[n]`` and common length of a window over the entries of ``o`` ``[n, L]`` within
    ``NEAR`` (relative) of each row's max (contiguous: an overlap is flat-topped in the
    position)."""
    near = o >= o.amax(1, keepdim=True) * (1 - NEAR)
    length = int(near.sum(1).max())
    return near.float().argmax(1).clamp(max=o.shape[1] - length), length


def _refine_best_prior(level: _VirtualLevel, iw: Tensor, ih: Tensor, g_area: Tensor):
    """Exact best IoU ``[n]`` and its first prior ``[n]`` for faces on one level: the reference's
    IoU on every cell whose row and column overlaps are within ``NEAR`` of the maxima (the prior
    areas differ in the last bit, so the best cell need not be the first of the flat top)."""
    r0, kh = _near_max_window(ih)
    c0, kw = _near_max_window(iw)
    rows = (r0[:, None] + torch.arange(kh, device=r0.device))[:, :, None]      # [n, kh, 1]
    cols = (c0[:, None] + torch.arange(kw, device=c0.device))[:, None, :]      # [n, 1, kw]
    inter = iw.gather(1, cols[:, 0]).unsqueeze(1) * ih.gather(1, rows[..., 0]).unsqueeze(2)
    iou = (inter / (g_area[:, None, None] + level.area[rows, cols] - inter)).flatten(1)
    index = level.prior_index(rows, cols).flatten(1)                           # [n, kh * kw]
    top = iou.amax(1, keepdim=True)
    first = torch.where(iou == top, index, torch.iinfo(index.dtype).max).amin(1)
    return top.squeeze(1), first


NEAR = 1e-5     # relative: far above float32 rounding, far below any real IoU difference


@torch.no_grad()
def match(truths: Tensor, valid: Tensor, priors: Tensor, image_size: Size,
          min_sizes: Sequence[Sequence[float]], steps: Sequence[int], threshold: float = 0.35,
          min_iou: float = 0.2) -> tuple[Tensor, Tensor]:
    """truths ``[B, M, 4]`` corner boxes (normalised), valid ``[B, M]``, priors ``[P, 4]``.
    Returns each prior's face ``[B, P]`` and the positive mask ``[B, P]``."""
    B, P = valid.shape[0], priors.shape[0]
    device = priors.device
    corners = point_form(priors)
    fb, fm = valid.nonzero(as_tuple=True)                                    # the F real faces
    box = truths[fb, fm]
    gx1, gy1, gx2, gy2 = box.unbind(-1)
    faces = _FaceList(box, fb, fm, (gx2 - gx1) * (gy2 - gy1))
    overlap = torch.zeros(B, P, device=device)
    face = torch.zeros(B, P, dtype=torch.long, device=device)
    levels, best_iou, best_prior = [], [], []                                # per virtual level
    offset = 0
    for (fh, fw), sizes in zip(feature_sizes(image_size, steps), min_sizes):
        a = len(sizes)
        for k in range(a):
            level = _VirtualLevel(corners, offset + k, a, fh, fw)
            iw = _overlap_1d(gx1, gx2, level.x1, level.x2)                  # [F, fw]
            ih = _overlap_1d(gy1, gy2, level.y1, level.y2)                  # [F, fh]
            levels.append((level, iw, ih))
            # each face's best prior here, to within rounding: IoU grows with iw * ih
            iw_max, j = iw.max(-1)
            ih_max, i = ih.max(-1)
            inter = iw_max * ih_max
            best_iou.append(inter / (faces.area + level.area[i, j] - inter))
            best_prior.append(level.prior_index(i, j))
            # each prior's best face, among faces whose size can reach the threshold here
            a_area = level.area[0, 0]
            bound = torch.min(faces.area, a_area) / torch.max(faces.area, a_area)
            cand = bound >= threshold * (1 - 1e-4)
            if cand.any():
                _best_faces(level, faces, iw, ih, cand, overlap, face)
        offset += fh * fw * a

    # every face's best prior over all levels, exactly: the levels within rounding of the best
    # are refined; equal IoUs go to the first prior, as argmax
    best_iou, best_prior = torch.stack(best_iou, -1), torch.stack(best_prior, -1)   # [F, V]
    top = best_iou.amax(-1, keepdim=True)
    near = (top > 0) & (best_iou >= top * (1 - NEAR))
    for v, (level, iw, ih) in enumerate(levels):
        f = near[:, v].nonzero().squeeze(1)
        if len(f):
            best_iou[f, v], best_prior[f, v] = _refine_best_prior(level, iw[f], ih[f],
                                                                  faces.area[f])
    top = best_iou.amax(-1, keepdim=True)
    forced = torch.where(best_iou == top, best_prior, P).amin(-1)           # [F]
    kept = top.squeeze(-1) >= min_iou                                        # not "hard" faces
    # overlap 2 on the best priors of the kept faces; every face takes its best prior over, the
    # last in annotation order winning (the reference's loop over faces)
    overlap[fb[kept], forced[kept]] = 2.0
    face.view(-1).scatter_reduce_(0, fb * P + forced, fm, "amax", include_self=False)
    has_kept = torch.zeros(B, dtype=torch.bool, device=device)
    has_kept[fb[kept]] = True
    return face, (overlap >= threshold) & has_kept[:, None]


class RetinaFaceLoss(nn.Module):
    """``forward(out, targets, image_size) -> {"loss_loc", "loss_conf", "loss_landm"}``.

    ``out``: the network's output (loc ``[B, P, 4]``, conf ``[B, P, 2]``, landms ``[B, P, 10]``);
    ``targets``: per image ``[n, 15]`` (models/interface.py); ``image_size``: ``(H, W)`` of the
    input. Under DDP the sums are normalised by the positives of the global batch (times the
    world size, since DDP averages gradients), as the project's DSFD loss does.
    """

    def __init__(self, min_sizes=((16, 32), (64, 128), (256, 512)), steps=(8, 16, 32),
                 variances: Sequence[float] = (0.1, 0.2), clip: bool = False,
                 overlap_thresh: float = 0.35, neg_pos: int = 7, loc_weight: float = 2.0,
                 match_min_iou: float = 0.2):
        super().__init__()
        self.min_sizes = tuple(tuple(s) for s in min_sizes)
        self.steps = tuple(steps)
        self.priors = PriorCache(self.min_sizes, self.steps, clip)
        self.variances = tuple(variances)
        self.threshold = overlap_thresh
        self.neg_pos = neg_pos
        self.loc_weight = loc_weight
        self.match_min_iou = match_min_iou

    def forward(self, out, targets, image_size: Size) -> dict[str, Tensor]:
        loc, conf, landms = out.loc.float(), out.conf.float(), out.landms.float()
        priors = self.priors(image_size, loc.device)
        truths, valid = pad_targets(targets, loc.device)
        has_ignore = bool((valid & (truths[..., 4] == IGNORE_LABEL)).any())
        if has_ignore:
            truths, valid = ignore_rows_first(truths, valid)
        face, matched_any = match(truths[..., :4], valid, priors, image_size, self.min_sizes,
                                  self.steps, self.threshold, self.match_min_iou)
        label = truths[..., 4].gather(1, face)                               # [B, P]
        pos = matched_any & (label > 0)                                      # label 0: background
        ignore = matched_any & (label == IGNORE_LABEL) if has_ignore else None
        with_landm = truths[..., 5] >= 0                                     # [B, M]
        pos_landm = pos & with_landm.gather(1, face)

        b, p = pos.nonzero(as_tuple=True)
        matched = truths[b, face[b, p]]                                      # [n_pos, 15]
        loss_l = F.smooth_l1_loss(loc[b, p], encode(matched[:, :4], priors[p], self.variances),
                                  reduction="sum")
        bl, pl = pos_landm.nonzero(as_tuple=True)
        landm_t = encode_landm(truths[bl, face[bl, pl], 5:15], priors[pl], self.variances)
        loss_landm = F.smooth_l1_loss(landms[bl, pl], landm_t, reduction="sum")

        num_pos = pos.sum(1)                                                 # [B]
        chosen = pos | self._hard_negatives(conf, pos, num_pos, ignore)
        loss_c = F.cross_entropy(conf[chosen], pos[chosen].long(), reduction="sum")

        n, n_landm = num_pos.sum().float(), pos_landm.sum().float()
        scale = 1.0
        if dist.is_distributed():
            n, n_landm = dist.all_reduce_sum(n.detach()), dist.all_reduce_sum(n_landm.detach())
            scale = float(dist.world_size())
        n, n_landm = n.clamp(min=1), n_landm.clamp(min=1)
        return {"loss_loc": self.loc_weight * scale * loss_l / n,
                "loss_conf": scale * loss_c / n,
                "loss_landm": scale * loss_landm / n_landm}

    @torch.no_grad()
    def _hard_negatives(self, conf: Tensor, pos: Tensor, num_pos: Tensor,
                        ignore: Tensor | None = None) -> Tensor:
        """The ``neg_pos * num_pos`` (at most P - 1) non-positives of highest background loss;
        never an ignored prior."""
        P = conf.shape[1]
        mining = (torch.logsumexp(conf, -1) - conf[..., 0]).masked_fill_(pos, 0.0)   # [B, P]
        if ignore is not None:
            mining.masked_fill_(ignore, -float("inf"))                                 # last
        num_neg = (self.neg_pos * num_pos).clamp(max=P - 1)                         # [B]
        neg = torch.zeros_like(pos)
        # one topk per power-of-two range of num_neg: topk's cost grows with k, and one crowded
        # image should not make the whole batch pay for its k
        bucket = torch.log2(num_neg.float() + 1).ceil()
        for value in bucket.unique().tolist():
            rows = (bucket == value).nonzero().squeeze(1)
            k = int(num_neg[rows].max())
            if k == 0:
                continue
            top = mining[rows].topk(k, dim=1).indices                                # [b, k]
            keep = torch.arange(k, device=conf.device)[None, :] < num_neg[rows, None]
            neg[rows] = torch.zeros_like(neg[rows]).scatter_(1, top, keep)
        return neg & ~ignore if ignore is not None else neg
