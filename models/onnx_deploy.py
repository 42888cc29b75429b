"""Deployment variants of an exported detector graph: OpenCV-loadable and int8 (QDQ).

Both start from the graph a registry entry exports (``DetectorEntry.export_onnx``) and keep its
input and output names, order and meaning, so :mod:`models.onnx_runner` decodes them unchanged.

* :func:`opencv_graph`: a graph with every shape fixed for OpenCV's DNN importer
  (``cv2.dnn.readNet``, ``cv2.FaceDetectorYN``), which refuses the ``Shape`` arithmetic of
  a dynamic export. onnxruntime's *basic* graph optimisations (constant folding and the
  standard-op fusions; they emit no custom operators) fold what depends on the fixed size;
  then Constant nodes become initializers, a Reshape's copied dimension ``0`` becomes the
  number it copies (the official YuNet files write ``[1, -1, C]``), attributes equal to their
  defaults that old importers do not know (MaxPool ``dilations``) are dropped, unused operator
  domains removed and every intermediate shape stored (``value_info``), as in the official
  fixed-size YuNet files. :data:`OPENCV_OPS` lists the operators such a graph may contain.
* :func:`quantize_int8`: static QDQ quantisation with ``onnxruntime.quantization``: uint8
  activations, int8 weights (per output channel by default), ranges calibrated by a
  :class:`ImageCalibrationReader`, which feeds images through the detector's own
  pre-processing (the :class:`models.onnx_runner.OnnxDecoder`'s ``inputs``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

# operators of the official fixed-size YuNet files and of the RetinaFace export after folding
OPENCV_OPS = frozenset({"Conv", "Relu", "LeakyRelu", "MaxPool", "Resize", "Add", "Concat",
                        "Transpose", "Reshape", "Sigmoid", "Softmax"})
# attributes OpenCV 4.x importers may not know, dropped when they hold their default value
_DEFAULT_ATTRIBUTES = {"MaxPool": {"dilations": 1, "storage_order": 0}}


# ---- OpenCV ------------------------------------------------------------------------------------

def fold_constants(src: str | Path, dst: str | Path) -> None:
    """Write ``src`` after onnxruntime's basic (standard-operator) optimisations to ``dst``."""
    import onnxruntime
    opts = onnxruntime.SessionOptions()
    opts.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(dst)
    onnxruntime.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])


def _constants_to_initializers(graph) -> None:
    from onnx import helper
    keep = []
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute[0].name == "value":
            tensor = helper.get_attribute_value(node.attribute[0])
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def _drop_default_attributes(graph) -> None:
    from onnx import helper
    for node in graph.node:
        defaults = _DEFAULT_ATTRIBUTES.get(node.op_type, {})
        keep = [a for a in node.attribute if a.name not in defaults or np.any(
            np.asarray(helper.get_attribute_value(a)) != defaults[a.name])]
        del node.attribute[:]
        node.attribute.extend(keep)


def _static_reshapes(model) -> None:
    """Reshape targets ``[0, ...]`` (copy the batch) -> the batch size itself."""
    from onnx import numpy_helper
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    batch = graph.input[0].type.tensor_type.shape.dim[0].dim_value
    for node in graph.node:
        if node.op_type != "Reshape" or node.input[1] not in inits:
            continue
        shape = numpy_helper.to_array(inits[node.input[1]]).copy()
        if shape.size and shape[0] == 0 and batch > 0:
            shape[0] = batch
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(shape, node.input[1]))


def opencv_graph(src: str | Path, dst: str | Path) -> Path:
    """Turn the fixed-input-size export ``src`` into an OpenCV-loadable graph ``dst`` (module
    doc). Raises ValueError naming the file if an operator outside :data:`OPENCV_OPS` or a
    free dimension remains."""
    import onnx
    from onnx import shape_inference
    dst = Path(dst)
    fold_constants(src, dst)
    model = onnx.load(str(dst))
    _constants_to_initializers(model.graph)
    _drop_default_attributes(model.graph)
    _static_reshapes(model)
    used = {n.domain for n in model.graph.node}
    keep = [o for o in model.opset_import if o.domain in used | {""}]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    del model.graph.value_info[:]
    model = shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model)
    check_opencv_graph(model, dst)
    onnx.save(model, str(dst))
    return dst


def check_opencv_graph(model, name: str | Path = "graph") -> None:
    """ValueError unless every operator is in :data:`OPENCV_OPS` and every input, output and
    intermediate tensor has a fully known shape."""
    bad = sorted({n.op_type for n in model.graph.node} - OPENCV_OPS)
    if bad:
        raise ValueError(f"{name}: operators {bad} are not in the OpenCV set {sorted(OPENCV_OPS)}")
    inits = {t.name for t in model.graph.initializer}
    for vi in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        dims = vi.type.tensor_type.shape.dim
        if vi.name not in inits and (not dims or not all(d.HasField("dim_value") for d in dims)):
            raise ValueError(f"{name}: tensor {vi.name!r} has no fixed shape")


OPENCV_OPSET = 11       # the official YuNet files' opset; OpenCV 4.x imports it


def opencv_input_size(cfg, width: int, height: int) -> tuple[int, int]:
    """The (H, W) of ``cfg.MODEL.NAME``'s OpenCV graph for a requested ``width`` x ``height``:
    rounded up to the family's size divisor (YuNet: 32, as ``cv2.FaceDetectorYN`` pads its
    input), others as is."""
    if width <= 0 or height <= 0:
        raise ValueError(f"--input-size {width} {height}: both must be positive")
    divisor = _opencv_entry(cfg.MODEL.NAME).input_spec(cfg).size_divisor
    return -(-height // divisor) * divisor, -(-width // divisor) * divisor


def _opencv_entry(name: str):
    from models.registry import DETECTORS, get_entry
    entry = get_entry(name)
    if entry.export_opencv is None:
        have = [n for n in DETECTORS if get_entry(n).export_opencv is not None]
        raise ValueError(f"--opencv: MODEL.NAME={name!r} has no OpenCV export (detectors: "
                         f"{', '.join(have)})")
    return entry


def export_opencv(name: str, net, path: str | Path, size: tuple[int, int]) -> Path:
    """Export detector ``name`` (``MODEL.NAME``; one whose entry has ``export_opencv``: YuNet,
    RetinaFace) with its input fixed at ``size`` (H, W, batch 1) and make it OpenCV-loadable
    (:func:`opencv_graph`); the input and output names and order are those of the family's
    dynamic export (for YuNet: the official files', which ``cv2.FaceDetectorYN`` reads by
    name)."""
    import tempfile
    entry = _opencv_entry(name)
    with tempfile.TemporaryDirectory() as tmp:
        fixed = Path(tmp) / "fixed.onnx"
        entry.export_opencv(net, fixed, size, OPENCV_OPSET)
        return opencv_graph(fixed, path)


class OpenCVRunner:
    """``cv2.dnn.readNet`` inference of an OpenCV graph with the family's
    :class:`models.onnx_runner.OnnxDecoder` (the project's decoding and NMS):
    ``runner(rgb) -> [k, 5 + 2L]`` normalised, like :class:`models.onnx_runner.OnnxRunner`;
    ``raw(rgb)`` the outputs by name."""

    def __init__(self, path: str | Path, decoder):
        import cv2
        import onnx
        self.net = cv2.dnn.readNet(str(path))
        self.output_names = [o.name for o in onnx.load(str(path)).graph.output]
        self.decoder = decoder

    def raw(self, rgb: np.ndarray) -> dict[str, np.ndarray]:
        for name, blob in self.decoder.inputs(np.ascontiguousarray(rgb)).items():
            self.net.setInput(blob, name)
        return dict(zip(self.output_names, self.net.forward(self.output_names)))

    def __call__(self, rgb: np.ndarray):
        feeds = self.decoder.inputs(np.ascontiguousarray(rgb))
        input_size = tuple(next(iter(feeds.values())).shape[-2:])
        return self.decoder.decode(self.raw(rgb), input_size, tuple(rgb.shape[:2]))


def face_detector_yn(path: str | Path, bgr: np.ndarray, score: float = 0.02,
                     nms: float = 0.45, top_k: int = 5000) -> np.ndarray:
    """``cv2.FaceDetectorYN`` on one BGR image at its own size: ``[k, 15]`` rows ``x1, y1, x2,
    y2, score`` and 5 landmarks ``x, y``, in pixels (our row layout; OpenCV's is x, y, w, h,
    landmarks, score)."""
    import cv2
    h, w = bgr.shape[:2]
    det = cv2.FaceDetectorYN.create(str(path), "", (w, h), score, nms, top_k)
    faces = det.detect(np.ascontiguousarray(bgr))[1]
    f = np.zeros((0, 15), np.float32) if faces is None else faces
    return np.concatenate((f[:, :2], f[:, :2] + f[:, 2:4], f[:, 14:15], f[:, 4:14]), 1)


# ---- int8 --------------------------------------------------------------------------------------

def calibration_images(folder: str | Path, limit: int | None = None) -> list[Path]:
    """The image files of ``folder`` (sorted; at most ``limit``); FileNotFoundError naming the
    folder and the ``--calib`` flag when there is none."""
    from data.image_folder import list_image_files
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--calib {folder}: not a folder of calibration images")
    files = list_image_files(folder)
    if not files:
        raise FileNotFoundError(f"--calib {folder}: no image files in it")
    return files[:limit] if limit else files


def fit_image(rgb: np.ndarray, size: tuple[int, int] | None, max_side: int | None) -> np.ndarray:
    """``rgb`` for a graph of fixed ``size`` (H, W): scaled to fit, aspect kept, zero-padded
    bottom/right; or, for a size-dynamic graph, scaled down so its longer side is at most
    ``max_side`` (None: as is)."""
    import cv2
    h, w = rgb.shape[:2]
    if size is None:
        scale = 1.0 if not max_side else min(1.0, max_side / max(h, w))
        if scale == 1.0:
            return rgb
        return cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    scale = min(size[0] / h, size[1] / w)
    small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))),
                       interpolation=cv2.INTER_AREA)
    out = np.zeros((*size, 3), np.uint8)
    out[:small.shape[0], :small.shape[1]] = small
    return out


def fixed_input_size(path: str | Path) -> tuple[int, int] | None:
    """The (H, W) of a graph's fixed image input, None when either is free."""
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    x = next(i for i in model.graph.input if i.name not in inits)
    dims = x.type.tensor_type.shape.dim
    h, w = (d.dim_value if d.HasField("dim_value") else 0 for d in dims[2:4])
    return (h, w) if h and w else None


class ImageCalibrationReader:
    """``onnxruntime.quantization.CalibrationDataReader`` over image files: each image is read
    as RGB, fitted to the graph (:func:`fit_image`) and turned into feeds by ``to_feeds`` (the
    detector's own pre-processing, e.g. ``onnx_runner.onnx_decoder(cfg).inputs``)."""

    def __init__(self, paths: Sequence[str | Path], to_feeds: Callable[[np.ndarray], dict],
                 size: tuple[int, int] | None = None, max_side: int | None = 640,
                 transform: Callable[[np.ndarray], Iterable[np.ndarray]] | None = None):
        self.paths, self.to_feeds = [Path(p) for p in paths], to_feeds
        self.size, self.max_side = size, max_side
        self.transform = transform or (lambda rgb: [rgb])
        self._feeds = None

    def _all_feeds(self):
        from data.image_folder import read_rgb
        for path in self.paths:
            for rgb in self.transform(read_rgb(path)):
                yield self.to_feeds(np.ascontiguousarray(fit_image(rgb, self.size,
                                                                   self.max_side)))

    def get_next(self) -> dict | None:
        if self._feeds is None:
            self._feeds = self._all_feeds()
        return next(self._feeds, None)

    def rewind(self) -> None:
        self._feeds = None


def _as_calibration_reader(reader):
    """Wrap a duck-typed reader in the onnxruntime base class its calibrator checks for."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def get_next(self):
            return reader.get_next()

        def rewind(self):
            reader.rewind()
    return _Reader()


CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
QDQ_OPSET = 13        # per-channel DequantizeLinear (its ``axis``) needs opset 13


def _at_least_opset(src: str | Path, dst: Path, opset: int) -> None:
    """Copy ``src`` to ``dst``, converted to ``opset`` when its default domain is older."""
    import onnx
    from onnx import version_converter
    model = onnx.load(str(src))
    current = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if current < opset:
        model = version_converter.convert_version(model, opset)
    onnx.save(model, str(dst))


def quantize_int8(src: str | Path, dst: str | Path, reader, per_channel: bool = True,
                  method: str = "minmax", exclude_nodes: Sequence[str] = (),
                  exclude_ops: Sequence[str] = ()) -> Path:
    """Static QDQ quantisation of ``src`` into ``dst`` with ``onnxruntime.quantization``.

    ``reader`` yields feeds (:class:`ImageCalibrationReader`); ``method`` is the activation
    range estimate (min/max of the calibration images, a percentile of them, or entropy);
    weights int8 per output channel (``per_channel``) or per tensor; activations uint8
    (onnxruntime's x86 kernels pair uint8 activations with int8 weights).
    ``exclude_nodes`` / ``exclude_ops``: node names / operator types left in float. The graph
    first goes to opset >= 13 (older YuNet exports are opset 11) and through
    ``quant_pre_process`` (shape inference and basic optimisations)."""
    import tempfile

    import onnx
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method {method!r} is not one of {CALIBRATION_METHODS}")
    calibrate = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                 "entropy": CalibrationMethod.Entropy}[method]
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        _at_least_opset(src, pre, QDQ_OPSET)
        quant_pre_process(str(pre), str(pre), skip_symbolic_shape=True)
        nodes = onnx.load(str(pre)).graph.node
        excluded = [n.name for n in nodes if n.op_type in exclude_ops] + list(exclude_nodes)
        quantize_static(str(pre), str(dst), _as_calibration_reader(reader),
                        quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=excluded, calibrate_method=calibrate,
                        extra_options={"CalibTensorRangeSymmetric": False})
    return dst


def qdq_counts(path: str | Path) -> dict[str, int]:
    """Number of QuantizeLinear / DequantizeLinear nodes and of float-only nodes (neither
    reading nor writing a DequantizeLinear/QuantizeLinear) in a graph."""
    import onnx
    graph = onnx.load(str(path)).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    qdq = ("QuantizeLinear", "DequantizeLinear")
    counts = {op: sum(n.op_type == op for n in graph.node) for op in qdq}
    counts["float_ops"] = sum(1 for n in graph.node if n.op_type not in qdq and not any(
        producer.get(i) == "DequantizeLinear" for i in n.input))
    return counts
