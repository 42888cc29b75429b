"""Batched face detection with a trained detector of any registry entry: normalise, forward,
decode, NMS.

Used by test.py, the tools, the benchmarks, the demo and the export check.
"""
from __future__ import annotations

import copy
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from models.interface import InputSpec, unpad
from models.registry import build_net, entry_of
from utils.checkpoint import detector_state_dict, load_file

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
Enhance = Callable[[np.ndarray], np.ndarray]       # HxWx3 uint8 BGR -> the same


def autocast(device: torch.device, amp: str):
    """``torch.autocast`` for RUN.AMP = bf16 | fp16, a no-op context for 'none'."""
    if amp == "none":
        return nullcontext()
    if amp not in AMP_DTYPES:
        raise ValueError(f"config key RUN.AMP must be none, bf16 or fp16, not {amp!r}")
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def load_net(cfg, weights: str | Path, key: str = "--weights") -> tuple[nn.Module, dict]:
    """Build ``cfg.MODEL.NAME`` and load ``weights`` strictly. A checkpoint of ours carries its
    config: its MODEL section (name, width) replaces ``cfg.MODEL``. Returns the network and the
    loaded file."""
    ckpt = load_file(weights, key)
    saved = ckpt.get("config") if isinstance(ckpt, Mapping) else None
    if isinstance(saved, Mapping) and isinstance(saved.get("MODEL"), Mapping):
        for key, value in saved["MODEL"].items():     # our checkpoint: its model and width
            if key in cfg.MODEL and type(value) is type(cfg.MODEL[key]):
                cfg.MODEL[key] = value
    net = build_net(cfg)
    try:
        net.load_state_dict(detector_state_dict(ckpt))
    except RuntimeError as exc:
        raise RuntimeError(f"{weights} ({key}) does not fit MODEL.NAME={cfg.MODEL.NAME} "
                           f"(MODEL.WIDTH={cfg.MODEL.WIDTH}): {exc}") from None
    return net, ckpt


def build_face_detector(cfg, weights: str | Path, device: torch.device,
                        key: str = "--weights", fold_bn: bool = False,
                        enhance: Enhance | None = None) -> "FaceDetector":
    """A ready :class:`FaceDetector` for ``cfg.MODEL.NAME`` with ``weights`` (``fold_bn``,
    ``enhance``: see the class)."""
    net, _ = load_net(cfg, weights, key)
    return FaceDetector.from_config(net, cfg, device, fold_bn, enhance)


def fold_batchnorm(net: nn.Module, probe_size: int = 128) -> nn.Module:
    """An eval-mode copy of ``net`` in which every ``BatchNorm2d`` that reads the output of the
    ``Conv2d`` run just before it is folded into that convolution (and becomes an identity).

    The pairs are found by running the copy once on zeros (``[1, 3, probe_size, probe_size]``)
    with hooks, so any detector's layout works (YuNet's named attributes, RetinaFace's
    ``Sequential`` blocks); a module that runs more than once is left alone. The folded network
    computes the same function up to float rounding; ``net`` is not changed."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    net = copy.deepcopy(net).eval()
    calls: list[tuple[nn.Module, Tensor, Tensor]] = []
    kinds = (nn.Conv2d, nn.BatchNorm2d)
    hooks = [m.register_forward_hook(lambda m, i, o: calls.append((m, i[0], o)))
             for m in net.modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            net(torch.zeros(1, 3, probe_size, probe_size,
                            device=next(net.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    runs: dict[int, int] = {}
    for m, _, _ in calls:
        runs[id(m)] = runs.get(id(m), 0) + 1
    parents = {id(child): (parent, name) for parent in net.modules()
               for name, child in parent.named_children()}
    for (conv, _, out), (bn, bn_in, _) in zip(calls, calls[1:]):
        if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn_in is out
                and runs[id(conv)] == runs[id(bn)] == 1):
            for module, fused in ((conv, fuse_conv_bn_eval(conv, bn)), (bn, nn.Identity())):
                parent, name = parents[id(module)]
                setattr(parent, name, fused)
    return net


class FaceDetector:
    """Wraps a detector for inference on RGB uint8 images of one size per call.

    ``input_spec`` turns pixels into the network's input (and pads to its size divisor);
    ``postprocess(out, input_size)`` decodes and runs NMS. Detections are ``[k, 5 + 2L]``
    (``x1, y1, x2, y2, score`` and ``L`` landmarks) normalised by the *image* size (padding
    removed), on the CPU.

    ``enhance`` (night mode; default None: the images as given) is applied to each image
    before detection by :meth:`__call__`: an HxWx3 uint8 BGR -> BGR function such as
    ``lowlevel.enhancers.build_enhancer("auto")`` (a function, not a name: models/ does not
    import lowlevel/).
    """

    def __init__(self, net: nn.Module, input_spec: InputSpec, postprocess: Callable,
                 device: torch.device, amp: str = "none", channels_last: bool = False,
                 num_landmarks: int = 0, fold_bn: bool = False, enhance: Enhance | None = None):
        # fold_bn: run a copy with BatchNorm folded into the convolutions (same maths up to
        # float rounding; utils/precision.py's fast paths); ``net`` itself is left as it is
        self.net = (fold_batchnorm(net) if fold_bn else net).eval().to(device)
        self.device, self.amp = device, amp
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net.to(memory_format=self.memory_format)
        self.input_spec = input_spec
        self._postprocess = postprocess
        self.num_landmarks = num_landmarks
        self.enhance = enhance

    @classmethod
    def from_config(cls, net: nn.Module, cfg, device: torch.device, fold_bn: bool = False,
                    enhance: Enhance | None = None) -> "FaceDetector":
        entry = entry_of(cfg)
        return cls(net, entry.input_spec(cfg), entry.postprocess(cfg), device, cfg.RUN.AMP,
                   cfg.RUN.CHANNELS_LAST, entry.num_landmarks, fold_bn, enhance)

    def to_input(self, images: np.ndarray | Tensor) -> Tensor:
        """[N, H, W, 3] uint8 RGB -> the network's [N, 3, H', W'] float32 input."""
        x = torch.as_tensor(images).to(self.device, non_blocking=True)
        return self.input_spec.to_input(x, self.memory_format)

    @torch.no_grad()
    def forward(self, x: Tensor):
        with autocast(self.device, self.amp):
            return self.net(x)

    @torch.no_grad()
    def postprocess(self, out, image_size) -> list[Tensor]:
        return self._postprocess(out, image_size)

    def enhanced(self, images: np.ndarray | Tensor) -> np.ndarray:
        """``[N, H, W, 3]`` uint8 RGB, each image through :attr:`enhance` (in BGR)."""
        arr = images.cpu().numpy() if isinstance(images, Tensor) else np.asarray(images)
        out = [self.enhance(np.ascontiguousarray(im[..., ::-1]))[..., ::-1] for im in arr]
        return np.ascontiguousarray(np.stack(out))

    def __call__(self, images: np.ndarray | Tensor) -> list[Tensor]:
        """Normalised detections per image, on the CPU (see the class doc)."""
        if self.enhance is not None:
            images = self.enhanced(images)
        h, w = images.shape[1:3]
        x = self.to_input(images)
        ih, iw = x.shape[-2:]
        dets = self.postprocess(self.forward(x), (ih, iw))
        # a padded input: normalise by the image instead
        return [unpad(d, (ih, iw), (h, w), self.num_landmarks).cpu() for d in dets]
