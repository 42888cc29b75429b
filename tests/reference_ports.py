"""Literal, slow ports of the reference's per-image algorithms, used only as test oracles.

Written straight from the reference's ``match_ssd`` + MultiBoxLoss and its ``Detect``:
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


def bbox_vote(det_):
    """The reference's box voting (test.py's ``bbox_vote``), one group per Python iteration."""
    import numpy as np
    order_ = det_[:, 4].ravel().argsort(kind="stable")[::-1]
    det_ = det_[order_, :]
    dets_ = np.zeros((0, 5), dtype=np.float32)
    while det_.shape[0] > 0:
        area_ = (det_[:, 2] - det_[:, 0] + 1) * (det_[:, 3] - det_[:, 1] + 1)
        xx1 = np.maximum(det_[0, 0], det_[:, 0])
        yy1 = np.maximum(det_[0, 1], det_[:, 1])
        xx2 = np.minimum(det_[0, 2], det_[:, 2])
        yy2 = np.minimum(det_[0, 3], det_[:, 3])
        w = np.maximum(0.0, xx2 - xx1 + 1)
        h = np.maximum(0.0, yy2 - yy1 + 1)
        inter = w * h
        o_ = inter / (area_[0] + area_[:] - inter)
        merge_index_ = np.where(o_ >= 0.3)[0]
        det_accu_ = det_[merge_index_, :]
        det_ = np.delete(det_, merge_index_, 0)
        if merge_index_.shape[0] <= 1:
            continue
        det_accu_[:, 0:4] = det_accu_[:, 0:4] * np.tile(det_accu_[:, -1:], (1, 4))
        max_score_ = np.max(det_accu_[:, 4])
        det_accu_sum_ = np.zeros((1, 5))
        det_accu_sum_[:, 0:4] = np.sum(det_accu_[:, 0:4], axis=0) / np.sum(det_accu_[:, -1:])
        det_accu_sum_[:, 4] = max_score_
        dets_ = np.vstack((dets_, det_accu_sum_))
    return dets_[0:750, :]


def multi_scale_detect(detect_face, image):
    """The reference's multi-scale test.py flow around a ``detect_face(image, scale)`` that
    returns pixel rows (with the [0, 0, 0, 0, 0.001] row when nothing is found)."""
    import numpy as np

    def flip_test(image, shrink):
        image_f = image[:, ::-1].copy()
        det_f = detect_face(image_f, shrink)
        det_t = np.zeros(det_f.shape)
        det_t[:, 0] = image.shape[1] - det_f[:, 2]
        det_t[:, 1] = det_f[:, 1]
        det_t[:, 2] = image.shape[1] - det_f[:, 0]
        det_t[:, 3] = det_f[:, 3]
        det_t[:, 4] = det_f[:, 4]
        return det_t

    def big(d):
        return d[np.maximum(d[:, 2] - d[:, 0] + 1, d[:, 3] - d[:, 1] + 1) > 30]

    def small(d):
        return d[np.minimum(d[:, 2] - d[:, 0] + 1, d[:, 3] - d[:, 1] + 1) < 100]

    def multi_scale_test(image, max_im_shrink):
        st = 0.5 if max_im_shrink >= 0.75 else 0.5 * max_im_shrink
        det_s = detect_face(image, st)
        if max_im_shrink > 0.75:
            det_s = np.vstack((det_s, detect_face(image, 0.75)))
        det_s = big(det_s)
        bt = min(2, max_im_shrink) if max_im_shrink > 1 else (st + max_im_shrink) / 2
        det_b = detect_face(image, bt)
        if max_im_shrink > 1.5:
            det_b = np.vstack((det_b, detect_face(image, 1.5)))
        if max_im_shrink > 2:
            bt *= 2
            while bt < max_im_shrink:
                det_b = np.vstack((det_b, detect_face(image, bt)))
                bt *= 2
            det_b = np.vstack((det_b, detect_face(image, max_im_shrink)))
        det_b = small(det_b) if bt > 1 else big(det_b)
        return det_s, det_b

    def pyramid(image, max_shrink):
        det_b = big(detect_face(image, 0.25))
        for s in [1.25, 1.75, 2.25]:
            if s <= max_shrink:
                det_t = detect_face(image, s)
                det_b = np.vstack((det_b, small(det_t) if s > 1 else big(det_t)))
        return det_b

    max_im_shrink = (0x7fffffff / 200.0 / (image.shape[0] * image.shape[1])) ** 0.5
    max_im_shrink = 3 if max_im_shrink > 3 else max_im_shrink
    det0 = detect_face(image, 1)
    det1 = flip_test(image, 1)
    det2, det3 = multi_scale_test(image, max_im_shrink)
    det4 = pyramid(image, max_im_shrink)
    return bbox_vote(np.vstack((det0, det1, det2, det3, det4)))
