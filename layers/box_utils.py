"""Box conversions, IoU and the SSD box encoding with variances (0.1 centre, 0.2 size).

Boxes are ``[..., 4]`` tensors, either corner form ``(x1, y1, x2, y2)`` or centre form
``(cx, cy, w, h)``; anchors ("priors") are always centre form, normalised to [0, 1].
"""
import torch


def center_to_corners(boxes: torch.Tensor) -> torch.Tensor:
    """(cx, cy, w, h) -> (x1, y1, x2, y2)."""
    return torch.cat((boxes[..., :2] - boxes[..., 2:] / 2, boxes[..., :2] + boxes[..., 2:] / 2), -1)


def corners_to_center(boxes: torch.Tensor) -> torch.Tensor:
    """(x1, y1, x2, y2) -> (cx, cy, w, h)."""
    return torch.cat(((boxes[..., 2:] + boxes[..., :2]) / 2, boxes[..., 2:] - boxes[..., :2]), -1)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Plain IoU (no +1 pixel convention) of corner boxes: [A, 4] x [B, 4] -> [A, B]."""
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def encode(matched: torch.Tensor, priors: torch.Tensor, variances) -> torch.Tensor:
    """Regression targets for corner boxes ``matched`` on centre-form ``priors`` ([..., 4])."""
    g_cxcy = ((matched[..., :2] + matched[..., 2:]) / 2 - priors[..., :2]) \
        / (variances[0] * priors[..., 2:])
    g_wh = torch.log((matched[..., 2:] - matched[..., :2]) / priors[..., 2:]) / variances[1]
    return torch.cat((g_cxcy, g_wh), -1)


def decode(loc: torch.Tensor, priors: torch.Tensor, variances) -> torch.Tensor:
    """Inverse of :func:`encode`: offsets [..., 4] on priors -> corner boxes [..., 4]."""
    cxcy = priors[..., :2] + loc[..., :2] * variances[0] * priors[..., 2:]
    wh = priors[..., 2:] * torch.exp(loc[..., 2:] * variances[1])
    return torch.cat((cxcy - wh / 2, cxcy + wh / 2), -1)
