"""YuNet decoding and NMS, vectorised over the batch (no per-box or per-image Python loop).

The decoding of the official deployments (libfacedetection, OpenCV's ``FaceDetectorYN``) and
of the mmdetection head alike: for stride ``s`` and the cell ``(col, row)`` of a level,

    centre = ((col + dx) * s, (row + dy) * s),   size = (exp(dw) * s, exp(dh) * s),
    landmark k = ((col + kx_k) * s, (row + ky_k) * s).

The score is ``sqrt(cls * obj)`` (the deployed score, ``YUNET.SCORE="sqrt"``) or the mmdetection
test's ``cls * obj`` (``"product"``); the same order either way. Candidates with a score of at
least ``DETECT.CONF_THRESH`` are kept, at most ``DETECT.NMS_TOP_K`` per image by score (-1: all),
then NMS at ``DETECT.NMS_THRESH`` and at most ``DETECT.TOP_K`` per image (-1: all).
``YUNET.NMS_BOXES="opencv"`` runs the NMS on the integer-truncated ``(x, y, w, h)`` boxes, as
``FaceDetectorYN`` does (the reported boxes stay exact); ``"float"`` on the boxes themselves, as
mmdetection does.

Detections are ``[k, 15]`` rows ``x1, y1, x2, y2, score, (lx, ly) x 5``, coordinates divided by
the input width/height, by descending score (the format of ``models/interface.py``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import batched_nms, nms

Size = Sequence[int]


def grid_priors(feature_sizes: Sequence[Size], strides: Sequence[int],
                device=None, dtype=torch.float32) -> Tensor:
    """``[P, 3]``: each cell's top-left corner ``(col * s, row * s)`` and its stride ``s``, the
    levels concatenated in order, cells row-major (mmdetection's point priors, offset 0)."""
    parts = []
    for (h, w), s in zip(feature_sizes, strides):
        ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=dtype),
                                torch.arange(w, device=device, dtype=dtype), indexing="ij")
        parts.append(torch.stack([xs.reshape(-1) * s, ys.reshape(-1) * s,
                                  torch.full((h * w,), float(s), device=device, dtype=dtype)], 1))
    return torch.cat(parts, 0)


def level_sizes(image_size: Size) -> list[tuple[int, int]]:
    """The (H, W) of the three YuNet levels for an input of ``image_size`` (H, W): the stem's
    3x3 stride-2 convolution gives ceil(H / 2), each 2x2 max-pool floors."""
    out = []
    for dim in image_size:
        d = (dim + 1) // 2 // 2 // 2                         # stride 8
        out.append([d, d // 2, d // 4])
    return list(zip(*out))


def decode_boxes(bbox: Tensor, priors: Tensor) -> Tensor:
    """``bbox [..., 4]`` (dx, dy, log w, log h) on ``priors [..., 3]`` -> x1, y1, x2, y2 px."""
    s = priors[..., 2:3]
    centre = bbox[..., :2] * s + priors[..., :2]
    half = bbox[..., 2:].exp() * s * 0.5
    return torch.cat([centre - half, centre + half], -1)


def opencv_nms_boxes(top_left: Tensor, size: Tensor) -> Tensor:
    """The boxes ``FaceDetectorYN`` runs NMS on, ``Rect2i(int(x1), int(y1), int(w), int(h))``
    (C casts truncate toward zero), as x1, y1, x2, y2."""
    xy, wh = top_left.trunc(), size.trunc()
    return torch.cat([xy, xy + wh], 1)


def detect(scores: Tensor, bbox: Tensor, kps: Tensor, priors: Tensor, image_size: Size,
           conf_thresh: float = 0.02, nms_thresh: float = 0.45, top_k: int = -1,
           nms_pre: int = -1, nms_boxes: str = "opencv") -> list[Tensor]:
    """``scores [B, P]``, ``bbox [B, P, 4]``, ``kps [B, P, 10]`` (raw regressions), ``priors
    [P, 3]`` -> per image ``[k, 15]`` detections normalised by ``image_size`` (H, W)."""
    B, P = scores.shape
    flat_scores = scores.reshape(-1)                                           # [B * P]
    if 0 < nms_pre < P:                                      # per-image top candidates first
        top_scores, top_idx = scores.topk(nms_pre, dim=1, sorted=False)       # [B, nms_pre]
        top_idx = top_idx + torch.arange(B, device=scores.device)[:, None] * P
        flat = top_idx.reshape(-1)[(top_scores.reshape(-1) >= conf_thresh)]
    else:
        flat = (flat_scores >= conf_thresh).nonzero().squeeze(1)              # [M]
    img_idx, cell = flat // P, flat % P
    score = flat_scores[flat].float()
    pri = priors[cell]                                                         # [M, 3]
    reg = bbox.reshape(B * P, -1)[flat].float()                                # [M, 4]
    # centre and landmarks share the decoding: (col + d) * s = d * s + col * s
    pts = torch.cat([reg[:, :2], kps.reshape(B * P, -1)[flat].float()], 1)
    pts = pts.view(len(flat), 6, 2) * pri[:, None, 2:] + pri[:, None, :2]     # [M, 6, 2]
    half = reg[:, 2:].exp() * pri[:, 2:] * 0.5                                 # [M, 2]
    boxes = torch.cat([pts[:, 0] - half, pts[:, 0] + half], 1)                 # [M, 4]
    nms_input = opencv_nms_boxes(boxes[:, :2], 2 * half) if nms_boxes == "opencv" else boxes
    if B == 1:
        keep = nms(nms_input, score, nms_thresh)                               # score desc
    else:
        keep = batched_nms(nms_input, score, img_idx, nms_thresh)
        keep = keep[torch.sort(img_idx[keep], stable=True).indices]            # group by image
    counts = torch.bincount(img_idx[keep], minlength=B) if B > 1 else keep.new_tensor([len(keep)])
    if top_k > 0:
        first = torch.cumsum(counts, 0) - counts
        rank = torch.arange(len(keep), device=keep.device) - first[img_idx[keep]]
        keep = keep[rank < top_k]
        counts = counts.clamp(max=top_k)
    h, w = image_size
    scale = torch.tensor([1.0 / w, 1.0 / h] * 2 + [1.0] + [1.0 / w, 1.0 / h] * 5,
                         device=boxes.device)
    rows = torch.cat([boxes[keep], score[keep, None], pts[keep, 1:].flatten(1)], 1) * scale
    return list(rows.split(counts.tolist()))


class YuNetPostprocess:
    """``fn(out, image_size) -> list[Tensor]`` for :class:`models.yunet.net.YuNetOutput` (logits);
    :meth:`from_onnx` does the same for the twelve outputs of the ONNX export (probabilities)."""

    def __init__(self, strides: Sequence[int] = (8, 16, 32), conf_thresh: float = 0.02,
                 nms_thresh: float = 0.45, top_k: int = -1, nms_pre: int = -1,
                 score: str = "sqrt", nms_boxes: str = "opencv"):
        if score not in ("sqrt", "product"):
            raise ValueError(f"score must be 'sqrt' or 'product', not {score!r}")
        if nms_boxes not in ("float", "opencv"):
            raise ValueError(f"nms_boxes must be 'float' or 'opencv', not {nms_boxes!r}")
        self.strides = tuple(strides)
        self.conf_thresh, self.nms_thresh = float(conf_thresh), float(nms_thresh)
        self.top_k, self.nms_pre = int(top_k), int(nms_pre)
        self.score, self.nms_boxes = score, nms_boxes
        self._priors: dict = {}

    def priors(self, feature_sizes, device) -> Tensor:
        key = (tuple(map(tuple, feature_sizes)), str(device))
        if key not in self._priors:
            self._priors[key] = grid_priors(feature_sizes, self.strides, device)
        return self._priors[key]

    def _run(self, cls_p: Tensor, obj_p: Tensor, bbox: Tensor, kps: Tensor, feature_sizes,
             image_size) -> list[Tensor]:
        """``cls_p``, ``obj_p`` ``[B, P]`` probabilities in [0, 1]."""
        scores = cls_p * obj_p
        if self.score == "sqrt":
            scores = scores.sqrt()
        return detect(scores, bbox, kps, self.priors(feature_sizes, scores.device), image_size,
                      self.conf_thresh, self.nms_thresh, self.top_k, self.nms_pre,
                      self.nms_boxes)

    @torch.no_grad()
    def __call__(self, out, image_size) -> list[Tensor]:
        cls_p = torch.cat(out.cls, 1)[..., 0].float().sigmoid()
        obj_p = torch.cat(out.obj, 1)[..., 0].float().sigmoid()
        return self._run(cls_p, obj_p, torch.cat(out.bbox, 1), torch.cat(out.kps, 1),
                         out.feature_sizes, image_size)

    @torch.no_grad()
    def from_onnx(self, outputs: Sequence, image_size) -> list[Tensor]:
        """``outputs``: ``cls_8 .. kps_32`` as the ONNX session returns them (numpy arrays or
        tensors) for an input of ``image_size`` (H, W); the official network needs multiples
        of 32, ours takes any size."""
        t = [torch.from_numpy(o) if isinstance(o, np.ndarray) else o for o in outputs]
        n = len(self.strides)
        sizes = level_sizes(image_size)
        # the deployed code clamps the sigmoids to [0, 1] (they can round past 1 in fp16)
        cls_p = torch.cat(t[:n], 1)[..., 0].float().clamp(0, 1)
        obj_p = torch.cat(t[n:2 * n], 1)[..., 0].float().clamp(0, 1)
        return self._run(cls_p, obj_p, torch.cat(t[2 * n:3 * n], 1), torch.cat(t[3 * n:], 1),
                         sizes, image_size)


def postprocess(cfg) -> YuNetPostprocess:
    """The post-processing of ``cfg``: DETECT thresholds and limits, YUNET score and NMS mode."""
    d, y = cfg.DETECT, cfg.YUNET
    return YuNetPostprocess(y.STRIDES, d.CONF_THRESH, d.NMS_THRESH, d.TOP_K, d.NMS_TOP_K,
                            y.SCORE, y.NMS_BOXES)
