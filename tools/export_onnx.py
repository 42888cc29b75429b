"""Export a detector to ONNX (dynamic height and width) and check it against PyTorch.

    python tools/export_onnx.py --weights W --out model.onnx [--image IMG] [MODEL.NAME=...]

(opset 17; YuNet keeps the official files' opset 11)

Every detector of the registry exports its deployable graph (``DetectorEntry.export_onnx``):

* DSFD: input ``image`` [1, 3, H, W] float32, RGB minus the mean (R-123, G-117, B-104, not
  scaled), outputs the second shot's ``loc`` [1, P, 4] offsets and face ``score`` [1, P];
* YuNet: exactly the official layout: input ``input`` [N, 3, H, W] BGR 0..255 (H, W multiples of
  32), outputs ``cls_*``, ``obj_*`` (sigmoids applied), ``bbox_*``, ``kps_*`` per stride;
* RetinaFace: input ``image`` (BGR minus (104, 117, 123)), outputs ``loc``, ``conf`` (softmax),
  ``landms``.

Anchors or priors, decoding and NMS stay outside the graph (they depend on H and W;
``models/onnx_runner.py`` does them with the project's own functions). After exporting, the
command runs onnxruntime and PyTorch on an image (``--image``, or a synthetic one) at two sizes
and reports the largest differences of the final detections (and, for DSFD, of the raw
outputs); it fails when they differ by more than ``--tolerance``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from data import config as config_lib  # noqa: E402
from data.image_folder import read_rgb  # noqa: E402
from models.dsfd_vgg import export_dsfd_onnx as export  # noqa: E402,F401 (tests call it)
from models.factory import get_entry  # noqa: E402
from models.inference import build_face_detector  # noqa: E402
from models.onnx_runner import OnnxFaceDetector, onnx_runner  # noqa: E402


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


def compare_detections(detector, runner, rgb: np.ndarray) -> dict:
    """Final detections of PyTorch and onnxruntime on one image (any detector)."""
    ref = detector(rgb[None])[0]
    got = runner(rgb)
    n = min(len(got), len(ref), 50)
    return {"size": rgb.shape[:2], "detections": (len(got), len(ref)),
            "top_boxes": float((got[:n] - ref[:n]).abs().max()) if n else 0.0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--weights", required=True)
    p.add_argument("--out", type=Path, default=Path("model.onnx"))
    p.add_argument("--image", type=Path, default=None, help="image for the check")
    p.add_argument("--tolerance", type=float, default=1e-3,
                   help="largest allowed difference between onnxruntime and PyTorch (scores "
                        "for DSFD, normalised detections otherwise)")
    p.add_argument("opts", nargs="*", metavar="KEY.SUB=VALUE")
    args = p.parse_args(argv)
    cfg = config_lib.load_config(overrides=args.opts)
    detector = build_face_detector(cfg, args.weights, torch.device("cpu"))
    get_entry(cfg.MODEL.NAME).export_onnx(detector.net, args.out)
    print(f"exported {args.out} ({args.out.stat().st_size / 2 ** 20:.1f} MiB)")
    if args.image is not None:
        rgb = read_rgb(args.image)
    else:
        rgb = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    worst = 0.0
    if cfg.MODEL.NAME == "dsfd_vgg":
        onnx_det = OnnxFaceDetector(args.out, cfg)
        for img in (rgb, rgb[: rgb.shape[0] * 3 // 4, : rgb.shape[1] * 2 // 3]):
            r = compare(detector, onnx_det, np.ascontiguousarray(img))
            worst = max(worst, r["score"])
            print(f"  {r['size'][0]}x{r['size'][1]}: max |loc| diff {r['loc']:.2e}, max "
                  f"|score| diff {r['score']:.2e}, detections onnx/torch "
                  f"{r['detections'][0]}/{r['detections'][1]}, top-50 box diff "
                  f"{r['top_boxes']:.2e}")
    else:
        runner = onnx_runner(args.out, cfg)
        for img in (rgb, rgb[: rgb.shape[0] * 3 // 4, : rgb.shape[1] * 2 // 3]):
            r = compare_detections(detector, runner, np.ascontiguousarray(img))
            worst = max(worst, r["top_boxes"])
            print(f"  {r['size'][0]}x{r['size'][1]}: detections onnx/torch "
                  f"{r['detections'][0]}/{r['detections'][1]}, top-50 detection diff "
                  f"{r['top_boxes']:.2e}")
    if worst > args.tolerance:
        print(f"onnxruntime and PyTorch differ by {worst:.2e} > {args.tolerance}")
        return 1
    print("onnxruntime matches PyTorch")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
