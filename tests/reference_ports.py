"""Literal, slow ports of the reference's per-image algorithms, used only as test oracles.

Written straight from REFERENCE.md section 4 (``match_ssd`` + MultiBoxLoss) and 3.7 (Detect):
one image at a time, dense IoU, a Python loop over faces, sort-based hard-negative mining.
"""
import torch
import torch.nn.functional as F

from layers.box_utils import box_iou, center_to_corners, encode


def match_ssd(threshold, truths, priors, labels):
    """Returns (best_truth_idx [P], conf [P]) for one image."""
    overlaps = box_iou(truths, center_to_corners(priors))            # [M, P]
    best_prior_overlap, best_prior_idx = overlaps.max(1)
    best_truth_overlap, best_truth_idx = overlaps.max(0)
    best_truth_overlap = best_truth_overlap.clone()
    best_truth_overlap.index_fill_(0, best_prior_idx, 2)
    for j in range(best_prior_idx.size(0)):
        best_truth_idx[best_prior_idx[j]] = j
    conf = labels[best_truth_idx].long()
    conf[best_truth_overlap < threshold] = 0
    return best_truth_idx, conf


def multibox_loss(loc, conf, priors, targets, threshold=0.35, negpos=3, variances=(0.1, 0.2)):
    B, P = conf.shape[:2]
    loc_t = torch.zeros(B, P, 4)
    conf_t = torch.zeros(B, P, dtype=torch.long)
    for b, t in enumerate(targets):
        if len(t) == 0:        # the reference never sees an image without faces
            continue
        idx, c = match_ssd(threshold, t[:, :4], priors, t[:, 4])
        loc_t[b] = encode(t[idx, :4], priors, variances)
        conf_t[b] = c
    pos = conf_t > 0
    loss_l = F.smooth_l1_loss(loc[pos], loc_t[pos], reduction="sum")
    batch_conf = conf.reshape(-1, conf.shape[-1])
    x_max = batch_conf.max()
    lse = torch.log(torch.sum(torch.exp(batch_conf - x_max), 1)) + x_max
    loss_c = (lse - batch_conf.gather(1, conf_t.view(-1, 1)).squeeze(1)).view(B, P)
    loss_c[pos] = 0
    _, loss_idx = loss_c.sort(1, descending=True)
    _, idx_rank = loss_idx.sort(1)
    num_pos = pos.long().sum(1, keepdim=True)
    num_neg = torch.clamp(negpos * num_pos, max=P - 1)
    neg = idx_rank < num_neg.expand_as(idx_rank)
    chosen = pos | neg
    loss_c = F.cross_entropy(conf[chosen], conf_t[chosen], reduction="sum")
    n = num_pos.sum().float()
    if n == 0:
        n = torch.tensor(float(B))
    return loss_l / n, loss_c / n, conf_t, neg


def greedy_nms(boxes, scores, overlap=0.3, top_k=5000):
    """ssd.pytorch-style NMS: the top_k highest scores, highest first; suppress IoU > overlap."""
    keep = []
    x1, y1, x2, y2 = boxes.unbind(1)
    area = (x2 - x1) * (y2 - y1)
    idx = scores.argsort()[-top_k:]
    while idx.numel() > 0:
        i = idx[-1]
        keep.append(int(i))
        idx = idx[:-1]
        if idx.numel() == 0:
            break
        xx1 = x1[idx].clamp(min=float(x1[i]))
        yy1 = y1[idx].clamp(min=float(y1[i]))
        xx2 = x2[idx].clamp(max=float(x2[i]))
        yy2 = y2[idx].clamp(max=float(y2[i]))
        inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
        iou = inter / (area[idx] - inter + area[i])
        idx = idx[iou.le(overlap)]
    return keep


def detect(loc, conf, priors, variances=(0.1, 0.2), conf_thresh=0.05, nms_thresh=0.3,
           nms_top_k=5000, top_k=750):
    """The reference's Detect, one image at a time: rows (x1, y1, x2, y2, score)."""
    from layers.box_utils import decode
    out = []
    scores_all = torch.softmax(conf, -1)[..., 1]
    for b in range(loc.shape[0]):
        boxes = decode(loc[b], priors, variances)
        mask = scores_all[b] > conf_thresh
        boxes_b, scores_b = boxes[mask], scores_all[b][mask]
        if scores_b.numel() == 0:
            out.append(torch.zeros(0, 5))
            continue
        keep = greedy_nms(boxes_b, scores_b, nms_thresh, nms_top_k)[:top_k]
        out.append(torch.cat([boxes_b[keep], scores_b[keep, None]], 1))
    return out
