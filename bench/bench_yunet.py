"""YuNet end to end: pre-processing, network, decoding and NMS, images per second.

    python bench/bench_yunet.py [--variant yunet_n] [--sizes 320 640] [--threads 1 2]
                                [--rounds 7] [--seconds 0.5] [--shared-data ../shared/data]

Pipelines, timed in the same run, interleaved round by round (each round runs every pipeline
for about ``--seconds``; the table gives the best round and the median over rounds of the
per-round ratio to the official ONNX, which cancels most of the noise of a shared machine):

* ``torch``: ``InputSpec.to_input`` (RGB uint8 -> BGR float, pad to 32), the eager network
  (BatchNorm unfused), :class:`models.yunet.postprocess.YuNetPostprocess`; ``torch (BN
  folded)``: the same with ``models.yunet.net.fuse_batchnorm``'s copy;
* ``onnx (ours)``: ``models.yunet.net.export_yunet_onnx`` (dynamic) in onnxruntime, numpy
  pre-processing, ``YuNetPostprocess.from_onnx``;
* ``onnx (official)``: ``yunet_<v>_dynamic.onnx`` with the same pre- and post-processing;
* ``cv2.FaceDetectorYN``: OpenCV's own pipeline on the official fixed-size ONNX (its DNN engine
  cannot read the dynamic file), when ``yunet_<v>_<S>_<S>.onnx`` exists;
* ``decode+NMS``: the post-processing alone on the official ONNX's outputs.

Input: ``skimage.data.astronaut()`` resized to S x S; thresholds 0.02 / 0.45 (the preset's).
Without the shared data the network has random weights and only ``torch`` and ``onnx (ours)``
run.
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from models.yunet.postprocess import YuNetPostprocess
from models.interface import InputSpec
from models.yunet.net import (YuNet, export_yunet_onnx, fuse_batchnorm,
                              load_yunet_weights)

ROOT = Path(__file__).resolve().parents[1]


def ort_session(path, threads: int):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def onnx_pipeline(session, post: YuNetPostprocess):
    def run(rgb: np.ndarray):
        h, w = rgb.shape[:2]
        x = np.zeros((1, 3, -(-h // 32) * 32, -(-w // 32) * 32), np.float32)
        x[0, :, :h, :w] = rgb[..., ::-1].transpose(2, 0, 1)          # BGR 0..255, padded
        outs = session.run(None, {"input": x})
        return post.from_onnx(outs, x.shape[-2:])
    return run


def torch_pipeline(net, post: YuNetPostprocess):
    spec = InputSpec("BGR", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), size_divisor=32)

    def run(rgb: np.ndarray):
        with torch.inference_mode():
            x = spec.to_input(torch.from_numpy(rgb)[None])
            return post(net(x), x.shape[-2:])
    return run


def cv2_pipeline(model: Path, size: int, threads: int):
    import cv2
    cv2.setNumThreads(threads)
    det = cv2.FaceDetectorYN.create(str(model), "", (size, size), 0.02, 0.45, 100000)
    return lambda rgb: det.detect(np.ascontiguousarray(rgb[..., ::-1]))


def per_image(fn, arg, seconds: float) -> float:
    """Mean seconds per call over about ``seconds`` of calls."""
    n, start = 0, time.perf_counter()
    while True:
        fn(arg)
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return elapsed / n


def bench(pipes: dict, arg, rounds: int, seconds: float) -> dict:
    for fn in pipes.values():                                            # warm-up
        per_image(fn, arg, 0.2)
    times = {name: [] for name in pipes}
    for _ in range(rounds):
        for name, fn in pipes.items():
            times[name].append(per_image(fn, arg, seconds))
    return times


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--variant", default="yunet_n", choices=["yunet_n", "yunet_s"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[320, 640])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=0.5)
    ap.add_argument("--shared-data", type=Path, default=ROOT.parent / "shared" / "data")
    args = ap.parse_args(argv)

    import cv2
    import skimage.data

    folder = args.shared_data / "yunet"
    net = YuNet(args.variant).eval()
    official = folder / f"{args.variant}_dynamic.onnx"
    if (folder / f"{args.variant}.pth").is_file():
        load_yunet_weights(net, folder / f"{args.variant}.pth")
    else:
        print(f"(no {folder}/{args.variant}.pth: random weights, no official rows)")
    ours = Path(tempfile.mkdtemp()) / f"{args.variant}_ours.onnx"
    export_yunet_onnx(net, ours, dynamic=True)
    post = YuNetPostprocess(conf_thresh=0.02, nms_thresh=0.45)
    fused = fuse_batchnorm(net)

    rows = []
    for size in args.sizes:
        rgb = np.ascontiguousarray(cv2.resize(skimage.data.astronaut(), (size, size),
                                              interpolation=cv2.INTER_AREA))
        for threads in args.threads:
            torch.set_num_threads(threads)
            pipes = {"torch": torch_pipeline(net, post),
                     "torch (BN folded)": torch_pipeline(fused, post),
                     "onnx (ours)": onnx_pipeline(ort_session(ours, threads), post)}
            if official.is_file():
                pipes["onnx (official)"] = onnx_pipeline(ort_session(official, threads), post)
                fixed = folder / f"{args.variant}_{size}_{size}.onnx"
                if fixed.is_file():
                    pipes["cv2.FaceDetectorYN"] = cv2_pipeline(fixed, size, threads)
                outs = ort_session(official, threads).run(
                    None, {"input": np.ascontiguousarray(rgb[..., ::-1].transpose(2, 0, 1),
                                                         dtype=np.float32)[None]})
                pipes["decode+NMS"] = lambda _, o=outs, s=(size, size): post.from_onnx(o, s)
            times = bench(pipes, rgb, args.rounds, args.seconds)
            base = times.get("onnx (official)")
            for name, t in times.items():
                ratio = (statistics.median(a / b for a, b in zip(t, base))
                         if base and name != "decode+NMS" else None)
                rows.append((size, threads, name, min(t), ratio))

    print(f"\n{args.variant}, end to end (pre-processing + network + decode + NMS), "
          f"best of {args.rounds} rounds\n")
    print("| input | threads | pipeline | ms / image | images / s | time vs official ONNX |")
    print("|---|---|---|---|---|---|")
    for size, threads, name, t, ratio in rows:
        r = f"{ratio:.2f}x" if ratio is not None else "-"
        print(f"| {size}x{size} | {threads} | {name} | {t * 1e3:.2f} | {1 / t:.0f} | {r} |")


if __name__ == "__main__":
    main()
