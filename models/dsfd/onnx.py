"""DSFD's ONNX graph (``tools/export_onnx.py``, :func:`models.dsfd.net.export_dsfd_onnx`):
``image`` [1, 3, H, W] RGB minus the mean -> ``loc`` [1, P, 4], ``score`` [1, P], decoded with
the project's anchors and :func:`models.dsfd.postprocess.postprocess`."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from models.dsfd.anchors import AnchorGenerator, vgg_feature_sizes
from models.dsfd.postprocess import postprocess


class DsfdDecoder:
    """``tools/export_onnx.py``'s second-shot graph, with the project's anchors and NMS."""

    num_landmarks = 0

    def __init__(self, cfg):
        self.cfg = cfg
        self.anchors = AnchorGenerator(cfg.ANCHOR.STEPS, cfg.ANCHOR.ANCHOR_SIZES2)
        b, g, r = cfg.AUG.img_mean                     # the config holds the BGR mean
        self.mean = np.array([r, g, b], dtype=np.float32).reshape(1, 3, 1, 1)

    def inputs(self, rgb: np.ndarray) -> dict[str, np.ndarray]:
        return {"image": rgb.transpose(2, 0, 1)[None].astype(np.float32) - self.mean}

    def decode(self, outputs, input_size, image_size) -> Tensor:
        loc, score = torch.from_numpy(outputs["loc"]), torch.from_numpy(outputs["score"])
        h, w = input_size                                       # no padding: the image size
        priors = self.anchors((h, w), vgg_feature_sizes(h, w))
        # two-class logits with the same softmax: [log(1 - p), log(p)]
        logits = torch.stack([torch.log1p(-score), torch.log(score)], -1)
        d = self.cfg.DETECT
        return postprocess(loc, logits, priors, self.cfg.ANCHOR.VARIANCE, d.CONF_THRESH,
                           d.NMS_THRESH, d.NMS_TOP_K, d.TOP_K)[0]
