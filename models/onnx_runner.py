"""onnxruntime inference for exported detectors, with a decoder per ``MODEL.NAME``.

A graph exported from a detector keeps anchors, decoding and NMS outside (they depend on H and
W), so running it needs two detector-specific pieces, an :class:`OnnxDecoder`:

* ``inputs(rgb)``: one ``[H, W, 3]`` uint8 RGB image -> the session's feeds (channel order,
  mean, padding of the graph);
* ``decode(outputs, input_size, image_size)``: the named output arrays -> ``[k, 5 + 2L]``
  rows ``x1, y1, x2, y2, score`` (+ ``L`` landmarks as ``x, y``) normalised by the *image*
  size (padding removed), by descending score: the format of
  :class:`models.inference.FaceDetector`.

:data:`DECODERS` maps ``MODEL.NAME`` to ``factory(cfg) -> OnnxDecoder``; the thresholds come
from ``cfg.DETECT`` (``CONF_THRESH``, ``NMS_THRESH``, ``NMS_TOP_K``, ``TOP_K``), so one override
sets them for every detector. Registered here:

* ``dsfd_vgg``: ``tools/export_onnx.py``'s graph: ``image`` [1, 3, H, W] RGB minus the mean ->
  ``loc`` [1, P, 4], ``score`` [1, P]; decoded with the project's anchors and
  :func:`layers.detect.postprocess`.
* ``yunet_n``, ``yunet_s``: the official libfacedetection.train export: ``input`` [N, 3, H, W]
  BGR in 0..255, H and W multiples of 32 (the image is zero-padded bottom/right, as
  ``cv2.FaceDetectorYN`` does) -> per stride s in 8, 16, 32: ``cls_s``, ``obj_s`` [N, HW, 1]
  (sigmoids applied), ``bbox_s`` [N, HW, 4], ``kps_s`` [N, HW, 10]; decoded by
  ``layers.yunet_postprocess.YuNetPostprocess.from_onnx``, the PyTorch path's post-processing
  (score ``YUNET.SCORE``, NMS boxes ``YUNET.NMS_BOXES``).
* ``retinaface_mnet``, ``retinaface_r50``: ``models.retinaface.export_retinaface_onnx``'s graph
  (``loc``, softmax ``conf``, ``landms``), decoded with the registry entry's own input spec and
  post-processing.

A new detector plugs in with ``register_decoder(name, factory)`` (from its own module, or a
line in :data:`DECODERS`); :func:`onnx_runner` then runs its export.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
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


# ---- DSFD-VGG ----------------------------------------------------------------------------------

class DsfdDecoder:
    """``tools/export_onnx.py``'s second-shot graph, with the project's anchors and NMS."""

    num_landmarks = 0

    def __init__(self, cfg):
        from layers.anchors import AnchorGenerator
        self.cfg = cfg
        self.anchors = AnchorGenerator(cfg.ANCHOR.STEPS, cfg.ANCHOR.ANCHOR_SIZES2)
        b, g, r = cfg.AUG.img_mean                     # the config holds the BGR mean
        self.mean = np.array([r, g, b], dtype=np.float32).reshape(1, 3, 1, 1)

    def inputs(self, rgb: np.ndarray) -> dict[str, np.ndarray]:
        return {"image": rgb.transpose(2, 0, 1)[None].astype(np.float32) - self.mean}

    def decode(self, outputs, input_size, image_size) -> Tensor:
        from layers.anchors import vgg_feature_sizes
        from layers.detect import postprocess
        loc, score = torch.from_numpy(outputs["loc"]), torch.from_numpy(outputs["score"])
        h, w = input_size                                       # no padding: the image size
        priors = self.anchors((h, w), vgg_feature_sizes(h, w))
        # two-class logits with the same softmax: [log(1 - p), log(p)]
        logits = torch.stack([torch.log1p(-score), torch.log(score)], -1)
        d = self.cfg.DETECT
        return postprocess(loc, logits, priors, self.cfg.ANCHOR.VARIANCE, d.CONF_THRESH,
                           d.NMS_THRESH, d.NMS_TOP_K, d.TOP_K)[0]


# ---- YuNet (official export) -------------------------------------------------------------------

YUNET_STRIDES = (8, 16, 32)
YUNET_DIVISOR = 32


class YuNetDecoder:
    """The official YuNet ONNX layout (module doc), decoded by the PyTorch path's own
    :meth:`layers.yunet_postprocess.YuNetPostprocess.from_onnx`, so an export and the network
    give the same detections. Plain values, no config needed: ``top_k`` (candidates into NMS)
    and ``keep_top_k`` (kept after it) <= 0 mean no cap; ``score`` and ``nms_boxes`` as
    ``YUNET.SCORE`` / ``YUNET.NMS_BOXES`` (the defaults: OpenCV ``FaceDetectorYN``'s)."""

    num_landmarks = 5

    def __init__(self, score_thresh: float = 0.02, nms_thresh: float = 0.45,
                 top_k: int = 5000, keep_top_k: int = 750,
                 strides: Sequence[int] = YUNET_STRIDES, divisor: int = YUNET_DIVISOR,
                 score: str = "sqrt", nms_boxes: str = "opencv"):
        from layers.yunet_postprocess import YuNetPostprocess
        self.post = YuNetPostprocess(strides, score_thresh, nms_thresh, keep_top_k, top_k,
                                     score, nms_boxes)
        self.divisor = divisor

    @classmethod
    def from_config(cls, cfg) -> "YuNetDecoder":
        d, y = cfg.DETECT, cfg.YUNET
        return cls(d.CONF_THRESH, d.NMS_THRESH, d.NMS_TOP_K, d.TOP_K, y.STRIDES,
                   score=y.SCORE, nms_boxes=y.NMS_BOXES)

    def inputs(self, rgb: np.ndarray) -> dict[str, np.ndarray]:
        h, w = rgb.shape[:2]
        ph, pw = -h % self.divisor, -w % self.divisor
        x = np.zeros((1, 3, h + ph, w + pw), dtype=np.float32)
        x[0, :, :h, :w] = rgb[..., ::-1].transpose(2, 0, 1)        # BGR, 0..255, no mean
        return {"input": x}

    def decode(self, outputs, input_size, image_size) -> Tensor:
        from models.yunet import OUTPUT_NAMES
        d = self.post.from_onnx([outputs[name] for name in OUTPUT_NAMES], input_size)[0]
        (ih, iw), (h, w) = input_size, image_size
        if (ih, iw) != (h, w):                      # padded input: normalise by the image
            scale = torch.tensor([iw / w, ih / h]).repeat(2 + self.num_landmarks)
            d = torch.cat((d[:, :4] * scale[:4], d[:, 4:5], d[:, 5:] * scale[4:]), 1)
        return d


def yunet_decoder(cfg) -> YuNetDecoder:
    return YuNetDecoder.from_config(cfg)


# ---- RetinaFace (models/retinaface.py's export) ------------------------------------------------

class EntryDecoder:
    """A graph whose outputs are the network's raw outputs: fed with the registry entry's
    :class:`models.detector.InputSpec` and decoded with its own ``postprocess``.
    ``to_output(arrays: dict) -> the network's forward output type``."""

    def __init__(self, cfg, to_output: Callable[[dict[str, Tensor]], Any]):
        from models.factory import get_entry
        entry = get_entry(cfg.MODEL.NAME)
        self.spec = entry.input_spec(cfg)
        self.postprocess = entry.postprocess(cfg)
        self.num_landmarks = entry.num_landmarks
        self.to_output = to_output

    def inputs(self, rgb: np.ndarray) -> dict[str, np.ndarray]:
        x = self.spec.to_input(torch.from_numpy(rgb)[None])
        return {"image": x.numpy()}

    def decode(self, outputs, input_size, image_size) -> Tensor:
        out = self.to_output({k: torch.from_numpy(v) for k, v in outputs.items()})
        with torch.no_grad():
            d = self.postprocess(out, input_size)[0]
        (ih, iw), (h, w) = input_size, image_size
        if (ih, iw) != (h, w):                      # padded input: normalise by the image
            scale = torch.tensor([iw / w, ih / h]).repeat(2 + self.num_landmarks)
            d = torch.cat((d[:, :4] * scale[:4], d[:, 4:5], d[:, 5:] * scale[4:]), 1)
        return d


def retinaface_decoder(cfg) -> EntryDecoder:
    from models.retinaface import RetinaFaceOutput

    def to_output(a):
        # the graph's softmax back to logits: softmax(log p) = p
        return RetinaFaceOutput(a["loc"], a["conf"].clamp_min(1e-30).log(), a["landms"], [])
    return EntryDecoder(cfg, to_output)


# ---- registry ----------------------------------------------------------------------------------

DECODERS: dict[str, Callable[[Any], OnnxDecoder]] = {
    "dsfd_vgg": DsfdDecoder,
    "yunet_n": yunet_decoder,
    "yunet_s": yunet_decoder,
    "retinaface_mnet": retinaface_decoder,
    "retinaface_r50": retinaface_decoder,
}


def register_decoder(name: str, factory: Callable[[Any], OnnxDecoder]) -> None:
    """Let :func:`onnx_runner` run ``name``'s exports: ``factory(cfg) -> OnnxDecoder``."""
    DECODERS[name] = factory


def onnx_runner(path: str | Path, cfg, threads: int | None = None) -> OnnxRunner:
    """An :class:`OnnxRunner` for the export ``path`` of ``cfg.MODEL.NAME``."""
    name = cfg.MODEL.NAME
    if name not in DECODERS:
        raise ValueError(f"config key MODEL.NAME={name!r} has no ONNX decoder; known: "
                         f"{sorted(DECODERS)} (models.onnx_runner.register_decoder adds one)")
    return OnnxRunner(path, DECODERS[name](cfg), threads)


class OnnxFaceDetector(OnnxRunner):
    """DSFD's export (``tools/export_onnx.py``) with the project's anchors and
    post-processing: ``OnnxFaceDetector(path, cfg)(rgb) -> [k, 5]`` normalised."""

    def __init__(self, path: str | Path, cfg, threads: int | None = None):
        super().__init__(path, DsfdDecoder(cfg), threads)
        self.cfg = cfg


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
