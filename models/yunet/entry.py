"""YuNet's registry entry (``yunet_n``, ``yunet_s``; ``models/registry.py`` registers it)."""
from __future__ import annotations

from torch import nn

from models.interface import DetectorEntry, InputSpec, variant_spec
from models.yunet.loss import YuNetLoss
from models.yunet.net import (NUM_LANDMARKS, STRIDES, VARIANTS, YuNet, export_yunet_onnx,
                              load_yunet_weights)
from models.yunet.onnx import yunet_decoder
from models.yunet.postprocess import postprocess as make_postprocess
from models.yunet.transforms import build_yunet_dataset

def _check(cfg) -> None:
    y = cfg.YUNET
    if list(y.STRIDES) != list(STRIDES):
        raise ValueError(f"config key YUNET.STRIDES={list(y.STRIDES)}: the YuNet network has "
                         f"levels at strides {list(STRIDES)}")
    if y.INPUT_SIZE <= 0 or y.INPUT_SIZE % 32:
        raise ValueError(f"config key YUNET.INPUT_SIZE={y.INPUT_SIZE} must be a positive "
                         f"multiple of 32")
    if not y.CROP_CHOICE or min(y.CROP_CHOICE) <= 0:
        raise ValueError(f"config key YUNET.CROP_CHOICE={list(y.CROP_CHOICE)} needs positive "
                         f"scales")
    for key, allowed in (("SCORE", ("sqrt", "product")), ("NMS_BOXES", ("float", "opencv")),
                         ("BOX_LOSS", ("eiou", "diou"))):
        if y[key] not in allowed:
            raise ValueError(f"config key YUNET.{key}={y[key]!r} is not one of {allowed}")


def yunet_entry(variant: str) -> DetectorEntry:
    """The registry entry of ``yunet_n`` or ``yunet_s`` (see ``models/interface.py``)."""
    variant_spec(VARIANTS, variant, "YuNet")

    def build(cfg) -> nn.Module:
        return YuNet(variant)

    def criterion(cfg):
        return YuNetLoss.from_config(cfg)

    def input_spec(cfg) -> InputSpec:
        return InputSpec("BGR", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), size_divisor=32)

    def export_opencv(net, path, size, opset):
        export_yunet_onnx(net, path, dynamic=False, size=size, opset=opset)

    return DetectorEntry(build=build, criterion=criterion, postprocess=make_postprocess,
                         input_spec=input_spec,
                         num_landmarks=NUM_LANDMARKS, preset=f"configs/models/{variant}.yaml",
                         check=_check, export_onnx=export_yunet_onnx,
                         extra={"load_weights": load_yunet_weights},
                         train_dataset=build_yunet_dataset, onnx_decoder=yunet_decoder,
                         export_opencv=export_opencv)
