"""Export the detector to ONNX (dynamic height and width) and check it against PyTorch.

    python tools/export_onnx.py --weights W --out dsfd.onnx [--image IMG] [--opset 17]

The graph takes ``image`` [1, 3, H, W] float32, RGB minus the mean (R-123, G-117, B-104, not
scaled; REFERENCE 3.1) and returns the second shot's ``loc`` [1, P, 4] offsets and face
``score`` [1, P]. Anchors, decoding and NMS stay outside the graph (they depend on H and W;
``models.onnx_runner.OnnxFaceDetector`` does them with the project's own functions). After
exporting, the command runs onnxruntime and PyTorch on an image (``--image``, or a synthetic
one) at two sizes and reports the largest differences of the raw outputs and of the final
detections.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from data import config as config_lib  # noqa: E402
from data.image_folder import read_rgb  # noqa: E402
from models.inference import build_face_detector  # noqa: E402
from models.onnx_runner import OnnxFaceDetector  # noqa: E402,F401 - re-exported for callers


class SecondShot(nn.Module):
    """The exported graph: the detector's test-time outputs."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, image):
        out = self.net(image)
        return out.loc_pal2, torch.softmax(out.conf_pal2, -1)[..., 1]


def export(net: nn.Module, path: Path, opset: int = 17) -> None:
    """Trace at a small size with height and width marked dynamic (TorchScript exporter: the
    torch.export-based one specialises the shapes of this network)."""
    example = torch.zeros(1, 3, 128, 160)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(SecondShot(net.eval()), (example,), str(path), dynamo=False,
                          input_names=["image"], output_names=["loc", "score"],
                          dynamic_axes={"image": {2: "height", 3: "width"},
                                        "loc": {1: "anchors"}, "score": {1: "anchors"}},
                          opset_version=opset)


def compare(detector, onnx_det: OnnxFaceDetector, rgb: np.ndarray) -> dict:
    x = detector.to_input(rgb[None])
    out = detector.forward(x)
    ref_loc, ref_score = out.loc_pal2[0].float(), torch.softmax(out.conf_pal2[0].float(), -1)[:, 1]
    loc, score = onnx_det.raw(rgb)
    ref_dets = detector(rgb[None])[0]
    dets = onnx_det(rgb)
    n = min(len(dets), len(ref_dets), 50)
    return {"size": rgb.shape[:2], "loc": float(np.abs(loc[0] - ref_loc.numpy()).max()),
            "score": float(np.abs(score[0] - ref_score.numpy()).max()),
            "detections": (len(dets), len(ref_dets)),
            "top_boxes": float((dets[:n] - ref_dets[:n]).abs().max()) if n else 0.0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--weights", required=True)
    p.add_argument("--out", type=Path, default=Path("dsfd.onnx"))
    p.add_argument("--image", type=Path, default=None, help="image for the check")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--tolerance", type=float, default=1e-3,
                   help="largest allowed score difference between onnxruntime and PyTorch")
    p.add_argument("opts", nargs="*", metavar="KEY.SUB=VALUE")
    args = p.parse_args(argv)
    cfg = config_lib.load_config(overrides=args.opts)
    detector = build_face_detector(cfg, args.weights, torch.device("cpu"))
    export(detector.net, args.out, args.opset)
    print(f"exported {args.out} ({args.out.stat().st_size / 2 ** 20:.1f} MiB)")
    if args.image is not None:
        rgb = read_rgb(args.image)
    else:
        rgb = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    onnx_det = OnnxFaceDetector(args.out, cfg)
    worst = 0.0
    for img in (rgb, rgb[: rgb.shape[0] * 3 // 4, : rgb.shape[1] * 2 // 3]):
        r = compare(detector, onnx_det, np.ascontiguousarray(img))
        worst = max(worst, r["score"])
        print(f"  {r['size'][0]}x{r['size'][1]}: max |loc| diff {r['loc']:.2e}, max |score| "
              f"diff {r['score']:.2e}, detections onnx/torch {r['detections'][0]}/"
              f"{r['detections'][1]}, top-50 box diff {r['top_boxes']:.2e}")
    if worst > args.tolerance:
        print(f"onnxruntime and PyTorch differ by {worst:.2e} > {args.tolerance}")
        return 1
    print("onnxruntime matches PyTorch")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
