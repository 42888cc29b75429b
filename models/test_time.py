"""The reference's test-time protocol (its ``test_code/test.py``): single scale, or multi-scale
+ flip + pyramid passes with size filters, then box voting.

A *pass* resizes the image by ``scale`` (cv2 INTER_LINEAR, as the reference), optionally
flipped, detects, maps boxes back to original pixels and keeps the boxes its size filter allows:
``big`` keeps boxes whose longer side + 1 exceeds 30 px (small scales only see big faces),
``small`` those whose shorter side + 1 is under 100 px (large scales only see small faces).
For a 720x1080 DARK FACE image the multi-scale plan has 11 passes: 1, flipped 1, 0.5, 0.75, 2,
1.5, 3, 0.25, 1.25, 1.75, 2.25.

Images of one size are processed together: each pass runs as one batched forward (split when
``max_batch_pixels`` would be exceeded), so a folder of same-sized images costs 11 batched
passes, not 11 passes per image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from layers.box_fusion import FUSION
from layers.box_voting import box_vote

DUMMY_ROW = np.array([[0.0, 0.0, 0.0, 0.0, 0.001]])   # the reference's "nothing found" row
MIN_INPUT_SIDE = 32     # below this DSFD-VGG's pooling collapses; such a pass finds nothing


@dataclass(frozen=True)
class Pass:
    scale: float
    flip: bool = False
    keep: str = "all"          # all | big | small


def max_image_shrink(height: int, width: int) -> float:
    """The largest scale the reference allows: ``sqrt(0x7fffffff / 200 / (H*W))``, capped at 3."""
    return min(3.0, (0x7fffffff / 200.0 / (height * width)) ** 0.5)


def reference_passes(height: int, width: int, base_scale: float = 1.0) -> list[Pass]:
    """The multi-scale plan of the reference's test.py for an image of this size."""
    m = max_image_shrink(height, width)
    plan = [Pass(base_scale), Pass(base_scale, flip=True)]
    # shrink: only big faces
    st = 0.5 if m >= 0.75 else 0.5 * m
    plan.append(Pass(st, keep="big"))
    if m > 0.75:
        plan.append(Pass(0.75, keep="big"))
    # enlarge: only small faces (or big ones when the "enlargement" is a shrink)
    bt = min(2.0, m) if m > 1 else (st + m) / 2
    enlarge = [bt]
    if m > 1.5:
        enlarge.append(1.5)
    if m > 2:
        bt *= 2
        while bt < m:
            enlarge.append(bt)
            bt *= 2
        enlarge.append(m)
    plan += [Pass(s, keep="small" if bt > 1 else "big") for s in enlarge]
    # pyramid
    plan.append(Pass(0.25, keep="big"))
    plan += [Pass(s, keep="small" if s > 1 else "big") for s in (1.25, 1.75, 2.25) if s <= m]
    return plan


def size_filter(dets: np.ndarray, keep: str) -> np.ndarray:
    if keep == "all":
        return dets
    w = dets[:, 2] - dets[:, 0] + 1
    h = dets[:, 3] - dets[:, 1] + 1
    if keep == "big":
        return dets[np.maximum(w, h) > 30]
    return dets[np.minimum(w, h) < 100]


def resize(rgb: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1:
        return rgb
    return cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)


# the 5-point landmark order of YuNet and RetinaFace: the eyes, the nose, the mouth corners;
# a horizontal flip swaps the two eyes and the two mouth corners
FLIP_LANDMARKS = [1, 0, 2, 4, 3]


def flip_detections(d: np.ndarray, width: int) -> np.ndarray:
    """Pixel detections of a horizontally flipped image, mapped back to the original."""
    d = d.copy()
    d[:, [0, 2]] = width - d[:, [2, 0]]
    if d.shape[1] > 5 and len(d):          # (an empty result has nothing to swap)
        pts = d[:, 5:].reshape(len(d), -1, 2)[:, FLIP_LANDMARKS]
        pts[..., 0] = width - pts[..., 0]
        d[:, 5:] = pts.reshape(len(d), -1)
    return d


class TestTimeDetector:
    """Runs a plan of passes with a :class:`models.inference.FaceDetector`.

    ``vote``: box voting over the union (multi-scale mode); ``dummy_rows``: a pass that finds
    nothing contributes the reference's ``[0, 0, 0, 0, 0.001]`` row (before its size filter and
    the voting), as the reference's ``detect_face`` returns it.
    """

    def __init__(self, detector, vote: bool, dummy_rows: bool, iou_thresh: float = 0.3,
                 top_k: int = 750, max_batch_pixels: int = 16_000_000, landmarks: bool = False):
        self.detector = detector
        self.vote, self.dummy_rows = vote, dummy_rows
        if landmarks and vote:
            raise ValueError("box voting does not vote landmarks: use one scale without voting")
        # columns kept per detection: the box and score, then the landmarks when asked for
        self.columns = 5 + (2 * getattr(detector, "num_landmarks", 0) if landmarks else 0)
        self.iou_thresh, self.top_k = iou_thresh, top_k
        self.max_batch_pixels = max_batch_pixels

    def run_pass(self, images: Sequence[np.ndarray], p: Pass) -> list[np.ndarray]:
        """Pixel detections (float64 [n, 5], or [n, 15] with landmarks) of one pass for
        same-sized images."""
        h, w = images[0].shape[:2]
        if min(round(h * p.scale), round(w * p.scale)) < MIN_INPUT_SIDE:
            empty = DUMMY_ROW.copy() if self.dummy_rows else np.zeros((0, 5))
            return [size_filter(empty, p.keep) for _ in images]
        to_pixels = np.array([w, h, w, h, 1.0] + [w, h] * ((self.columns - 5) // 2))
        batch = [resize(np.ascontiguousarray(img[:, ::-1]) if p.flip else img, p.scale)
                 for img in images]
        per_batch = max(1, self.max_batch_pixels // (batch[0].shape[0] * batch[0].shape[1]))
        results = []
        for start in range(0, len(batch), per_batch):
            for dets in self.detector(np.stack(batch[start:start + per_batch])):
                d = dets[:, :self.columns].numpy().astype(np.float64) * to_pixels
                if len(d) == 0 and self.dummy_rows:
                    d = DUMMY_ROW.copy()
                if p.flip:
                    d = flip_detections(d, w)
                results.append(size_filter(d, p.keep))
        return results

    def __call__(self, images: Sequence[np.ndarray], plan: Sequence[Pass]) -> list[np.ndarray]:
        """Detections per image for same-sized uint8 RGB images."""
        per_pass = [self.run_pass(images, p) for p in plan]
        out = []
        for i in range(len(images)):
            union = np.concatenate([dets[i] for dets in per_pass])
            out.append(box_vote(union, self.iou_thresh, self.top_k) if self.vote else union)
        return out


def pad_columns(d: np.ndarray, width: int) -> np.ndarray:
    """Pad an empty or landmark-less pass result to ``width`` columns (landmarks -1)."""
    if d.shape[1] >= width:
        return d[:, :width]
    return np.concatenate([d, np.full((len(d), width - d.shape[1]), -1.0)], 1)


def merged_passes(runner: TestTimeDetector, sources: list[list[np.ndarray]],
                  plan: list[Pass], method: str, iou: float) -> list[np.ndarray]:
    """Pixel detections ``[n, 5(+2L)]`` per image of one detector: every pass of ``plan`` on
    every source (e.g. the raw images and their brightened copies, the same images in the same
    order), merged as one model by ``FUSION[method]`` when there are several runs (moved here
    from tools/make_pseudo_labels.py, which the night adaptation shares)."""
    runs = [runner.run_pass(images, p) for images in sources for p in plan]   # [run][image]
    width = runner.columns
    out = []
    for i in range(len(sources[0])):
        per_run = [pad_columns(r[i], width) for r in runs]
        if len(per_run) == 1:
            out.append(per_run[0])
        else:
            out.append(FUSION[method]([np.concatenate(per_run)], iou_thr=iou).dets)
    return out
