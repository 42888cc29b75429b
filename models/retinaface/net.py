"""RetinaFace (Deng et al., CVPR 2020) as biubug6/Pytorch_Retinaface builds it, key-compatible
with its released ``mobilenet0.25_Final.pth`` and ``Resnet50_Final.pth``.

Module names, ``Sequential`` indices, layer order, paddings, leaky slopes and BatchNorm defaults
are the reference's, so the state_dict is the reference's key for key (300 keys / 426,608
parameters for MobileNet-0.25, 456 / 27,293,600 for ResNet-50; tests/test_retinaface.py checks
both against the shared key tables)::

    body.*        the backbone, cut after its last tapped stage (an intermediate-layer getter)
    fpn.*         three 1x1 laterals (output1..3) and two 3x3 merges, nearest upsampling
    ssh1..3.*     the context modules, one per level (the maps the heads read: :meth:`features`)
    ClassHead.k.conv1x1, BboxHead.k.conv1x1, LandmarkHead.k.conv1x1   1x1 heads, k = 0..2

Heads lay their outputs out anchor-minor within a cell, cells row-major, levels concatenated:
the order of :func:`models.retinaface.priors.prior_boxes`. :meth:`RetinaFace.forward` always
returns logits (the reference's ``phase='train'``); the softmax of its ``phase='test'`` is in
the post-processing and in the exported ONNX graph.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.interface import variant_spec


ANCHORS_PER_CELL = 2          # two square anchor sizes per cell and level (cfg min_sizes)
NUM_LANDMARKS = 5
NARROW_LEAKY = 0.1            # FPN/SSH leaky slope when out_channels <= 64, else 0 (plain ReLU)
MOBILENET_LEAKY = 0.1         # every activation of the MobileNet-0.25 body


@dataclass(frozen=True)
class Spec:
    """One backbone configuration (the reference's ``cfg_mnet`` / ``cfg_re50``)."""
    backbone: str
    return_layers: tuple[str, str, str]     # stride 8, 16, 32 taps
    in_channels: tuple[int, int, int]       # their channels (in_channel * 2, * 4, * 8)
    out_channels: int                       # FPN/SSH width


SPECS = {
    "retinaface_mnet": Spec("mobilenet0.25", ("stage1", "stage2", "stage3"), (64, 128, 256), 64),
    "retinaface_r50": Spec("resnet50", ("layer2", "layer3", "layer4"), (512, 1024, 2048), 256),
}


class RetinaFaceOutput(NamedTuple):
    loc: Tensor             # [N, P, 4] box offsets (cx, cy, log w, log h, variance-scaled)
    conf: Tensor            # [N, P, 2] logits (background, face)
    landms: Tensor          # [N, P, 10] landmark offsets, (x, y) x 5
    feature_sizes: list     # [(H_k, W_k)] of the three levels; the priors need only H, W


# ---- building blocks (the reference's models/net.py, same Sequential indices) -----------------

def conv_bn(inp: int, oup: int, stride: int = 1, leaky: float = 0.0) -> nn.Sequential:
    """3x3 conv (padding 1, no bias) + BN + LeakyReLU: keys ``.0`` conv, ``.1`` BN."""
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup),
                         nn.LeakyReLU(negative_slope=leaky, inplace=True))


def conv_bn_no_relu(inp: int, oup: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup))


def conv_bn1x1(inp: int, oup: int, stride: int = 1, leaky: float = 0.0) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 1, stride, padding=0, bias=False),
                         nn.BatchNorm2d(oup), nn.LeakyReLU(negative_slope=leaky, inplace=True))


def conv_dw(inp: int, oup: int, stride: int, leaky: float = MOBILENET_LEAKY) -> nn.Sequential:
    """Depthwise 3x3 + BN + act (``.0-.2``), pointwise 1x1 + BN + act (``.3-.5``)."""
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False), nn.BatchNorm2d(inp),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True))


class MobileNetV1(nn.Module):
    """MobileNet-0.25 as the reference's ``models/net.py``, without its ImageNet pooling and
    classifier (the intermediate-layer getter drops them; the checkpoints do not hold them)."""

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(conv_bn(3, 8, 2, leaky=MOBILENET_LEAKY), conv_dw(8, 16, 1),
                                    conv_dw(16, 32, 2), conv_dw(32, 32, 1), conv_dw(32, 64, 2),
                                    conv_dw(64, 64, 1))                            # stride 8
        self.stage2 = nn.Sequential(conv_dw(64, 128, 2),
                                    *[conv_dw(128, 128, 1) for _ in range(5)])     # stride 16
        self.stage3 = nn.Sequential(conv_dw(128, 256, 2), conv_dw(256, 256, 1))    # stride 32


class IntermediateLayers(nn.ModuleDict):
    """The children of ``model`` up to the last of ``return_layers``, run in order; ``forward``
    returns the outputs of ``return_layers`` (torchvision's IntermediateLayerGetter, as a list)."""

    def __init__(self, model: nn.Module, return_layers: tuple[str, ...]):
        wanted = set(return_layers)
        layers = {}
        for name, module in model.named_children():
            layers[name] = module
            wanted.discard(name)
            if not wanted:
                break
        if wanted:
            raise ValueError(f"{type(model).__name__} has no children {sorted(wanted)}")
        super().__init__(layers)
        self.return_layers = tuple(return_layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        out = []
        for name, module in self.items():
            x = module(x)
            if name in self.return_layers:
                out.append(x)
        return out


def build_body(spec: Spec) -> IntermediateLayers:
    if spec.backbone == "mobilenet0.25":
        return IntermediateLayers(MobileNetV1(), spec.return_layers)
    if spec.backbone == "resnet50":
        import torchvision
        return IntermediateLayers(torchvision.models.resnet50(weights=None), spec.return_layers)
    raise ValueError(f"unknown RetinaFace backbone {spec.backbone!r}")


class FPN(nn.Module):
    """Top-down path: 1x1 laterals, nearest upsampling to the finer map, sum, 3x3 merge."""

    def __init__(self, in_channels: tuple[int, int, int], out_channels: int):
        super().__init__()
        leaky = NARROW_LEAKY if out_channels <= 64 else 0.0
        self.output1 = conv_bn1x1(in_channels[0], out_channels, leaky=leaky)
        self.output2 = conv_bn1x1(in_channels[1], out_channels, leaky=leaky)
        self.output3 = conv_bn1x1(in_channels[2], out_channels, leaky=leaky)
        self.merge1 = conv_bn(out_channels, out_channels, leaky=leaky)
        self.merge2 = conv_bn(out_channels, out_channels, leaky=leaky)

    def forward(self, taps: list[Tensor]) -> list[Tensor]:
        output1, output2 = self.output1(taps[0]), self.output2(taps[1])
        output3 = self.output3(taps[2])
        up3 = F.interpolate(output3, size=output2.shape[-2:], mode="nearest")
        output2 = self.merge2(output2 + up3)
        up2 = F.interpolate(output2, size=output1.shape[-2:], mode="nearest")
        output1 = self.merge1(output1 + up2)
        return [output1, output2, output3]


class SSH(nn.Module):
    """Single-stage context module: 3x3 (C/2), 5x5 as two 3x3 (C/4), 7x7 as three 3x3 sharing
    the first (C/4); concatenated, then ReLU."""

    def __init__(self, in_channel: int, out_channel: int):
        super().__init__()
        if out_channel % 4:
            raise ValueError(f"SSH width {out_channel} is not a multiple of 4")
        leaky = NARROW_LEAKY if out_channel <= 64 else 0.0
        self.conv3X3 = conv_bn_no_relu(in_channel, out_channel // 2)
        self.conv5X5_1 = conv_bn(in_channel, out_channel // 4, leaky=leaky)
        self.conv5X5_2 = conv_bn_no_relu(out_channel // 4, out_channel // 4)
        self.conv7X7_2 = conv_bn(out_channel // 4, out_channel // 4, leaky=leaky)
        self.conv7x7_3 = conv_bn_no_relu(out_channel // 4, out_channel // 4)

    def forward(self, x: Tensor) -> Tensor:
        c5_1 = self.conv5X5_1(x)
        out = torch.cat([self.conv3X3(x), self.conv5X5_2(c5_1),
                         self.conv7x7_3(self.conv7X7_2(c5_1))], dim=1)
        return F.relu(out)


class _Head(nn.Module):
    """One level's 1x1 head: ``[N, C, H, W]`` -> ``[N, H * W * A, values]`` (anchor-minor)."""

    def __init__(self, in_channels: int, values: int, num_anchors: int = ANCHORS_PER_CELL):
        super().__init__()
        self.values = values
        self.conv1x1 = nn.Conv2d(in_channels, num_anchors * values, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.values)


def _heads(in_channels: int, values: int) -> nn.ModuleList:
    return nn.ModuleList(_Head(in_channels, values) for _ in range(3))


def ssh_features(m: nn.Module, x: Tensor) -> list[Tensor]:
    """body -> fpn -> ssh1..3 of ``m`` (the detector or its key encoder)."""
    p1, p2, p3 = m.fpn(m.body(x))
    return [m.ssh1(p1), m.ssh2(p2), m.ssh3(p3)]


class KeyEncoder(nn.Module):
    """Frozen copy of body, fpn and ssh1..3 (parameter names as in the detector); ``forward``
    equals ``RetinaFace.features``. How its BatchNorm runs for MoCo keys (shuffled across ranks,
    or in eval mode in one process) is decided by ``adapt/hla/moco.py``."""

    PARTS = ("body", "fpn", "ssh1", "ssh2", "ssh3")

    def __init__(self, net: nn.Module):
        super().__init__()
        for name in self.PARTS:
            setattr(self, name, copy.deepcopy(getattr(net, name)))
        self.requires_grad_(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        return ssh_features(self, x)


class RetinaFace(nn.Module):
    """RetinaFace with the MobileNet-0.25 (``"retinaface_mnet"``) or ResNet-50
    (``"retinaface_r50"``) backbone; randomly initialised as the reference's constructor with
    its ImageNet pretraining off (weights are loaded by the caller)."""

    has_batchnorm = True

    def __init__(self, name: str = "retinaface_mnet"):
        super().__init__()
        spec = variant_spec(SPECS, name, "RetinaFace")
        self.name, self.spec = name, spec
        c = spec.out_channels
        self.body = build_body(spec)
        self.fpn = FPN(spec.in_channels, c)
        self.ssh1, self.ssh2, self.ssh3 = SSH(c, c), SSH(c, c), SSH(c, c)
        self.ClassHead = _heads(c, 2)
        self.BboxHead = _heads(c, 4)
        self.LandmarkHead = _heads(c, 2 * NUM_LANDMARKS)
        self.feature_channels = [c, c, c]

    def features(self, x: Tensor) -> list[Tensor]:
        """The SSH outputs ``[N, C, H/8|16|32, W/8|16|32]`` (ceil), the maps the heads read."""
        return ssh_features(self, x)

    def make_key_encoder(self) -> nn.Module:
        return KeyEncoder(self)

    def forward(self, x: Tensor) -> RetinaFaceOutput:
        feats = self.features(x)
        loc = torch.cat([h(f) for h, f in zip(self.BboxHead, feats)], dim=1)
        conf = torch.cat([h(f) for h, f in zip(self.ClassHead, feats)], dim=1)
        landms = torch.cat([h(f) for h, f in zip(self.LandmarkHead, feats)], dim=1)
        return RetinaFaceOutput(loc, conf, landms, [tuple(f.shape[-2:]) for f in feats])


# ---- weights -----------------------------------------------------------------------------------

def load_retinaface_weights(net: nn.Module, path: str | Path) -> None:
    """Strictly load a RetinaFace weights file into ``net`` (through the project's safe loader)."""
    from utils.checkpoint import detector_state_dict, load_file
    net.load_state_dict(detector_state_dict(load_file(path, "RetinaFace weights")), strict=True)


# ---- ONNX --------------------------------------------------------------------------------------

class _TestPhase(nn.Module):
    """The reference's ``phase='test'`` outputs: loc, softmax(conf), landms."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, image: Tensor):
        out = self.net(image)
        return out.loc, torch.softmax(out.conf, dim=-1), out.landms


ONNX_OUTPUTS = ("loc", "conf", "landms")


def export_retinaface_onnx(net: nn.Module, path: str | Path, opset: int = 17,
                           example_size: tuple[int, int] = (96, 128),
                           dynamic: bool = True) -> Path:
    """Export with dynamic batch, height and width; input ``image`` ``[N, 3, H, W]`` (BGR minus
    the mean), outputs ``loc [N, P, 4]``, ``conf [N, P, 2]`` (softmax) and ``landms [N, P, 10]``.
    The TorchScript exporter is used: the torch.export one specialises the upsampling sizes.
    ``dynamic=False``: every size fixed at ``example_size`` (H, W) and batch 1 (the input of
    ``models.onnx_deploy.opencv_graph``)."""
    import warnings
    path = Path(path)
    was_training = net.training
    net.eval()
    example = torch.zeros(1, 3, *example_size)
    anchors = {0: "batch", 1: "anchors"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_TestPhase(net), (example,), str(path), dynamo=False,
                              input_names=["image"], output_names=list(ONNX_OUTPUTS),
                              dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                            **{name: anchors for name in ONNX_OUTPUTS}}
                              if dynamic else None,
                              opset_version=opset)
    finally:
        net.train(was_training)
    return path
