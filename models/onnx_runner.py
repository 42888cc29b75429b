"""onnxruntime inference for exported detectors, with a decoder per ``MODEL.NAME``.

A graph exported from a detector keeps anchors, decoding and NMS outside (they depend on H and
W), so running it needs two detector-specific pieces, an :class:`OnnxDecoder`:

* ``inputs(rgb)``: one ``[H, W, 3]`` uint8 RGB image -> the session's feeds (channel order,
  mean, padding of the graph);
* ``decode(outputs, input_size, image_size)``: the named output arrays -> ``[k, 5 + 2L]``
  rows ``x1, y1, x2, y2, score`` (+ ``L`` landmarks as ``x, y``) normalised by the *image*
  size (padding removed), by descending score: the format of
  :class:`models.inference.FaceDetector`.

Each family's decoder is its registry entry's ``onnx_decoder(cfg)`` (``models/<family>/onnx.py``);
the thresholds come from ``cfg.DETECT`` (``CONF_THRESH``, ``NMS_THRESH``, ``NMS_TOP_K``,
``TOP_K``), so one override sets them for every detector. :func:`onnx_runner` runs an export of
``MODEL.NAME``; this module holds no per-family code.
"""
from __future__ import annotations

import importlib
import math
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
from torch import Tensor

Size = tuple[int, int]


class OnnxDecoder(Protocol):
    """What :class:`OnnxRunner` needs from a detector family (see the module doc)."""

    num_landmarks: int

    def inputs(self, rgb: np.ndarray) -> dict[str, np.ndarray]:
        """``[H, W, 3]`` uint8 RGB -> the session's feeds."""

    def decode(self, outputs: dict[str, np.ndarray], input_size: Size, image_size: Size
               ) -> Tensor:
        """Named outputs of one image -> ``[k, 5 + 2L]`` rows normalised by ``image_size``."""


def session(model: str | Path | bytes, threads: int | None = None):
    """A CPU onnxruntime session; ``threads`` sets its intra-op thread count (None: ort's
    default, all cores)."""
    import onnxruntime
    opts = onnxruntime.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    src = model if isinstance(model, bytes) else str(model)
    return onnxruntime.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


class OnnxRunner:
    """onnxruntime inference of one exported graph with its :class:`OnnxDecoder`.

    ``runner(rgb)`` on one ``[H, W, 3]`` uint8 RGB image returns its ``[k, 5 + 2L]`` tensor;
    on ``[N, H, W, 3]`` a list of them (one session run per image), like
    :class:`models.inference.FaceDetector`.
    """

    def __init__(self, path: str | Path, decoder: OnnxDecoder, threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model {self.path} does not exist")
        self.session = session(self.path, threads)
        self.decoder = decoder
        self.num_landmarks = decoder.num_landmarks
        self.output_names = [o.name for o in self.session.get_outputs()]

    def raw(self, rgb: np.ndarray) -> list[np.ndarray]:
        """The session's outputs for one image, in the graph's output order."""
        return self.session.run(None, self.decoder.inputs(np.ascontiguousarray(rgb)))

    def detect_one(self, rgb: np.ndarray) -> Tensor:
        feeds = self.decoder.inputs(np.ascontiguousarray(rgb))
        input_size = tuple(next(iter(feeds.values())).shape[-2:])
        outputs = dict(zip(self.output_names, self.session.run(None, feeds)))
        return self.decoder.decode(outputs, input_size, tuple(rgb.shape[:2]))

    def __call__(self, images: np.ndarray | Tensor) -> Tensor | list[Tensor]:
        images = np.asarray(images)
        if images.ndim == 3:
            return self.detect_one(images)
        return [self.detect_one(img) for img in images]


def onnx_decoder(cfg) -> OnnxDecoder:
    """The :class:`OnnxDecoder` of ``cfg.MODEL.NAME``'s exports (its registry entry's)."""
    from models.registry import entry_of
    return entry_of(cfg).onnx_decoder(cfg)


def onnx_runner(path: str | Path, cfg, threads: int | None = None) -> OnnxRunner:
    """An :class:`OnnxRunner` for the export ``path`` of ``cfg.MODEL.NAME``."""
    return OnnxRunner(path, onnx_decoder(cfg), threads)


# ---- FLOPs of a graph --------------------------------------------------------------------------

def onnx_flops(model: str | Path | bytes, height: int = 320, width: int = 320) -> int | None:
    """FLOPs of one ``[1, 3, height, width]`` forward of an ONNX graph, counted as
    ``torch.utils.flop_counter.FlopCounterMode`` counts a network: 2 per multiply-add of the
    convolutions (``Conv``, ``ConvTranspose``) and matrix products (``Gemm``, ``MatMul``),
    nothing else. Shapes come from ONNX shape inference, or, where that cannot follow the
    graph (e.g. a ``Resize`` to a computed size), from one onnxruntime run on zeros. None when
    the graph has not exactly one 4-d image input."""
    import onnx
    m = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
    inits = {t.name: list(t.dims) for t in m.graph.initializer}
    graph_inputs = [i for i in m.graph.input if i.name not in inits]
    if len(graph_inputs) != 1 or len(graph_inputs[0].type.tensor_type.shape.dim) != 4:
        return None
    for d, v in zip(graph_inputs[0].type.tensor_type.shape.dim, (1, 3, height, width)):
        d.Clear()
        d.dim_value = v
    del m.graph.value_info[:]                      # shapes stored for another size
    for out in m.graph.output:
        out.type.tensor_type.ClearField("shape")
    counted = [n for n in m.graph.node
               if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")]
    names = {x for n in counted for x in (n.input[0], n.input[1], n.output[0])}
    shapes = dict(inits)
    shapes.update(_inferred_shapes(m))
    unknown = sorted(x for x in names if x not in shapes)
    if unknown:
        shapes.update(_runtime_shapes(m, unknown, graph_inputs[0].name, height, width))
    total = 0
    for node in counted:
        a, b, y = (shapes[n] for n in (node.input[0], node.input[1], node.output[0]))
        if node.op_type == "Conv":                  # W [Cout, Cin/g, kh, kw]
            total += 2 * math.prod(y) * math.prod(b[1:])
        elif node.op_type == "ConvTranspose":       # W [Cin, Cout/g, kh, kw]
            total += 2 * math.prod(a) * math.prod(b[1:])
        else:
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            total += 2 * math.prod(y) * (a[-2] if trans_a else a[-1])
    return int(total)


def _inferred_shapes(m) -> dict[str, list[int]]:
    from onnx import shape_inference
    try:
        m = shape_inference.infer_shapes(m, data_prop=True)
    except Exception:                               # noqa: BLE001 - fall back to a run
        return {}
    shapes = {}
    for vi in [*m.graph.value_info, *m.graph.input, *m.graph.output]:
        shape = vi.type.tensor_type.shape
        if shape.dim and all(d.HasField("dim_value") for d in shape.dim):
            shapes[vi.name] = [d.dim_value for d in shape.dim]
    return shapes


def _runtime_shapes(m, names: list[str], input_name: str, height: int, width: int
                    ) -> dict[str, list[int]]:
    """Shapes of the tensors ``names``, by exposing them as outputs and running zeros."""
    import onnx
    present = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n)
                          for n in names if n not in present)
    sess = session(m.SerializeToString(), threads=1)
    values = sess.run(names, {input_name: np.zeros((1, 3, height, width), np.float32)})
    return {n: list(v.shape) for n, v in zip(names, values)}


# ---- names from before the layout move (docs/DECISIONS.md), for one release --------------------

_MOVED_NAMES = {"YuNetDecoder": "models.yunet.onnx", "DsfdDecoder": "models.dsfd.onnx"}


def OnnxFaceDetector(path: str | Path, cfg, threads: int | None = None) -> OnnxRunner:  # noqa: N802
    """Deprecated: :func:`onnx_runner` (DSFD's exports with ``MODEL.NAME=dsfd_vgg``)."""
    warnings.warn("models.onnx_runner.OnnxFaceDetector is onnx_runner(path, cfg) now",
                  DeprecationWarning, stacklevel=2)
    return onnx_runner(path, cfg, threads)


def __getattr__(name: str):
    """The decoders that moved into their family folders (``models/<family>/onnx.py``)."""
    if name in _MOVED_NAMES:
        warnings.warn(f"models.onnx_runner.{name} moved to {_MOVED_NAMES[name]}",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(_MOVED_NAMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
