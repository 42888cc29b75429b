"""The SSD/DSFD multibox loss (applied to each of the two shots), for a whole batch at once.

Per shot: match anchors to faces (IoU >= 0.35, and every face's best anchor forced positive),
Smooth-L1 on the positives' encoded offsets, cross-entropy on the positives and the hardest
negatives (3 per positive per image), both sums divided by the number of positives.

The reference matches image by image with a dense [faces x anchors] IoU and a Python loop over
faces. Here matching is batched and exploits the anchor grid (one anchor size per level, centres
on a regular grid), which makes it exact and cheap:

* **Each face's best anchor.** On one level the IoU of a face with anchor (i, j) is a monotone
  function of ``ih_i * iw_j`` (row and column overlaps), so the level's best anchor is
  (argmax ih, argmax iw): O(faces x (H + W)) instead of O(faces x H x W).
* **Each anchor's best face** only matters when it reaches the threshold, and
  ``IoU <= min(area) / max(area)``; so on each level only faces whose size is compatible with
  the level's anchor size (one or two levels per face) are compared, and only with the small
  window of anchors they overlap, then scattered to the anchors with a max-reduction.

With exactly representable inputs this equals the reference's dense computation, ties broken by
first index (tests/test_multibox_loss.py checks it against a literal port); on arbitrary floats
the two may differ only between anchors whose IoUs differ in the last bit.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.dsfd.anchors import AnchorGenerator
from layers.box_utils import center_to_corners, encode
from utils import dist

Size = tuple[int, int]


def _box_rows(t: Tensor) -> Tensor:
    """[n, 5] box-and-label rows of a target ([n, 5], [n, 15] or an empty tensor)."""
    return (t if t.dim() == 2 else t.reshape(-1, 5))[:, :5]


def pad_targets(targets: Sequence[Tensor], device) -> tuple[Tensor, Tensor]:
    """List of [n_i, 5] (x1, y1, x2, y2, label) -> padded [B, M, 5] and validity mask [B, M].
    Targets with landmark columns ([n_i, 15]) give their first five columns."""
    counts = torch.tensor([len(t) for t in targets], device=device)
    m = max(int(counts.max()) if len(targets) else 0, 1)
    padded = torch.nn.utils.rnn.pad_sequence(
        [_box_rows(t.to(device=device, dtype=torch.float32)) for t in targets],
        batch_first=True) if len(targets) else torch.zeros(0, 1, 5, device=device)
    if padded.shape[1] < m:
        padded = F.pad(padded, (0, 0, 0, m - padded.shape[1]))
    valid = torch.arange(m, device=device)[None, :] < counts[:, None]
    return padded, valid


def _overlaps_1d(lo: Tensor, hi: Tensor, a_lo: Tensor, a_hi: Tensor) -> Tensor:
    """Interval overlaps: faces [B, M] against anchor coordinates [L] -> [B, M, L]."""
    return (torch.min(hi[..., None], a_hi) - torch.max(lo[..., None], a_lo)).clamp(min=0)


@torch.no_grad()
def match_anchors(truths: Tensor, valid: Tensor, priors: Tensor,
                  feature_sizes: Sequence[Size], threshold: float) -> tuple[Tensor, Tensor]:
    """Assign a face to every anchor, as the reference's ``match_ssd``.

    truths [B, M, 4] corner boxes (normalised), valid [B, M], priors [P, 4] centre form.
    Returns ``best_idx`` [B, P] (the face index per anchor) and ``positive`` [B, P] (bool).
    """
    B, M = valid.shape
    P = priors.shape[0]
    device = priors.device
    a = center_to_corners(priors)                                   # [P, 4]
    a_area = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])              # [P]
    gx1, gy1, gx2, gy2 = truths.unbind(-1)                          # [B, M] each
    g_area = (gx2 - gx1) * (gy2 - gy1)

    level_iou, level_idx, offset = [], [], 0
    best_overlap = torch.zeros(B, P, device=device)
    best_idx = torch.zeros(B, P, dtype=torch.long, device=device)
    for fh, fw in feature_sizes:
        n = fh * fw
        ax1, ax2 = a[offset:offset + fw, 0], a[offset:offset + fw, 2]          # [fw]
        ay1, ay2 = a[offset:offset + n:fw, 1], a[offset:offset + n:fw, 3]      # [fh]
        iw = _overlaps_1d(gx1, gx2, ax1, ax2)                        # [B, M, fw]
        ih = _overlaps_1d(gy1, gy2, ay1, ay2)                        # [B, M, fh]

        # each face's best anchor on this level: (argmax ih, argmax iw)
        iw_max, j = iw.max(-1)
        ih_max, i = ih.max(-1)
        inter = ih_max * iw_max
        idx = torch.where(inter > 0, offset + i * fw + j, torch.full_like(i, offset))
        level_iou.append(inter / (g_area + a_area[idx] - inter))
        level_idx.append(idx)

        # each anchor's best face, among the faces whose size could reach the threshold here
        level_area = a_area[offset]
        bound = torch.min(g_area, level_area) / torch.max(g_area, level_area)
        cand = valid & (bound >= threshold * (1 - 1e-4))             # [B, M]
        if cand.any():
            grid = _LevelGrid(ax1, ax2, ay1, ay2, a_area[offset:offset + n])
            _best_face_on_level(grid, truths, g_area, ih, iw, cand,
                                best_overlap[:, offset:offset + n], best_idx[:, offset:offset + n])
        offset += n

    # the reference forces each face's best anchor: overlap 2, and the last face wins a tie
    level_iou = torch.stack(level_iou, -1)                           # [B, M, levels]
    best_level = level_iou.argmax(-1, keepdim=True)
    forced = torch.stack(level_idx, -1).gather(-1, best_level).squeeze(-1)    # [B, M]
    forced = torch.where(valid, forced, torch.full_like(forced, P))           # padding -> dummy
    overlap = F.pad(best_overlap, (0, 1)).scatter_(1, forced, 2.0)[:, :P]
    face = torch.arange(M, device=device).expand(B, M)
    best_idx = F.pad(best_idx, (0, 1)).scatter_reduce_(1, forced, face, "amax",
                                                       include_self=False)[:, :P]
    return best_idx, overlap >= threshold


class _LevelGrid(NamedTuple):
    ax1: Tensor     # [fw] anchor column left edges
    ax2: Tensor     # [fw] right edges
    ay1: Tensor     # [fh] anchor row top edges
    ay2: Tensor     # [fh] bottom edges
    area: Tensor    # [fh * fw] anchor areas, as the dense IoU computes them


def _window(lo: Tensor, hi: Tensor, a_lo: Tensor, a_hi: Tensor) -> tuple[Tensor, int]:
    """First anchor index and a common length K such that [first, first + K) covers every anchor
    overlapping [lo, hi] (faces [n]); the window is shifted to stay inside the level."""
    a_lo, a_hi, lo, hi = (t.contiguous() for t in (a_lo, a_hi, lo, hi))
    first = torch.searchsorted(a_hi, lo, right=True)                 # first with a_hi > lo
    last = torch.searchsorted(a_lo, hi) - 1                          # last with a_lo < hi
    length = min(max(int((last - first).max()) + 1, 1), len(a_lo))
    first = first.clamp(min=0, max=len(a_lo) - length)
    return first, length


def _best_face_on_level(grid: _LevelGrid, truths: Tensor, g_area: Tensor, ih: Tensor, iw: Tensor,
                        cand: Tensor, out_overlap: Tensor, out_idx: Tensor) -> None:
    """Per-anchor max IoU over the candidate faces of one level, computed only inside each
    face's window of overlapping anchors; writes ``out_overlap`` and ``out_idx`` [B, fh*fw]."""
    fw = len(grid.ax1)
    b, m = cand.nonzero(as_tuple=True)                               # candidates [n], by (b, m)
    gx1, gy1, gx2, gy2 = truths[b, m].unbind(-1)
    c0, kw = _window(gx1, gx2, grid.ax1, grid.ax2)
    r0, kh = _window(gy1, gy2, grid.ay1, grid.ay2)
    cols = c0[:, None] + torch.arange(kw, device=c0.device)          # [n, kw]
    rows = r0[:, None] + torch.arange(kh, device=r0.device)          # [n, kh]
    inter = ih[b, m].gather(1, rows)[:, :, None] * iw[b, m].gather(1, cols)[:, None, :]
    anchor = (rows[:, :, None] * fw + cols[:, None, :]).flatten(1)  # [n, kh*kw] level indices
    union = (g_area[b, m][:, None] + grid.area[anchor]) - inter.flatten(1)
    iou = inter.flatten(1) / union                                   # [n, kh*kw]
    # scatter per image: the max IoU, then the first face (in annotation order) reaching it
    flat = b[:, None] * out_overlap.shape[1] + anchor
    best = torch.zeros(out_overlap.numel(), device=iou.device)
    best.scatter_reduce_(0, flat.flatten(), iou.flatten(), "amax")
    hit = iou == best[flat]
    big = truths.shape[1]
    first = torch.full((out_overlap.numel(),), big, dtype=torch.long, device=iou.device)
    first.scatter_reduce_(0, flat[hit], m[:, None].expand_as(hit)[hit], "amin")
    out_overlap.copy_(best.view_as(out_overlap))
    out_idx.copy_(first.masked_fill_(first == big, 0).view_as(out_idx))


IGNORE_LABEL = -1      # a target row to ignore (a low-confidence pseudo box): docs/DUAL_TEACHER.md


def ignore_rows_first(truths: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Reorder each image's rows [B, M, C] (and ``valid`` [B, M]) so that ignore rows come
    first, the others keeping their order. The match forces each row's best anchor and the
    last row wins a shared one: this way a face keeps its forced anchor against an ignore box."""
    order = torch.argsort((truths[..., 4] != IGNORE_LABEL).to(torch.int8), dim=1, stable=True)
    return truths.gather(1, order[..., None].expand_as(truths)), valid.gather(1, order)


def ignored_anchors(pos: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Split the matched anchors ``pos`` [B, P] by the label of their row (``labels`` [B, P],
    gathered by the match): those matched to an ignore row (label -1) become ``ignore``, neither
    positive nor available as mined negatives; returns ``(ignore, pos without them)``.

    Ignore rows are matched exactly like faces (IoU >= the threshold, and each row's best anchor
    forced, faces winning a shared forced anchor: :func:`ignore_rows_first`), so an anchor is
    ignored when its best match among *all* rows is an ignore box. Only used when a batch has
    ignore rows: without them the loss is the reference's, bit for bit.
    """
    ignore = pos & (labels == IGNORE_LABEL)
    return ignore, pos & ~ignore


class MultiBoxLoss(nn.Module):
    """Localisation and confidence losses of one shot (the detection loss sums both shots).

    ``forward(loc [B,P,4], conf [B,P,C], priors [P,4], targets, feature_sizes)`` returns
    ``(loss_l, loss_c)``. Under DDP the sums are normalised by the positives of the *global*
    batch (times the world size, since DDP averages gradients), so a step equals the
    single-process step on the same global batch (docs/DECISIONS.md). Target rows labelled -1
    are ignore regions (:func:`ignored_anchors`): their anchors count neither as positives nor
    as negatives.
    """

    def __init__(self, overlap_thresh: float = 0.35, neg_pos_ratio: int = 3,
                 variances: Sequence[float] = (0.1, 0.2)):
        super().__init__()
        self.threshold = overlap_thresh
        self.neg_pos_ratio = neg_pos_ratio
        self.variances = tuple(variances)

    def forward(self, loc: Tensor, conf: Tensor, priors: Tensor, targets, feature_sizes):
        loc, conf = loc.float(), conf.float()
        B, P = conf.shape[:2]
        truths, valid = targets if isinstance(targets, tuple) else pad_targets(targets, loc.device)
        has_ignore = bool((valid & (truths[..., 4] == IGNORE_LABEL)).any())
        if has_ignore:
            truths, valid = ignore_rows_first(truths, valid)
        best_idx, pos = match_anchors(truths[..., :4], valid, priors, feature_sizes,
                                      self.threshold)
        labels = truths[..., 4].long().gather(1, best_idx)          # [B, P]
        ignore = None
        if has_ignore:
            ignore, pos = ignored_anchors(pos, labels)
        conf_t = torch.where(pos, labels, torch.zeros_like(labels))
        num_pos = pos.sum(1)                                         # [B]

        # localisation: Smooth-L1 over the positives' encoded offsets
        b_idx, p_idx = pos.nonzero(as_tuple=True)
        matched = truths[b_idx, best_idx[b_idx, p_idx], :4]
        loc_t = encode(matched, priors[p_idx], self.variances)
        loss_l = F.smooth_l1_loss(loc[b_idx, p_idx], loc_t, reduction="sum")

        # hard negative mining: the num_neg highest-loss non-positives of each image
        neg = self._hard_negatives(conf, conf_t, pos, num_pos, ignore)
        chosen = pos | neg
        loss_c = F.cross_entropy(conf[chosen], conf_t[chosen], reduction="sum")

        n = num_pos.sum().float()
        scale = 1.0
        if dist.is_distributed():
            n = dist.all_reduce_sum(n.detach())
            scale = dist.world_size()
            if n == 0:
                n = torch.tensor(float(B * scale), device=loc.device)
        elif n == 0:
            n = torch.tensor(float(B), device=loc.device)
        return loss_l * scale / n, loss_c * scale / n

    @torch.no_grad()
    def _hard_negatives(self, conf: Tensor, conf_t: Tensor, pos: Tensor, num_pos: Tensor,
                        ignore: Tensor | None = None):
        P = conf.shape[1]
        mining = torch.logsumexp(conf, -1) - conf.gather(-1, conf_t[..., None]).squeeze(-1)
        mining.masked_fill_(pos, 0.0)                                # [B, P]
        if ignore is not None:                                       # ranked last, never kept
            mining.masked_fill_(ignore, -float("inf"))
        num_neg = (self.neg_pos_ratio * num_pos).clamp(max=P - 1)    # [B]
        k = int(num_neg.max())
        neg = torch.zeros_like(pos)
        if k > 0:
            top = mining.topk(k, dim=1).indices                      # [B, k]
            keep = torch.arange(k, device=conf.device)[None, :] < num_neg[:, None]
            neg.scatter_(1, top, keep)
        if ignore is not None:
            neg &= ~ignore
        return neg


class ProgressiveAnchorLoss(nn.Module):
    """DSFD's progressive anchor loss: the multibox loss on both shots, summed with weight 1,
    PAL1 on the small anchors (ANCHOR_SIZES1) and PAL2 on the large ones (ANCHOR_SIZES2)."""

    def __init__(self, anchor_cfg, overlap_thresh: float = 0.35, neg_pos_ratio: int = 3):
        super().__init__()
        self.anchors_pal1 = AnchorGenerator(anchor_cfg.STEPS, anchor_cfg.ANCHOR_SIZES1)
        self.anchors_pal2 = AnchorGenerator(anchor_cfg.STEPS, anchor_cfg.ANCHOR_SIZES2)
        self.shot_loss = MultiBoxLoss(overlap_thresh, neg_pos_ratio, anchor_cfg.VARIANCE)

    def forward(self, out, targets, image_size: Size) -> dict[str, Tensor]:
        """``out``: the detector's DSFDOutput; returns the four loss terms by name."""
        padded = pad_targets(targets, out.loc_pal1.device)
        losses = {}
        for shot, loc, conf, anchors in (("pal1", out.loc_pal1, out.conf_pal1, self.anchors_pal1),
                                         ("pal2", out.loc_pal2, out.conf_pal2, self.anchors_pal2)):
            priors = anchors(image_size, out.feature_sizes, loc.device)
            losses[f"loc_{shot}"], losses[f"conf_{shot}"] = self.shot_loss(
                loc, conf, priors, padded, out.feature_sizes)
        return losses
