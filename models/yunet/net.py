"""YuNet (libfacedetection.train's ``yunet_n`` / ``yunet_s``) in plain PyTorch.

A tiny anchor-free face detector: a depthwise-separable backbone with taps at strides 8, 16
and 32, a top-down "tiny FPN" neck (64 channels at every level) and a YOLOX-style decoupled
head that predicts, per grid cell and level, a class logit, an objectness logit, a box
``(dx, dy, log w, log h)`` in units of the stride and 5 landmarks ``(kx, ky)`` also in stride
units, all relative to the cell's top-left corner ``(col * s, row * s)``.

The module and parameter names are the released checkpoints' (``backbone.model0.conv1...``,
``neck.lateral_convs.*``, ``bbox_head.multi_level_*``), so ``yunet_n.pth`` / ``yunet_s.pth``
load with ``strict=True`` (:func:`load_yunet_weights`). docs/YUNET.md describes the
architecture, the decoding, the loss and the augmentation; docs/DECISIONS.md the departures.

Implements the detector interface of ``models/interface.py``: :meth:`YuNet.features` are the
neck outputs (the maps the self-supervised heads read), :meth:`YuNet.forward` returns a
:class:`YuNetOutput` of raw per-level logits, :meth:`YuNet.onnx_outputs` the twelve outputs of
the official ONNX export and :func:`export_yunet_onnx` writes such a file.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.interface import variant_spec


STRIDES = (8, 16, 32)
NUM_LANDMARKS = 5

# The released configs (yunet_n.py / yunet_s.py): backbone stage channels, the stages after
# which a 2x2 max-pool halves the map, the stages tapped for the neck, and the number of shared
# convolutions at the top of the head.
VARIANTS = {
    "yunet_n": dict(stage_channels=[[3, 16, 16], [16, 64], [64, 64], [64, 64], [64, 64],
                                    [64, 64]], shared_stacked_convs=1),
    "yunet_s": dict(stage_channels=[[3, 16, 16], [16, 32], [32, 64], [64, 64], [64, 64],
                                    [64, 64]], shared_stacked_convs=0),
}
DOWNSAMPLE_IDX = (0, 2, 3, 4)
OUT_IDX = (3, 4, 5)
NECK_CHANNELS = 64

# the official ONNX outputs, in the order of the export script (tools/yunet2onnx.py)
OUTPUT_NAMES = tuple(f"{kind}_{s}" for kind in ("cls", "obj", "bbox", "kps") for s in STRIDES)
OUTPUT_CHANNELS = {"cls": 1, "obj": 1, "bbox": 4, "kps": 2 * NUM_LANDMARKS}


class YuNetOutput(NamedTuple):
    """Raw training output: one tensor per level (strides 8, 16, 32), cells in row-major order.

    ``cls`` and ``obj`` are logits ``[N, H*W, 1]`` (before the sigmoid), ``bbox`` ``[N, H*W, 4]``
    ``(dx, dy, log w, log h)``, ``kps`` ``[N, H*W, 10]`` ``(kx, ky) x 5``, all in stride units
    from the cell's top-left corner; ``feature_sizes`` the ``(H, W)`` of each level."""
    cls: list[Tensor]
    obj: list[Tensor]
    bbox: list[Tensor]
    kps: list[Tensor]
    feature_sizes: list[tuple[int, int]]


# ---- building blocks (the names are the checkpoint's: models/utils/yunet_layer.py) ------------

class ConvDPUnit(nn.Module):
    """1x1 convolution, then a 3x3 depthwise one, then (optionally) BatchNorm + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, with_bn_relu: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 1, 1, 0, bias=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=True,
                               groups=out_channels)
        self.with_bn_relu = with_bn_relu
        if with_bn_relu:
            self.bn = nn.BatchNorm2d(out_channels)
            self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv2(self.conv1(x))
        return self.relu(self.bn(x)) if self.with_bn_relu else x


class ConvHead(nn.Module):
    """The stem: a 3x3 stride-2 convolution + BN + ReLU, then a :class:`ConvDPUnit`
    (the official ``Conv_head``)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 3, 2, 1, bias=True)
        self.conv2 = ConvDPUnit(mid_channels, out_channels, True)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.relu1 = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.relu1(self.bn1(self.conv1(x))))


class Conv4LayerBlock(nn.Module):
    """Two :class:`ConvDPUnit` (in -> in -> out): four convolutions (``Conv4layerBlock``)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = ConvDPUnit(in_channels, in_channels, True)
        self.conv2 = ConvDPUnit(in_channels, out_channels, True)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1(x))


class YuNetBackbone(nn.Module):
    """``model0`` (stem, stride 2) ... ``model5``; a 2x2 max-pool follows the stages in
    ``DOWNSAMPLE_IDX``, so stages 3, 4, 5 (the taps) run at strides 8, 16, 32."""

    def __init__(self, stage_channels: list[list[int]]):
        super().__init__()
        self.num_stages = len(stage_channels)
        self.model0 = ConvHead(*stage_channels[0])
        for i in range(1, self.num_stages):
            self.add_module(f"model{i}", Conv4LayerBlock(*stage_channels[i]))

    def forward(self, x: Tensor) -> list[Tensor]:
        taps = []
        for i in range(self.num_stages):
            x = getattr(self, f"model{i}")(x)
            if i in OUT_IDX:
                taps.append(x)
            if i in DOWNSAMPLE_IDX:
                x = F.max_pool2d(x, 2)          # floor: odd sizes lose their last row/column
        return taps


class TFPN(nn.Module):
    """Top-down neck: from the coarsest level down, ``out_i = lateral_i(tap_i + up(out_{i+1}))``
    (the coarsest: ``lateral(tap)``), nearest-neighbour upsampling."""

    def __init__(self, channels: list[int]):
        super().__init__()
        self.lateral_convs = nn.ModuleList([ConvDPUnit(c, c, True) for c in channels])

    def forward(self, taps: list[Tensor]) -> list[Tensor]:
        outs = [None] * len(taps)
        top = self.lateral_convs[-1](taps[-1])
        outs[-1] = top
        for i in range(len(taps) - 2, -1, -1):
            # upsampling to the lateral's size equals the official scale_factor=2 when the
            # input is a multiple of 32, and still works when it is not (odd map sizes)
            up = F.interpolate(top, size=taps[i].shape[-2:], mode="nearest")
            top = self.lateral_convs[i](taps[i] + up)
            outs[i] = top
        return outs


class YuNetHead(nn.Module):
    """Per level: ``shared_stacked_convs`` :class:`ConvDPUnit` (yunet_n: 1, yunet_s: 0), then
    four plain (no BN/ReLU) :class:`ConvDPUnit` predictors: cls (1), bbox (4), obj (1), kps (10).
    The levels share nothing."""

    def __init__(self, in_channels: int = NECK_CHANNELS, feat_channels: int = NECK_CHANNELS,
                 shared_stacked_convs: int = 1, num_levels: int = len(STRIDES),
                 num_landmarks: int = NUM_LANDMARKS):
        super().__init__()
        self.shared_stacked_convs = shared_stacked_convs
        if shared_stacked_convs > 0:
            self.multi_level_share_convs = nn.ModuleList([
                nn.Sequential(*[ConvDPUnit(in_channels if i == 0 else feat_channels,
                                           feat_channels) for i in range(shared_stacked_convs)])
                for _ in range(num_levels)])
        chn = feat_channels if shared_stacked_convs > 0 else in_channels
        # creation order = the official _init_layers order (cls, bbox, obj, kps)
        self.multi_level_cls = nn.ModuleList([ConvDPUnit(chn, 1, False) for _ in range(num_levels)])
        self.multi_level_bbox = nn.ModuleList([ConvDPUnit(chn, 4, False)
                                               for _ in range(num_levels)])
        self.multi_level_obj = nn.ModuleList([ConvDPUnit(chn, 1, False) for _ in range(num_levels)])
        self.multi_level_kps = nn.ModuleList([ConvDPUnit(chn, 2 * num_landmarks, False)
                                              for _ in range(num_levels)])

    def forward(self, feats: list[Tensor]) -> YuNetOutput:
        if self.shared_stacked_convs > 0:
            feats = [convs(f) for f, convs in zip(feats, self.multi_level_share_convs)]

        def per_level(convs: nn.ModuleList) -> list[Tensor]:
            # [N, C, H, W] -> [N, H*W, C], cells in row-major order as the ONNX export
            return [conv(f).permute(0, 2, 3, 1).flatten(1, 2) for f, conv in zip(feats, convs)]

        return YuNetOutput(per_level(self.multi_level_cls), per_level(self.multi_level_obj),
                           per_level(self.multi_level_bbox), per_level(self.multi_level_kps),
                           [tuple(f.shape[-2:]) for f in feats])


class YuNetKeyEncoder(nn.Module):
    """A frozen copy of the backbone and neck; ``forward`` equals :meth:`YuNet.features`. How
    its BatchNorm runs for MoCo keys (shuffled across ranks under DDP, eval mode with
    momentum-tracked statistics in one process) is decided by ``adapt/hla/moco.py``."""

    def __init__(self, net: "YuNet"):
        super().__init__()
        self.backbone = copy.deepcopy(net.backbone)
        self.neck = copy.deepcopy(net.neck)
        self.requires_grad_(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.neck(self.backbone(x))


class YuNet(nn.Module):
    """YuNet_n / YuNet_s (``variant``), the detector interface of ``models/interface.py``.

    Input: ``[N, 3, H, W]`` float32 **BGR in 0..255** (no mean, no scaling). Any H and W work
    (the official network needs multiples of 32; there the outputs are identical to it).
    ``feature_channels``: the neck outputs at strides 8, 16 and 32, 64 channels each.
    """

    has_batchnorm = True
    feature_channels = [NECK_CHANNELS] * len(STRIDES)
    strides = STRIDES

    def __init__(self, variant: str = "yunet_n"):
        super().__init__()
        spec = variant_spec(VARIANTS, variant, "YuNet")
        self.variant = variant
        self.backbone = YuNetBackbone(spec["stage_channels"])
        self.neck = TFPN([spec["stage_channels"][i][-1] for i in OUT_IDX])
        self.bbox_head = YuNetHead(NECK_CHANNELS, NECK_CHANNELS, spec["shared_stacked_convs"])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official ``init_weights`` (backbone, neck and head alike): Xavier-normal conv
        weights with biases 0.02; BatchNorm weight 1, bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight)
                nn.init.constant_(m.bias, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # -- detector interface ---------------------------------------------------------------

    def features(self, x: Tensor) -> list[Tensor]:
        """The neck outputs at strides 8, 16, 32 (``[N, 64, H/s, W/s]``), with gradient."""
        return self.neck(self.backbone(x))

    def make_key_encoder(self) -> nn.Module:
        return YuNetKeyEncoder(self)

    def forward(self, x: Tensor) -> YuNetOutput:
        return self.bbox_head(self.features(x))

    def onnx_outputs(self, x: Tensor) -> tuple[Tensor, ...]:
        """The official ONNX outputs (:data:`OUTPUT_NAMES`): ``cls_8, cls_16, cls_32`` and
        ``obj_*`` after the sigmoid, ``bbox_*``, ``kps_*``, each ``[N, H*W, C]``."""
        out = self(x)
        return (*[c.sigmoid() for c in out.cls], *[o.sigmoid() for o in out.obj],
                *out.bbox, *out.kps)


def build_yunet(variant: str = "yunet_n") -> YuNet:
    return YuNet(variant)


def load_yunet_weights(net: nn.Module, path: str | Path, what: str = "YuNet weights") -> None:
    """Load a released mmdetection checkpoint (``{"meta", "state_dict", "optimizer"}``) or one
    of ours (``{"model": ...}``) or a plain state dict into ``net``, ``strict=True``."""
    from utils.checkpoint import detector_state_dict, load_file
    net.load_state_dict(detector_state_dict(load_file(path, what)), strict=True)


# ---- deployment -----------------------------------------------------------------------------

def fuse_batchnorm(net: YuNet) -> YuNet:
    """An inference copy with every BatchNorm folded into the convolution before it (the graph
    of the official ONNX files: 59 / 53 convolutions, no BatchNorm). Eval mode only."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    fused = copy.deepcopy(net).eval()
    for m in fused.modules():
        if isinstance(m, ConvDPUnit) and m.with_bn_relu:
            m.conv2 = fuse_conv_bn_eval(m.conv2, m.bn)
            m.bn = nn.Identity()
        elif isinstance(m, ConvHead):
            m.conv1 = fuse_conv_bn_eval(m.conv1, m.bn1)
            m.bn1 = nn.Identity()
    return fused


class _OnnxGraph(nn.Module):
    def __init__(self, net: YuNet):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor):
        return self.net.onnx_outputs(x)


def export_yunet_onnx(net: YuNet, path: str | Path, dynamic: bool = True,
                      size: tuple[int, int] = (640, 640), opset: int = 11,
                      any_size: bool = False) -> Path:
    """Write ``net`` as the official export does: input ``input`` ``[N, 3, H, W]`` float32 BGR
    0..255, the twelve :data:`OUTPUT_NAMES` outputs; ``dynamic``: batch, height and width free,
    else fixed at ``size`` (H, W). BatchNorm is folded first, as in the official files.

    The upsampling is the official fixed factor 2, so H and W must be multiples of 32, as for
    the official files (onnxruntime then runs it in its blocked layout, as fast as they are);
    ``any_size=True`` upsamples to the lateral map's size instead, as :class:`TFPN` does, so
    any H, W works (about 3% slower on a CPU: the resize leaves the blocked layout)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = _OnnxGraph(fuse_batchnorm(net).cpu().float()).eval()
    example = torch.zeros(1, 3, *size)
    dynamic_axes = None
    if dynamic:
        dynamic_axes = {name: {0: "batch", 1: "dim"} for name in OUTPUT_NAMES}
        dynamic_axes["input"] = {0: "batch", 2: "height", 3: "width"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)     # the TorchScript exporter
        torch.onnx.export(graph, (example,), str(path), dynamo=False, input_names=["input"],
                          output_names=list(OUTPUT_NAMES), dynamic_axes=dynamic_axes,
                          opset_version=opset, do_constant_folding=True)
    import onnx
    model = _tidy_shapes(onnx.load(str(path)), any_size)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _tidy_shapes(model, any_size: bool):
    """Drop the tracer's shape arithmetic from an export (about 80 tiny nodes when dynamic): each
    output Reshape gets the constant shape ``[0, -1, C]`` (0: keep the batch); each Resize the
    constant scales ``[1, 1, 2, 2]`` (the official graph), or with ``any_size`` the sizes
    ``Shape(lateral)`` of the map it is added to."""
    import numpy as np
    from onnx import helper, numpy_helper

    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for out in g.output:
        node = producer[out.name]
        if node.op_type == "Sigmoid":
            node = producer[node.input[0]]
        if node.op_type != "Reshape":
            continue
        channels = OUTPUT_CHANNELS[out.name.split("_")[0]]
        name = f"{out.name}_shape"
        g.initializer.append(numpy_helper.from_array(np.array([0, -1, channels], np.int64),
                                                     name))
        node.input[1] = name
    g.initializer.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32),
                                                 "upsample_scales"))
    new_nodes = []
    for n in g.node:
        if n.op_type == "Resize" and not any_size:
            n.input[2] = "upsample_scales"
            del n.input[3]
        elif n.op_type == "Resize":
            add = next(c for c in consumers[n.output[0]] if c.op_type == "Add")
            lateral = next(i for i in add.input if i != n.output[0])
            shape = f"{n.output[0]}_sizes"
            new_nodes.append(helper.make_node("Shape", [lateral], [shape]))
            n.input[3] = shape
        new_nodes.append(n)
    del g.node[:]
    g.node.extend(new_nodes)
    # dead-node elimination, keeping the exporter's order (a Shape sits just before its
    # Resize; the lateral map it reads is computed earlier, in the backbone)
    needed = {o.name for o in g.output}
    alive = []
    for n in reversed(list(g.node)):
        if any(o in needed for o in n.output):
            alive.append(n)
            needed.update(n.input)
    del g.node[:]
    g.node.extend(reversed(alive))
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return model
