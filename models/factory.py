"""Detector registry: ``MODEL.NAME`` -> a :class:`models.detector.DetectorEntry`.

A new detector is one file implementing the interface of ``models/detector.py``, one entry in
:data:`DETECTORS` (a function returning its entry, imported lazily so that importing this
module builds nothing), its training dataset in ``data/detection_datasets.py`` and one preset
file ``configs/models/<name>.yaml``.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from models.detector import DetectorEntry, InputSpec, check_interface


# -- DSFD-VGG16 (HLA-Face's detector) -----------------------------------------------------------

def _dsfd_build(cfg) -> nn.Module:
    from models.dsfd_vgg import DSFD
    return DSFD(num_classes=cfg.NUM_CLASSES, width=cfg.MODEL.WIDTH)


def _dsfd_criterion(cfg):
    from layers.multibox_loss import ProgressiveAnchorLoss
    return ProgressiveAnchorLoss(cfg.ANCHOR, cfg.FACE.OVERLAP_THRESH, cfg.LOSS.NEG_POS_RATIOS)


def _dsfd_postprocess(cfg):
    """The second shot, decoded on the ANCHOR_SIZES2 anchors, then NMS (test time)."""
    from layers.anchors import AnchorGenerator
    from layers.detect import postprocess
    anchors = AnchorGenerator(cfg.ANCHOR.STEPS, cfg.ANCHOR.ANCHOR_SIZES2)
    variances = tuple(cfg.ANCHOR.VARIANCE)
    d = cfg.DETECT

    def run(out, image_size):
        priors = anchors(image_size, out.feature_sizes, out.loc_pal2.device)
        return postprocess(out.loc_pal2, out.conf_pal2, priors, variances, d.CONF_THRESH,
                           d.NMS_THRESH, d.NMS_TOP_K, d.TOP_K)
    return run


def _dsfd_input(cfg) -> InputSpec:
    b, g, r = cfg.AUG.img_mean                   # the config holds the BGR mean
    return InputSpec("RGB", (r, g, b))


def _dsfd_check(cfg) -> None:
    a = cfg.ANCHOR
    for key in ("STEPS", "ANCHOR_SIZES1", "ANCHOR_SIZES2"):
        if len(a[key]) != 6:
            raise ValueError(f"config key ANCHOR.{key} has {len(a[key])} values; DSFD-VGG has "
                             f"6 detection levels")


def _dsfd_export(net, path):
    from models.dsfd_vgg import export_dsfd_onnx
    return export_dsfd_onnx(net, path)


def dsfd_entry() -> DetectorEntry:
    return DetectorEntry(build=_dsfd_build, criterion=_dsfd_criterion,
                         postprocess=_dsfd_postprocess, input_spec=_dsfd_input, num_landmarks=0,
                         preset="", check=_dsfd_check, export_onnx=_dsfd_export)


def _yunet(variant: str) -> Callable[[], DetectorEntry]:
    def entry() -> DetectorEntry:
        from models.yunet import yunet_entry
        return yunet_entry(variant)
    return entry


def _retinaface(variant: str) -> Callable[[], DetectorEntry]:
    def entry() -> DetectorEntry:
        from models.retinaface import retinaface_entry
        return retinaface_entry(variant)
    return entry


DETECTORS: dict[str, Callable[[], DetectorEntry]] = {
    "dsfd_vgg": dsfd_entry,
    "yunet_n": _yunet("yunet_n"),
    "yunet_s": _yunet("yunet_s"),
    "retinaface_mnet": _retinaface("retinaface_mnet"),
    "retinaface_r50": _retinaface("retinaface_r50"),
}


def get_entry(name: str) -> DetectorEntry:
    if name not in DETECTORS:
        raise ValueError(f"config key MODEL.NAME={name!r} is not one of {sorted(DETECTORS)}")
    return DETECTORS[name]()


def build_net(cfg) -> nn.Module:
    """The network of ``cfg.MODEL.NAME``, after checking the config fits it."""
    entry = get_entry(cfg.MODEL.NAME)
    if entry.check is not None:
        entry.check(cfg)
    net = entry.build(cfg)
    check_interface(net)
    return net


def build_detector(model_cfg, num_classes: int = 2) -> nn.Module:
    """Build ``MODEL.NAME`` with ``MODEL.WIDTH`` from the MODEL section alone (DSFD's
    constructor arguments; other detectors need the whole config: :func:`build_net`)."""
    from models.dsfd_vgg import DSFD
    get_entry(model_cfg.NAME)                    # an unknown name is an error naming the key
    if model_cfg.NAME != "dsfd_vgg":
        raise ValueError(f"config key MODEL.NAME={model_cfg.NAME!r}: build it with "
                         f"models.factory.build_net(cfg)")
    return DSFD(num_classes=num_classes, width=model_cfg.WIDTH)


def ssl_input_is_bgr(cfg) -> bool:
    """The task loaders normalise RGB pixels by AUG.img_mean (given B, G, R); a BGR detector
    (YuNet, RetinaFace) reads the same tensors with the channels flipped, which is exact when
    its input mean is AUG.img_mean and it does not scale."""
    spec = get_entry(cfg.MODEL.NAME).input_spec(cfg)
    bgr_mean = tuple(cfg.AUG.img_mean)
    mean = bgr_mean if spec.channel_order == "BGR" else bgr_mean[::-1]
    if tuple(spec.mean) != mean or any(s != 1 for s in spec.std):
        raise ValueError(f"config key AUG.img_mean={list(cfg.AUG.img_mean)} does not match the "
                         f"input normalisation of MODEL.NAME={cfg.MODEL.NAME} (mean "
                         f"{list(spec.mean)} in {spec.channel_order} order, std "
                         f"{list(spec.std)}); the self-supervised loaders would feed it "
                         f"wrongly normalised images")
    return spec.channel_order == "BGR"
