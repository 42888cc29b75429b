"""The detector interface: what every face detector of the toolkit provides.

A detector family is one folder ``models/<family>/`` whose network implements
:class:`DetectorNet` (its state_dict keys stay the released checkpoints' keys, so the interface
is methods and plain attributes, never extra sub-modules) and whose ``entry.py`` returns a
:class:`DetectorEntry`, plus one line in ``models/registry.py`` and one preset file
``configs/models/<name>.yaml`` (docs/DETECTORS.md walks through it). Everything else (train.py,
test.py, the self-supervised heads, MoCo, ONNX export, the demo) talks to detectors only through
these two types.

Conventions shared by all detectors:

* **Images in** are RGB ``uint8`` ``[N, H, W, 3]``; :meth:`InputSpec.to_input` turns them into the
  network input (channel order, mean, scale) the released weights expect.
* **Training targets** are per-image float32 tensors ``[n, 5]`` (DSFD) or ``[n, 15]``
  (detectors with landmarks): ``x1, y1, x2, y2`` normalised by the input width/height, the label
  (1 = face), then the 5 landmarks as ``x, y`` pairs normalised the same way, all ten ``-1``
  when the face has none. ``targets[:, :5]`` is therefore always the box-and-label format.
* **Detections out** (``postprocess``) are per-image tensors ``[k, 5 + 2 * num_landmarks]``:
  ``x1, y1, x2, y2, score`` normalised to [0, 1] by the input size, then the landmarks
  normalised the same way, sorted by descending score.
* **Losses** are ``dict[str, Tensor]`` of scalar terms, each already weighted as the detector's
  reference weights them; train.py sums them with the self-supervised terms.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, nn

Size = tuple[int, int]


@runtime_checkable
class DetectorNet(Protocol):
    """What train.py, the heads and MoCo need from a detector network."""

    #: True when the network has BatchNorm layers: then batches of different tasks must not be
    #: concatenated through it in training mode, and MoCo needs shuffled (or frozen) BN for keys.
    has_batchnorm: bool
    #: channels of :meth:`features`'s maps, one per level (the heads are built from this)
    feature_channels: list[int]

    def features(self, x: Tensor) -> list[Tensor]:
        """The maps the self-supervised heads read, one per level, with gradient."""

    def make_key_encoder(self) -> nn.Module:
        """A frozen deep copy of everything :meth:`features` needs. Its ``forward(x)`` equals
        ``self.features(x)`` for equal weights, and its ``named_parameters()`` names are a subset
        of this network's (MoCo's momentum update pairs them by name)."""

    def forward(self, x: Tensor) -> Any:
        """The raw training output, as the detector's loss and ``postprocess`` read it."""


@dataclass(frozen=True)
class InputSpec:
    """How RGB uint8 pixels become this detector's input.

    ``channel_order`` is the order the network reads (``"RGB"`` or ``"BGR"``); ``mean`` and
    ``std`` are given in that order, in 0..255 units; ``size_divisor`` > 1 pads H and W
    (bottom/right, zeros after normalisation) up to a multiple, as the detector's official
    inference does (YuNet: 32).
    """

    channel_order: str = "RGB"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    size_divisor: int = 1

    def to_input(self, images: Tensor, memory_format=torch.contiguous_format) -> Tensor:
        """``[N, H, W, 3]`` uint8 RGB (on the target device) -> ``[N, 3, H', W']`` float32."""
        if memory_format == torch.channels_last:
            return self._to_input_nhwc(images)
        x = images.permute(0, 3, 1, 2).float()
        if self.channel_order == "BGR":
            x = x.flip(1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std if any(s != 1 for s in self.std) else x - mean
        x = pad_to_multiple(x, self.size_divisor)
        return x.contiguous(memory_format=memory_format)

    def _to_input_nhwc(self, images: Tensor) -> Tensor:
        """The same values as :meth:`to_input`, computed in the images' own ``[N, H, W, 3]``
        layout and returned as its channels_last view (no layout copy at the end)."""
        x = images.float()
        if self.channel_order == "BGR":
            x = x.flip(-1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device)
        x = (x - mean) / std if any(s != 1 for s in self.std) else x - mean
        d = self.size_divisor
        ph, pw = ((-x.shape[1]) % d, (-x.shape[2]) % d) if d > 1 else (0, 0)
        if ph or pw:
            x = torch.nn.functional.pad(x, (0, 0, 0, pw, 0, ph))
        return x.permute(0, 3, 1, 2)


def pad_to_multiple(x: Tensor, divisor: int) -> Tensor:
    """Zero-pad the bottom and right of ``[N, C, H, W]`` up to multiples of ``divisor``."""
    if divisor <= 1:
        return x
    h, w = x.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    return torch.nn.functional.pad(x, (0, pw, 0, ph)) if ph or pw else x


@dataclass(frozen=True)
class DetectorEntry:
    """One registry entry of ``models/registry.py``: everything the toolkit needs of a family.

    ``build(cfg)`` makes the network (weights are loaded by the caller); ``criterion(cfg)``
    returns ``loss(out, targets, image_size) -> dict[str, Tensor]``; ``postprocess(cfg)``
    returns ``fn(out, image_size) -> list[Tensor]`` (see the module doc for both formats);
    ``input_spec(cfg)`` the :class:`InputSpec`. ``preset`` is the preset file applied when
    ``MODEL.NAME`` selects this entry. ``train_dataset(cfg, list_file, root, seed,
    records=None)`` is the training dataset (the family's augmentation; samples ``(input [3, S,
    S] float32, target [n, 5] or [n, 15], skipped)``; ``records``: FaceRecords such as pseudo
    labels, else ``list_file`` in FACE.SRC_FORMAT). ``export_onnx(net, path)`` writes the
    deployable graph (dynamic H and W) and ``onnx_decoder(cfg)`` decodes it
    (``models/onnx_runner.py``'s ``OnnxDecoder``: the same detections as the network).
    ``export_opencv(net, path, size, opset)`` (optional) writes a graph with its input fixed
    at ``size`` (H, W) for OpenCV's importer (``models/onnx_deploy.py``).
    """

    build: Callable[[Any], nn.Module]
    criterion: Callable[[Any], Callable]
    postprocess: Callable[[Any], Callable]
    input_spec: Callable[[Any], InputSpec]
    num_landmarks: int = 0
    preset: str = ""
    check: Callable[[Any], None] | None = None     # raises naming the key when cfg misfits
    export_onnx: Callable[..., Any] | None = None
    extra: dict = field(default_factory=dict)
    train_dataset: Callable[..., Any] | None = None
    onnx_decoder: Callable[[Any], Any] | None = None
    export_opencv: Callable[..., Any] | None = None


#: the fields every registered family must fill (``export_opencv`` and ``extra`` are optional)
REQUIRED_FIELDS = ("build", "criterion", "postprocess", "input_spec", "preset", "check",
                   "export_onnx", "train_dataset", "onnx_decoder")


def unpad(detections: Tensor, input_size: Size, image_size: Size, num_landmarks: int) -> Tensor:
    """Rows ``x1, y1, x2, y2, score`` (+ landmarks) normalised by a zero-padded input of
    ``input_size`` (H, W) -> normalised by the image (``image_size``) that sits at its top
    left; unchanged when the sizes agree."""
    (ih, iw), (h, w) = input_size, image_size
    if (ih, iw) == (h, w):
        return detections
    scale = torch.tensor([iw / w, ih / h], device=detections.device).repeat(2 + num_landmarks)
    d = detections
    return torch.cat((d[:, :4] * scale[:4], d[:, 4:5], d[:, 5:] * scale[4:]), 1)


class EntryDecoder:
    """An ONNX graph whose outputs are the network's raw outputs, fed with the entry's
    :class:`InputSpec` and decoded with its own ``postprocess`` (``models/onnx_runner.py``'s
    ``OnnxDecoder``). ``to_output(arrays: dict of Tensors) -> the network's forward output``."""

    def __init__(self, cfg, entry: DetectorEntry, to_output: Callable[[dict], Any]):
        self.spec = entry.input_spec(cfg)
        self.postprocess = entry.postprocess(cfg)
        self.num_landmarks = entry.num_landmarks
        self.to_output = to_output

    def inputs(self, rgb) -> dict:
        x = self.spec.to_input(torch.from_numpy(rgb)[None])
        return {"image": x.numpy()}

    def decode(self, outputs, input_size: Size, image_size: Size) -> Tensor:
        out = self.to_output({k: torch.from_numpy(v) for k, v in outputs.items()})
        with torch.no_grad():
            d = self.postprocess(out, input_size)[0]
        return unpad(d, input_size, image_size, self.num_landmarks)


def variant_spec(table: Mapping[str, Any], name: str, family: str):
    """``table[name]``, or a ValueError naming the known variants of ``family``."""
    if name not in table:
        raise ValueError(f"unknown {family} variant {name!r}; known: {sorted(table)}")
    return table[name]


def check_interface(net: nn.Module) -> None:
    """Raise a TypeError naming what ``net`` lacks of :class:`DetectorNet`."""
    missing = [a for a in ("has_batchnorm", "feature_channels", "features", "make_key_encoder")
               if not hasattr(net, a)]
    if missing:
        raise TypeError(f"{type(net).__name__} does not implement the detector interface: "
                        f"missing {', '.join(missing)}")


def has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def feature_levels(feats: Sequence[Tensor]) -> list[tuple[int, int]]:
    return [tuple(f.shape[-2:]) for f in feats]
