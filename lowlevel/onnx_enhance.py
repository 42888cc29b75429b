"""Night mode inside an ONNX export: an enhancer written as graph operations in front of the
detector's input (``tools/export_onnx.py --enhance NAME``).

Only enhancers that are one fixed function of each pixel value can be written this way
(:data:`GRAPH_ENHANCERS`): ``gamma`` is its 256-entry table, applied with ``Gather`` after
turning the network input back into 0..255 pixel values (``x * std + mean``, clipped and
rounded) and followed by the detector's normalisation again, so the graph's outputs equal the
PyTorch detector's on the gamma-corrected image. Not expressible: ``auto`` (a per-image decision),
``clahe`` and the ``clahe_*`` variants (per-tile histograms), ``lime`` (a sparse linear solve),
the median, bilateral and non-local-means denoisers; ``gamma_gauss`` and ``el`` could be written
as convolutions but would differ from the uint8 OpenCV/PyTorch paths by rounding, and are not
offered. Padding added by a runner after normalisation (YuNet: zeros = black) passes through the
table (black stays black under gamma).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lowlevel import classic as baselines

GRAPH_ENHANCERS = ("gamma",)


def lookup_table(name: str) -> np.ndarray:
    """The enhancer's 256-entry table (float32), computed by the enhancer itself."""
    if name not in GRAPH_ENHANCERS:
        raise ValueError(f"--enhance {name!r} cannot be written as ONNX operations; the export "
                         f"offers {', '.join(GRAPH_ENHANCERS)} (see lowlevel/onnx_enhance.py)")
    levels = np.arange(256, dtype=np.uint8).reshape(1, 256, 1).repeat(3, axis=2)
    table = baselines.gamma_correct(levels)[0, :, 0]
    return table.astype(np.float32)


def prepend_enhancer(path: str | Path, name: str, mean, std, out: str | Path | None = None
                     ) -> Path:
    """Rewrite the graph at ``path`` (or write ``out``) so that its first input goes through
    the table of ``name`` first. ``mean``/``std``: the detector's input normalisation per
    channel, in the network's channel order, 0..255 units (``InputSpec``)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    table = lookup_table(name)
    model = onnx.load(str(path))
    g = model.graph
    src = g.input[0].name
    inner = f"{src}__{name}"
    for node in g.node:                        # the network now reads the enhanced input
        node.input[:] = [inner if i == src else i for i in node.input]
    c = lambda a: np.asarray(a, np.float32).reshape(1, 3, 1, 1)    # noqa: E731
    consts = {"ne_std": c(std), "ne_mean": c(mean), "ne_lo": np.float32(0),
              "ne_hi": np.float32(255), "ne_half": np.float32(0.5), "ne_table": table}
    g.initializer.extend(numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items())
    nodes = [
        helper.make_node("Mul", [src, "ne_std"], ["ne_a"]),
        helper.make_node("Add", ["ne_a", "ne_mean"], ["ne_pixels"]),      # 0..255 again
        helper.make_node("Clip", ["ne_pixels", "ne_lo", "ne_hi"], ["ne_clipped"]),
        helper.make_node("Add", ["ne_clipped", "ne_half"], ["ne_b"]),
        helper.make_node("Floor", ["ne_b"], ["ne_rounded"]),
        helper.make_node("Cast", ["ne_rounded"], ["ne_index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["ne_table", "ne_index"], ["ne_enhanced"], axis=0),
        helper.make_node("Sub", ["ne_enhanced", "ne_mean"], ["ne_c"]),
        helper.make_node("Div", ["ne_c", "ne_std"], [inner]),
    ]
    old = list(g.node)
    del g.node[:]
    g.node.extend(nodes + old)
    onnx.checker.check_model(model)
    out = Path(out or path)
    onnx.save(model, str(out))
    return out
