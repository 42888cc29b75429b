"""Export a detector to ONNX (dynamic height and width) and check it against PyTorch.

    python tools/export_onnx.py --weights W --out model.onnx [--image IMG] [--enhance gamma]
                                [MODEL.NAME=...]

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

Deployment variants (models/onnx_deploy.py; docs/DETECTORS.md, "Deployment"):

* ``--opencv [--input-size W H]``: YuNet and RetinaFace with every shape fixed (batch 1, the
  input W x H, rounded up to multiples of 32 for YuNet), no ``Shape`` arithmetic, opset 11, the
  same input/output names and order, so ``cv2.dnn.readNet`` and (YuNet)
  ``cv2.FaceDetectorYN.create(model, "", (W, H))`` load it. The check then runs at that size,
  also through OpenCV (FaceDetectorYN's detections, or readNet's raw outputs, against PyTorch).
* ``--int8 --calib DIR``: static QDQ int8 (onnxruntime.quantization): ``--out`` is the int8
  graph, the float graph it came from is kept beside it as ``<out>.fp32.onnx``; activation
  ranges come from the images of DIR through the detector's own pre-processing. int8 changes
  the outputs, so the check reports the differences without failing on ``--tolerance``
  (``bench/bench_int8.py`` measures the AP and the speed).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from data import config as config_lib
from data.image_folder import read_rgb
from models.dsfd.net import export_dsfd_onnx as export  # noqa:F401 (tests call it)
from models.registry import entry_of
from models.inference import build_face_detector
from models.onnx_deploy import (CALIBRATION_METHODS, ImageCalibrationReader,
                                OpenCVRunner, calibration_images, export_opencv,
                                face_detector_yn, fit_image, fixed_input_size,
                                opencv_input_size, qdq_counts, quantize_int8)
from models.onnx_runner import OnnxRunner, onnx_decoder, onnx_runner
from lowlevel.enhancers import build_enhancer
from lowlevel.onnx_enhance import GRAPH_ENHANCERS, prepend_enhancer


def compare(detector, onnx_det: OnnxRunner, rgb: np.ndarray) -> dict:
    x = detector.to_input(detector.enhanced(rgb[None]) if detector.enhance else rgb[None])
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


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--weights", required=True)
    p.add_argument("--out", type=Path, default=Path("model.onnx"))
    p.add_argument("--image", type=Path, default=None, help="image for the check")
    p.add_argument("--tolerance", type=float, default=1e-3,
                   help="largest allowed difference between onnxruntime and PyTorch (scores "
                        "for DSFD, normalised detections otherwise)")
    p.add_argument("--opencv", action="store_true",
                   help="fixed-size graph for cv2.dnn / cv2.FaceDetectorYN (YuNet, RetinaFace)")
    p.add_argument("--input-size", type=int, nargs=2, default=(640, 640), metavar=("W", "H"),
                   help="--opencv: the graph's input width and height (YuNet: rounded up to "
                        "multiples of 32)")
    p.add_argument("--int8", action="store_true",
                   help="static QDQ int8 graph (needs --calib); float graph kept as "
                        "<out>.fp32.onnx")
    p.add_argument("--calib", type=Path, default=None, help="--int8: folder of calibration images")
    p.add_argument("--calib-limit", type=int, default=200,
                   help="--int8: at most this many calibration images (sorted by name)")
    p.add_argument("--calib-max-side", type=int, default=640,
                   help="--int8, size-dynamic graph: calibration images scaled down to this "
                        "longer side")
    p.add_argument("--calib-method", choices=CALIBRATION_METHODS, default="minmax",
                   help="--int8: activation range estimate (percentile, entropy: images "
                        "fitted to a --calib-max-side square, one shape for the histograms)")
    p.add_argument("--per-tensor", action="store_true",
                   help="--int8: one weight scale per tensor instead of per output channel")
    p.add_argument("--exclude", nargs="*", default=[], metavar="NAME_OR_OP",
                   help="--int8: node names or operator types left in float")
    p.add_argument("--enhance", choices=("none", *GRAPH_ENHANCERS), default="none",
                   help="night mode inside the graph: the enhancer's pixel table in front of "
                        "the network (lowlevel/onnx_enhance.py says which cannot be)")
    p.add_argument("opts", nargs="*", metavar="KEY.SUB=VALUE")
    args = p.parse_args(argv)
    if args.int8 and args.calib is None:
        p.error("--int8 needs --calib DIR (a folder of calibration images)")
    if args.calib is not None and not args.int8:
        p.error("--calib is only used with --int8")
    return args


def fp32_path(out: Path) -> Path:
    """Where ``--int8`` keeps the float graph: ``model.onnx`` -> ``model.fp32.onnx``."""
    return out.with_name(out.stem + ".fp32" + out.suffix)


def write_int8(cfg, src: Path, args) -> None:
    import onnx
    decoder = onnx_decoder(cfg)
    paths = calibration_images(args.calib, args.calib_limit)
    size = fixed_input_size(src)
    if size is None and args.calib_method != "minmax":     # histograms need one shape
        size = (args.calib_max_side, args.calib_max_side)
    reader = ImageCalibrationReader(paths, decoder.inputs, size, args.calib_max_side)
    ops = {n.op_type for n in onnx.load(str(src)).graph.node}
    quantize_int8(src, args.out, reader, per_channel=not args.per_tensor,
                  method=args.calib_method,
                  exclude_nodes=[e for e in args.exclude if e not in ops],
                  exclude_ops=[e for e in args.exclude if e in ops])
    counts = qdq_counts(args.out)
    print(f"int8 {args.out} ({args.out.stat().st_size / 2 ** 20:.2f} MiB): calibrated on "
          f"{len(paths)} images of {args.calib} ({args.calib_method}, "
          f"{'per-tensor' if args.per_tensor else 'per-channel'} weights); "
          f"{counts['QuantizeLinear']} QuantizeLinear, {counts['DequantizeLinear']} "
          f"DequantizeLinear, {counts['float_ops']} float-only nodes")


def check_images(rgb: np.ndarray, fixed: tuple[int, int] | None) -> list[np.ndarray]:
    """The check's images: ``rgb`` and a crop of it, or for a fixed-size graph ``rgb`` fitted
    to that size."""
    if fixed is not None:
        return [fit_image(rgb, fixed, None)]
    return [rgb, np.ascontiguousarray(rgb[: rgb.shape[0] * 3 // 4, : rgb.shape[1] * 2 // 3])]


def check_opencv(cfg, detector, path: Path, rgb: np.ndarray) -> float:
    """OpenCV's detections of the graph against PyTorch's: readNet with our decoding, and for
    YuNet cv2.FaceDetectorYN itself. Returns the largest normalised difference."""
    ref = detector(rgb[None])[0]
    h, w = rgb.shape[:2]
    runs = {"cv2.dnn.readNet": OpenCVRunner(path, onnx_decoder(cfg))(rgb)}
    if cfg.MODEL.NAME.startswith("yunet"):
        d = cfg.DETECT
        rows = face_detector_yn(path, rgb[..., ::-1], d.CONF_THRESH, d.NMS_THRESH, d.NMS_TOP_K)
        runs["cv2.FaceDetectorYN"] = torch.from_numpy(rows / np.array([w, h, w, h, 1] + [w, h] * 5,
                                                                      np.float32))
    worst = 0.0
    for name, got in runs.items():
        n = min(len(got), len(ref), 50)
        diff = float((got[:n] - ref[:n]).abs().max()) if n else 0.0
        worst = max(worst, diff if len(got) == len(ref) else float("inf"))
        print(f"  {h}x{w} {name}: detections opencv/torch {len(got)}/{len(ref)}, top-50 "
              f"detection diff {diff:.2e}")
    return worst


def check_dsfd_outputs(detector, runner: OnnxRunner, rgb: np.ndarray) -> float:
    """Print DSFD's raw-output and detection differences on one image; return the score's."""
    r = compare(detector, runner, rgb)
    print(f"  {r['size'][0]}x{r['size'][1]}: max |loc| diff {r['loc']:.2e}, max "
          f"|score| diff {r['score']:.2e}, detections onnx/torch "
          f"{r['detections'][0]}/{r['detections'][1]}, top-50 box diff "
          f"{r['top_boxes']:.2e}")
    return r["score"]


def check_detections(detector, runner, rgb: np.ndarray) -> float:
    """Print the detection differences on one image (any detector); return the largest."""
    r = compare_detections(detector, runner, rgb)
    print(f"  {r['size'][0]}x{r['size'][1]}: detections onnx/torch "
          f"{r['detections'][0]}/{r['detections'][1]}, top-50 detection diff "
          f"{r['top_boxes']:.2e}")
    return r["top_boxes"]


def check(cfg, detector, path: Path, rgb: np.ndarray, opencv: bool) -> float:
    """Print the onnxruntime (and OpenCV) vs PyTorch differences; return the largest."""
    worst = 0.0
    images = check_images(rgb, fixed_input_size(path))
    runner = onnx_runner(path, cfg)
    for img in map(np.ascontiguousarray, images):
        if cfg.MODEL.NAME == "dsfd_vgg":            # its raw outputs too; no OpenCV variant
            worst = max(worst, check_dsfd_outputs(detector, runner, img))
            continue
        worst = max(worst, check_detections(detector, runner, img))
        if opencv:
            worst = max(worst, check_opencv(cfg, detector, path, img))
    return worst


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = config_lib.load_config(overrides=args.opts)
    detector = build_face_detector(cfg, args.weights, torch.device("cpu"))
    graph = fp32_path(args.out) if args.int8 else args.out
    if args.opencv:
        size = opencv_input_size(cfg, *args.input_size)
        export_opencv(cfg.MODEL.NAME, detector.net, graph, size)
        print(f"OpenCV graph: input fixed at 1x3x{size[0]}x{size[1]}")
    else:
        entry_of(cfg).export_onnx(detector.net, graph)
    if args.enhance != "none":
        if args.opencv:
            raise SystemExit("--enhance is not offered with --opencv (OpenCV's importer is "
                             "not checked with the table lookup)")
        spec = entry_of(cfg).input_spec(cfg)
        prepend_enhancer(graph, args.enhance, spec.mean, spec.std)
        detector.enhance = build_enhancer(args.enhance)       # the check's PyTorch side
        print(f"night mode in the graph: --enhance {args.enhance}")
    print(f"exported {graph} ({graph.stat().st_size / 2 ** 20:.1f} MiB)")
    if args.int8:
        write_int8(cfg, graph, args)
    if args.image is not None:
        rgb = read_rgb(args.image)
    else:
        rgb = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    worst = check(cfg, detector, args.out, rgb, args.opencv and not args.int8)
    if args.int8:
        print("int8: differences from PyTorch are expected (bench/bench_int8.py measures AP)")
        return 0
    if worst > args.tolerance:
        print(f"onnxruntime and PyTorch differ by {worst:.2e} > {args.tolerance}")
        return 1
    print("onnxruntime matches PyTorch" + (" (and OpenCV)" if args.opencv else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
