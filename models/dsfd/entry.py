"""DSFD-VGG16's registry entry (HLA-Face's detector; ``models/registry.py`` registers it)."""
from __future__ import annotations

from torch import nn

from models.dsfd.anchors import AnchorGenerator
from models.dsfd.loss import ProgressiveAnchorLoss
from models.dsfd.net import DSFD, export_dsfd_onnx
from models.dsfd.onnx import DsfdDecoder
from models.dsfd.postprocess import postprocess
from models.dsfd.transforms import build_dsfd_dataset
from models.interface import DetectorEntry, InputSpec


def _build(cfg) -> nn.Module:
    return DSFD(num_classes=cfg.NUM_CLASSES, width=cfg.MODEL.WIDTH)


def _criterion(cfg):
    return ProgressiveAnchorLoss(cfg.ANCHOR, cfg.FACE.OVERLAP_THRESH, cfg.LOSS.NEG_POS_RATIOS)


def _postprocess(cfg):
    """The second shot, decoded on the ANCHOR_SIZES2 anchors, then NMS (test time)."""
    anchors = AnchorGenerator(cfg.ANCHOR.STEPS, cfg.ANCHOR.ANCHOR_SIZES2)
    variances = tuple(cfg.ANCHOR.VARIANCE)
    d = cfg.DETECT

    def run(out, image_size):
        priors = anchors(image_size, out.feature_sizes, out.loc_pal2.device)
        return postprocess(out.loc_pal2, out.conf_pal2, priors, variances, d.CONF_THRESH,
                           d.NMS_THRESH, d.NMS_TOP_K, d.TOP_K)
    return run


def _input(cfg) -> InputSpec:
    b, g, r = cfg.AUG.img_mean                   # the config holds the BGR mean
    return InputSpec("RGB", (r, g, b))


def _check(cfg) -> None:
    a = cfg.ANCHOR
    for key in ("STEPS", "ANCHOR_SIZES1", "ANCHOR_SIZES2"):
        if len(a[key]) != 6:
            raise ValueError(f"config key ANCHOR.{key} has {len(a[key])} values; DSFD-VGG has "
                             f"6 detection levels")


def dsfd_entry() -> DetectorEntry:
    return DetectorEntry(build=_build, criterion=_criterion, postprocess=_postprocess,
                         input_spec=_input, num_landmarks=0,
                         preset="configs/models/dsfd_vgg.yaml", check=_check,
                         export_onnx=export_dsfd_onnx, train_dataset=build_dsfd_dataset,
                         onnx_decoder=DsfdDecoder)
