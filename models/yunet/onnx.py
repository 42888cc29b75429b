"""The official YuNet ONNX layout (libfacedetection.train's export,
:func:`models.yunet.net.export_yunet_onnx`): ``input`` [N, 3, H, W] BGR in 0..255, H and W
multiples of 32 (the image is zero-padded bottom/right, as ``cv2.FaceDetectorYN`` does) -> per
stride s in 8, 16, 32: ``cls_s``, ``obj_s`` [N, HW, 1] (sigmoids applied), ``bbox_s`` [N, HW,
4], ``kps_s`` [N, HW, 10]; decoded by :meth:`models.yunet.postprocess.YuNetPostprocess.from_onnx`,
the PyTorch path's post-processing (score ``YUNET.SCORE``, NMS boxes ``YUNET.NMS_BOXES``)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from torch import Tensor

from models.interface import unpad
from models.yunet.net import OUTPUT_NAMES
from models.yunet.postprocess import YuNetPostprocess

YUNET_STRIDES = (8, 16, 32)
YUNET_DIVISOR = 32


class YuNetDecoder:
    """The official YuNet ONNX layout (module doc), decoded by the PyTorch path's own
    :meth:`models.yunet.postprocess.YuNetPostprocess.from_onnx`, so an export and the network
    give the same detections. Plain values, no config needed: ``top_k`` (candidates into NMS)
    and ``keep_top_k`` (kept after it) <= 0 mean no cap; ``score`` and ``nms_boxes`` as
    ``YUNET.SCORE`` / ``YUNET.NMS_BOXES`` (the defaults: OpenCV ``FaceDetectorYN``'s)."""

    num_landmarks = 5

    def __init__(self, score_thresh: float = 0.02, nms_thresh: float = 0.45,
                 top_k: int = 5000, keep_top_k: int = 750,
                 strides: Sequence[int] = YUNET_STRIDES, divisor: int = YUNET_DIVISOR,
                 score: str = "sqrt", nms_boxes: str = "opencv"):
        self.post = YuNetPostprocess(strides, score_thresh, nms_thresh, keep_top_k, top_k,
                                     score, nms_boxes)
        self.divisor = divisor

    @classmethod
    def from_config(cls, cfg) -> "YuNetDecoder":
        d, y = cfg.DETECT, cfg.YUNET
        return cls(d.CONF_THRESH, d.NMS_THRESH, d.NMS_TOP_K, d.TOP_K, y.STRIDES,
                   score=y.SCORE, nms_boxes=y.NMS_BOXES)

    def inputs(self, rgb: np.ndarray) -> dict[str, np.ndarray]:
        h, w = rgb.shape[:2]
        ph, pw = -h % self.divisor, -w % self.divisor
        x = np.zeros((1, 3, h + ph, w + pw), dtype=np.float32)
        x[0, :, :h, :w] = rgb[..., ::-1].transpose(2, 0, 1)        # BGR, 0..255, no mean
        return {"input": x}

    def decode(self, outputs, input_size, image_size) -> Tensor:
        d = self.post.from_onnx([outputs[name] for name in OUTPUT_NAMES], input_size)[0]
        return unpad(d, input_size, image_size, self.num_landmarks)   # padded: by the image


def yunet_decoder(cfg) -> YuNetDecoder:
    return YuNetDecoder.from_config(cfg)
