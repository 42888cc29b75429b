"""DSFD with a VGG16 backbone (yxlijun/DSFD.pytorch), key-compatible with ``dsfd_vgg_0.880.pth``.

Attribute names and ModuleList indices are the reference's (``vgg.31`` is the dilated fc6,
``fpn_fem.3.branch3.4`` and so on); the named index constants below say what each slot is.
``width`` scales every channel count for demos and tests; 1.0 is the released network
(186 tensors, 49,793,432 parameters).
"""
from __future__ import annotations

import copy
import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.dsfd.l2norm import L2Norm

# VGG16 configuration: numbers are 3x3 conv widths, M a 2x2 max-pool (floor), C one with ceil.
VGG_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512, "M"]
# indices in ``self.vgg`` after which the four backbone sources are tapped
TAP_CONV3_3, TAP_CONV4_3, TAP_CONV5_3, TAP_FC7 = 15, 22, 29, 34
SOURCE_CHANNELS = [256, 512, 512, 1024, 512, 256]    # of1..of6 (and ef1..ef6)
L2NORM_SCALES = [10.0, 8.0, 5.0]                       # on of1..of3 and ef1..ef3
FEM_DILATION = 3


class DSFDOutput(NamedTuple):
    loc_pal1: Tensor        # [N, P, 4] first shot
    conf_pal1: Tensor       # [N, P, 2]
    loc_pal2: Tensor        # [N, P, 4] second shot (used at test time)
    conf_pal2: Tensor       # [N, P, 2]
    feature_sizes: list     # [(H_k, W_k)] of the six levels, for the anchors


def _ch(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


def build_vgg(width: float = 1.0) -> nn.ModuleList:
    """The reference's 35-entry VGG list, fc6/fc7 included (ReLUs and pools occupy their slots)."""
    layers, in_ch = [], 3
    for v in VGG_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        elif v == "C":
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
        else:
            out = _ch(v, width)
            layers += [nn.Conv2d(in_ch, out, 3, padding=1), nn.ReLU(inplace=True)]
            in_ch = out
    fc = _ch(1024, width)
    layers += [nn.Conv2d(in_ch, fc, 3, padding=3, dilation=3), nn.ReLU(inplace=True),   # fc6
               nn.Conv2d(fc, fc, 1), nn.ReLU(inplace=True)]                              # fc7
    return nn.ModuleList(layers)


def build_extras(channels: list[int]) -> nn.ModuleList:
    """extras.0: 1x1 fc7->256, .1: 3x3/2 256->512 (of5), .2: 1x1 512->128, .3: 3x3/2 128->256 (of6)."""
    c4, c5, c6 = channels[3], channels[4], channels[5]
    return nn.ModuleList([nn.Conv2d(c4, c6, 1), nn.Conv2d(c6, c5, 3, stride=2, padding=1),
                          nn.Conv2d(c5, c6 // 2, 1), nn.Conv2d(c6 // 2, c6, 3, stride=2, padding=1)])


class FEM(nn.Module):
    """Feature enhance module: three dilated branches of C//3, C//3 and C - 2*(C//3) channels,
    concatenated, then ReLU."""

    def __init__(self, channels: int):
        super().__init__()
        i = channels // 3
        i1 = channels - 2 * i

        def conv(cin, cout):
            return nn.Conv2d(cin, cout, 3, padding=FEM_DILATION, dilation=FEM_DILATION)

        self.branch1 = conv(channels, i)
        self.branch2 = nn.Sequential(conv(channels, i), nn.ReLU(inplace=True), conv(i, i))
        self.branch3 = nn.Sequential(conv(channels, i1), nn.ReLU(inplace=True), conv(i1, i1),
                                     nn.ReLU(inplace=True), conv(i1, i1))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(torch.cat((self.branch1(x), self.branch2(x), self.branch3(x)), 1),
                      inplace=True)


def backbone_taps(vgg: nn.ModuleList, extras: nn.ModuleList, x: Tensor) -> list[Tensor]:
    """Raw of1..of6: the VGG taps after conv3_3, conv4_3, conv5_3, fc7, then the two extras."""
    taps = []
    for k, layer in enumerate(vgg):
        x = layer(x)
        if k in (TAP_CONV3_3, TAP_CONV4_3, TAP_CONV5_3, TAP_FC7):
            taps.append(x)
    for k, conv in enumerate(extras):
        x = F.relu(conv(x), inplace=True)
        if k % 2 == 1:
            taps.append(x)
    return taps


def first_shot_sources(m: nn.Module, raw: list[Tensor]) -> list[Tensor]:
    """L2Normof1..3 on of1..of3 (``m`` holds them: the detector or a MoCo key encoder)."""
    of1, of2, of3, of4, of5, of6 = raw
    return [m.L2Normof1(of1), m.L2Normof2(of2), m.L2Normof3(of3), of4, of5, of6]


def _upsample_product(x: Tensor, lateral: Tensor) -> Tensor:
    """Bilinear resize of ``x`` to the lateral map's size (align_corners=False), times it."""
    return F.interpolate(x, size=lateral.shape[-2:], mode="bilinear", align_corners=False) * lateral


# the detector parts the MoCo key encoder copies: everything the six first-shot sources need
KEY_ENCODER_PARTS = ("vgg", "L2Normof1", "L2Normof2", "L2Normof3", "extras")


class KeyEncoder(nn.Module):
    """A frozen copy of the detector's VGG, L2Normof1-3 and extras; ``forward`` returns the same
    six sources as ``DSFD.features`` (its keys are the reference's ``encoder_k.*``)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        for name in KEY_ENCODER_PARTS:
            setattr(self, name, copy.deepcopy(getattr(net, name)))
        self.requires_grad_(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        return first_shot_sources(self, backbone_taps(self.vgg, self.extras, x))


class DSFD(nn.Module):
    """DSFD-VGG16; implements the detector interface of ``models/interface.py``: the heads read
    the six first-shot sources, and there is no BatchNorm (samples never interact)."""

    has_batchnorm = False

    def __init__(self, num_classes: int = 2, width: float = 1.0):
        super().__init__()
        self.num_classes = num_classes
        ch = [_ch(c, width) for c in SOURCE_CHANNELS]
        self.source_channels = ch
        self.vgg = build_vgg(width)
        self.L2Normof1 = L2Norm(ch[0], L2NORM_SCALES[0])
        self.L2Normof2 = L2Norm(ch[1], L2NORM_SCALES[1])
        self.L2Normof3 = L2Norm(ch[2], L2NORM_SCALES[2])
        self.extras = build_extras(ch)
        # top-down: index k maps level (5-k)'s merged map to level (4-k)'s channels
        td_in = [ch[5], ch[5], ch[4], ch[3], ch[2], ch[1]]
        td_out = [ch[5], ch[4], ch[3], ch[2], ch[1], ch[0]]
        self.fpn_topdown = nn.ModuleList([nn.Conv2d(i, o, 1) for i, o in zip(td_in, td_out)])
        # laterals on the raw of5, of4, of3, of2, of1 (in that order)
        self.fpn_latlayer = nn.ModuleList([nn.Conv2d(ch[k], ch[k], 1) for k in (4, 3, 2, 1, 0)])
        self.fpn_fem = nn.ModuleList([FEM(c) for c in ch])
        self.L2Normef1 = L2Norm(ch[0], L2NORM_SCALES[0])
        self.L2Normef2 = L2Norm(ch[1], L2NORM_SCALES[1])
        self.L2Normef3 = L2Norm(ch[2], L2NORM_SCALES[2])
        self.loc_pal1 = nn.ModuleList([nn.Conv2d(c, 4, 3, padding=1) for c in ch])
        self.conf_pal1 = nn.ModuleList([nn.Conv2d(c, num_classes, 3, padding=1) for c in ch])
        self.loc_pal2 = nn.ModuleList([nn.Conv2d(c, 4, 3, padding=1) for c in ch])
        self.conf_pal2 = nn.ModuleList([nn.Conv2d(c, num_classes, 3, padding=1) for c in ch])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference's ``weights_init`` for everything outside the VGG: Xavier-uniform
        weights, zero biases. The VGG keeps PyTorch's default (or loads vgg16_reducedfc)."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Conv2d) and not name.startswith("vgg."):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    # -- backbone ---------------------------------------------------------------------------

    def _backbone(self, x: Tensor) -> list[Tensor]:
        """Raw of1..of6 (before L2Norm)."""
        return backbone_taps(self.vgg, self.extras, x)

    def _pal1_sources(self, raw: list[Tensor]) -> list[Tensor]:
        return first_shot_sources(self, raw)

    @property
    def feature_channels(self) -> list[int]:
        return list(self.source_channels)

    def make_key_encoder(self) -> nn.Module:
        return KeyEncoder(self)

    def features(self, x: Tensor) -> list[Tensor]:
        """The six first-shot sources (the maps the self-supervised heads read), without the
        top-down path, FEM or heads (the reference's ``detection=False`` computes and discards
        them)."""
        return self._pal1_sources(self._backbone(x))

    # -- detection --------------------------------------------------------------------------

    def _pal2_sources(self, raw: list[Tensor]) -> list[Tensor]:
        of1, of2, of3, of4, of5, of6 = raw
        td, lat, relu = self.fpn_topdown, self.fpn_latlayer, F.relu
        conv7 = relu(td[0](of6), inplace=True)
        conv6 = relu(_upsample_product(relu(td[1](conv7), inplace=True), lat[0](of5)), inplace=True)
        convfc7_2 = relu(_upsample_product(relu(td[2](conv6), inplace=True), lat[1](of4)),
                         inplace=True)
        conv5 = relu(_upsample_product(relu(td[3](convfc7_2), inplace=True), lat[2](of3)),
                     inplace=True)
        conv4 = relu(_upsample_product(relu(td[4](conv5), inplace=True), lat[3](of2)), inplace=True)
        conv3 = relu(_upsample_product(relu(td[5](conv4), inplace=True), lat[4](of1)), inplace=True)
        fem = self.fpn_fem
        return [self.L2Normef1(fem[0](conv3)), self.L2Normef2(fem[1](conv4)),
                self.L2Normef3(fem[2](conv5)), fem[3](convfc7_2), fem[4](conv6), fem[5](conv7)]

    @staticmethod
    def _heads(sources: list[Tensor], loc_convs: nn.ModuleList, conf_convs: nn.ModuleList):
        """Per level N,C,H,W -> N,H*W,C, concatenated over levels in order."""
        loc = [conv(s).permute(0, 2, 3, 1).flatten(1, 2) for s, conv in zip(sources, loc_convs)]
        conf = [conv(s).permute(0, 2, 3, 1).flatten(1, 2) for s, conv in zip(sources, conf_convs)]
        return torch.cat(loc, 1), torch.cat(conf, 1)

    def forward(self, x: Tensor) -> DSFDOutput:
        raw = self._backbone(x)
        sizes = [tuple(t.shape[-2:]) for t in raw]
        loc1, conf1 = self._heads(self._pal1_sources(raw), self.loc_pal1, self.conf_pal1)
        loc2, conf2 = self._heads(self._pal2_sources(raw), self.loc_pal2, self.conf_pal2)
        return DSFDOutput(loc1, conf1, loc2, conf2, sizes)


# -- deployment ----------------------------------------------------------------------------

class SecondShot(nn.Module):
    """The exported graph: the detector's test-time outputs."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, image):
        out = self.net(image)
        return out.loc_pal2, torch.softmax(out.conf_pal2, -1)[..., 1]


def export_dsfd_onnx(net: nn.Module, path, opset: int = 17):
    """The deployable graph: input ``image`` [1, 3, H, W] (RGB minus the mean), outputs the
    second shot's ``loc`` [1, P, 4] and face ``score`` [1, P]; anchors, decoding and NMS stay
    outside (``models/onnx_runner.py``). Traced at a small size with height and width marked
    dynamic (TorchScript exporter: the torch.export-based one specialises this network's
    shapes)."""
    example = torch.zeros(1, 3, 128, 160)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(SecondShot(net.eval()), (example,), str(path), dynamo=False,
                          input_names=["image"], output_names=["loc", "score"],
                          dynamic_axes={"image": {2: "height", 3: "width"},
                                        "loc": {1: "anchors"}, "score": {1: "anchors"}},
                          opset_version=opset)
    return path
