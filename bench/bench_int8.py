"""int8 (static QDQ) against fp32 ONNX: network latency and AP on real labelled faces.

    python bench/bench_int8.py [--models yunet_n retinaface_mnet] [--variants NAME ...]
        [--sizes 320 640] [--rounds 7] [--seconds 0.3] [--levels clean L1 ...] [--iou 0.35]
        [--profile] [--shared-data ../shared/data] [--out /tmp/bench_int8]

Graphs: ``tools/export_onnx.py``'s size-dynamic export (``DetectorEntry.export_onnx``) and its
int8 copies by ``models.onnx_deploy.quantize_int8`` (the code behind ``--int8 --calib``), one
per :data:`VARIANTS` entry: the default (per-channel int8 weights, min/max ranges), per-tensor
weights, percentile ranges, and the default with the first convolution, the depthwise
convolutions or the detection heads left in float, and percentile ranges with the first
convolution in float.

Calibration and scoring never share a photo (:func:`check_split` refuses an overlap):

* calibration: the photos that scikit-image and matplotlib ship (``data/real_photos.py`` and
  :data:`EXTRA_PHOTOS`), and one camera-model night copy of each (``data/camera.py``,
  ``darkface`` preset, its own exposure draw, seed = photo index);
* scoring: the 43 hand-labelled faces of the 9 PASCAL VOC photos of
  ``../shared/data/dlib_faces`` (dlib's ``training.xml`` + ``testing.xml``), bright and at the
  night benchmark's camera-model levels (``bench/night_benchmark.py``'s ``LEVELS``: the
  ``darkface`` preset at a fixed exposure per level, one seed per photo). AP: the DARK FACE
  protocol of ``evaluation/darkface.py`` at IoU ``--iou`` = 0.35, not 0.5, because dlib's boxes
  are tight squares inside the larger WIDER-style boxes the detectors draw. Each image runs at
  its own size (padded to the graph's multiple), thresholds of the model preset.

Only YuNet has trained weights here (``../shared/data/yunet/yunet_n.pth``); RetinaFace runs with
random weights, so its rows give the latency only (AP "n/a").

Latency: ``session.run`` of the network alone (no pre- or post-processing), 1 intra-op thread,
on the astronaut scaled to S x S; every graph runs about ``--seconds`` per round, rounds
interleaved; the table gives the best round and the median over rounds of the per-round
fp32/int8 time ratio (which cancels most of a shared machine's drift), for the wall time and
for the thread CPU time of the runs (onnxruntime runs a 1-thread session on the calling
thread: the CPU time leaves out the time other jobs hold the core, not their cache traffic).
``--profile`` adds onnxruntime's per-operator times at the largest size (convolutions split by
kind). CPU timings on a shared machine are noisy.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch

from data.annotations import FaceRecord, read_annotations
from data.config import load_config
from evaluation.darkface import evaluate_darkface_boxes
from models.onnx_deploy import (ImageCalibrationReader, qdq_counts,
                                quantize_int8)
from models.onnx_runner import onnx_decoder, onnx_runner, session

ROOT = Path(__file__).resolve().parents[1]

SHARED = ROOT.parent / "shared" / "data"
DLIB_FILES = ("training.xml", "testing.xml")
EXTRA_PHOTOS = ("coffee", "chelsea", "rocket", "cat")       # skimage.data, no labelled face
IOU = 0.35
HEAD_MARKERS = ("bbox_head", "ClassHead", "BboxHead", "LandmarkHead")


def _first_conv(nodes) -> list[str]:
    return [next(n.name for n in nodes if n.op_type == "Conv")]


def _depthwise(nodes) -> list[str]:
    return [n.name for n in nodes if n.op_type == "Conv" and any(
        a.name == "group" and a.i > 1 for a in n.attribute)]


def _heads(nodes) -> list[str]:
    return [n.name for n in nodes if any(m in n.name for m in HEAD_MARKERS)]


# name -> (quantize_int8 keyword arguments, fp32 graph nodes -> names left in float)
VARIANTS: dict[str, tuple[dict, Callable | None]] = {
    "int8": ({}, None),
    "int8 per-tensor": ({"per_channel": False}, None),
    "int8 percentile": ({"method": "percentile"}, None),
    "int8 first conv fp32": ({}, _first_conv),
    "int8 depthwise fp32": ({}, _depthwise),
    "int8 heads fp32": ({}, _heads),
    "int8 percentile first conv fp32": ({"method": "percentile"}, _first_conv),
}


# ---- data ----------------------------------------------------------------------------------------

def calibration_photos() -> dict[str, np.ndarray]:
    """RGB photos shipped by scikit-image / matplotlib (none of them a scored photo)."""
    from skimage import data

    from data.real_photos import REAL_PHOTOS, load_real_photo
    photos = {name: load_real_photo(name) for name in REAL_PHOTOS}
    photos.update({name: np.ascontiguousarray(getattr(data, name)()[..., :3])
                   for name in EXTRA_PHOTOS})
    return photos


def write_calibration_set(out: Path) -> list[Path]:
    """``out/<name>.png`` per photo and ``out/<name>_night.png`` (camera model) when
    ``data/camera.py`` is there."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        from data.camera import darken_uint8
    except ImportError:
        darken_uint8 = None
    paths = []
    for k, (name, rgb) in enumerate(calibration_photos().items()):
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        cv2.imwrite(str(out / f"{name}.png"), bgr)
        paths.append(out / f"{name}.png")
        if darken_uint8 is not None:
            cv2.imwrite(str(out / f"{name}_night.png"), darken_uint8(bgr, "darkface", seed=k))
            paths.append(out / f"{name}_night.png")
    return paths


def scored_records(shared: Path) -> list[FaceRecord]:
    folder = shared / "dlib_faces"
    missing = [folder / n for n in DLIB_FILES if not (folder / n).is_file()]
    if missing:
        raise SystemExit(f"{missing[0]} not found (--shared-data): the AP needs dlib's faces "
                         "(../shared/data/dlib_faces/README.md)")
    return [r for n in DLIB_FILES for r in read_annotations(folder / n, "dlib_xml")]


def check_split(calibration: Sequence[Path], records: Sequence[FaceRecord]) -> None:
    """SystemExit if a calibration image has the pixels of a scored photo (at its size)."""
    scored = {}
    for r in records:
        bgr = cv2.imread(r.path)
        scored[bgr.shape] = scored.get(bgr.shape, []) + [bgr]
    for path in calibration:
        img = cv2.imread(str(path))
        if any(np.array_equal(img, s) for s in scored.get(img.shape, [])):
            raise SystemExit(f"calibration image {path} is a scored photo")


def night_levels(names: Sequence[str] | None):
    """(name, camera overrides or None for bright) per level; the night benchmark's levels
    when ``bench/night_benchmark.py`` and ``data/camera.py`` are there, else bright only."""
    try:
        from bench.night_benchmark import LEVELS

        import data.camera  # noqa: F401
    except ImportError as exc:
        print(f"note: night levels unavailable ({exc}); bright photos only")
        return [("clean", None)]
    levels = [(lv.name, None if lv.name == "clean" else dict(lv.overrides)) for lv in LEVELS]
    if names:
        known = {n for n, _ in levels}
        bad = [n for n in names if n not in known]
        if bad:
            raise SystemExit(f"--levels: unknown {bad}; known: {sorted(known)}")
        levels = [lv for lv in levels if lv[0] in names]
    return levels


def level_images(records: Sequence[FaceRecord], overrides: dict | None) -> list[np.ndarray]:
    """RGB photos, darkened by the camera model with ``overrides`` (seed = photo index)."""
    images = []
    for k, r in enumerate(records):
        bgr = cv2.imread(r.path)
        if overrides is not None:
            from data.camera import darken_uint8
            bgr = darken_uint8(bgr, "darkface", seed=1000 + k, overrides=overrides)
        images.append(np.ascontiguousarray(bgr[..., ::-1]))
    return images


# ---- graphs --------------------------------------------------------------------------------------

def load_network(cfg, shared: Path):
    """(network, whether its weights are trained): YuNet's released weights, else random."""
    from models.registry import build_net
    torch.manual_seed(0)
    net = build_net(cfg).eval()
    name = cfg.MODEL.NAME
    weights = shared / "yunet" / f"{name}.pth"
    if name.startswith("yunet") and weights.is_file():
        from models.yunet.net import load_yunet_weights
        load_yunet_weights(net, weights)
        return net, True
    return net, False


def write_graphs(cfg, net, calibration: Sequence[Path], variants: Sequence[str],
                 out: Path) -> dict[str, Path]:
    """fp32 export and one int8 graph per variant; prints the quantisation summary."""
    import onnx

    from models.registry import get_entry
    name = cfg.MODEL.NAME
    graphs = {"fp32": out / f"{name}.fp32.onnx"}
    get_entry(name).export_onnx(net, graphs["fp32"])
    nodes = list(onnx.load(str(graphs["fp32"])).graph.node)
    to_feeds = onnx_decoder(cfg).inputs
    for variant in variants:
        kwargs, excluded = VARIANTS[variant]
        path = out / f"{name}.{variant.replace(' ', '_')}.onnx"
        t = time.perf_counter()
        # histogram methods stack the calibration outputs: one input shape (640 x 640)
        size = None if kwargs.get("method", "minmax") == "minmax" else (640, 640)
        quantize_int8(graphs["fp32"], path, ImageCalibrationReader(calibration, to_feeds, size),
                      exclude_nodes=excluded(nodes) if excluded else (), **kwargs)
        c = qdq_counts(path)
        print(f"  {name} {variant}: {c['QuantizeLinear']} Q / {c['DequantizeLinear']} DQ "
              f"nodes, {c['float_ops']} float-only, {time.perf_counter() - t:.1f} s")
        graphs[variant] = path
    return graphs


# ---- latency -------------------------------------------------------------------------------------

def latency(graphs: dict[str, Path], feeds: dict, rounds: int, seconds: float) -> dict:
    """Per graph: (best-round wall ms, median per-round fp32/graph wall ratio, median CPU ms,
    median per-round fp32/graph CPU ratio). With one intra-op thread onnxruntime runs on the
    calling thread, so its thread CPU time leaves out the time other jobs hold the core."""
    sessions = {k: session(p, threads=1) for k, p in graphs.items()}
    for s in sessions.values():
        for _ in range(3):
            s.run(None, feeds)
    wall = {k: [] for k in sessions}
    cpu = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            walls, cpus, start = [], [], time.perf_counter()
            while time.perf_counter() - start < seconds:
                t, c = time.perf_counter(), time.thread_time()
                s.run(None, feeds)
                cpus.append(time.thread_time() - c)
                walls.append(time.perf_counter() - t)
            wall[k].append(min(walls))
            cpu[k].append(statistics.median(cpus))
    ratio = lambda d, k: statistics.median(f / t for f, t in zip(d["fp32"], d[k]))  # noqa: E731
    return {k: (1000 * min(wall[k]), ratio(wall, k), 1000 * statistics.median(cpu[k]),
                ratio(cpu, k)) for k in sessions}


def conv_kinds(fp32: Path) -> dict[str, str]:
    """Tensor/node name -> the kind of convolution that makes it (first, depthwise 3x3,
    pointwise 1x1, dense), following a fused activation's output too."""
    import onnx
    graph = onnx.load(str(fp32)).graph
    dims = {t.name: list(t.dims) for t in graph.initializer}
    kinds = {}
    for i, n in enumerate(n for n in graph.node if n.op_type == "Conv"):
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        kind = ("conv (first)" if i == 0 else "conv depthwise" if group > 1
                else "conv 1x1" if dims[n.input[1]][2] == 1 else "conv dense")
        kinds[n.name] = kinds[n.output[0]] = kind
    for n in graph.node:
        if n.op_type in ("Relu", "LeakyRelu") and n.input[0] in kinds:
            kinds[n.output[0]] = kinds[n.input[0]]
    return kinds


def profile_ops(path: Path, feeds: dict, out: Path, kinds: dict[str, str],
                runs: int = 20) -> Counter:
    """onnxruntime's summed kernel time (ms per run, 1 thread) per operator type, the
    convolutions split by kind (:func:`conv_kinds`; the float graph's fused nodes are named
    after their output, the int8 graph's after the node plus ``_token_N``)."""
    import re

    import onnxruntime
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    opts.enable_profiling = True
    opts.profile_file_prefix = str(out / f"profile_{path.stem}")
    s = onnxruntime.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        s.run(None, feeds)
    events = json.loads(Path(s.end_profiling()).read_text())
    ops = Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            name = e["name"][: -len("_kernel_time")]
            kind = (kinds.get(re.sub(r"_token_\d+$", "", name))
                    or kinds.get(name.removesuffix("_nchwc")) or e["args"]["op_name"])
            ops[kind] += e["dur"] / 1000 / runs
    return ops


# ---- AP ------------------------------------------------------------------------------------------

def detections(path: Path, cfg, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Pixel ``x1 y1 x2 y2 score`` rows per image (onnxruntime, 2 threads)."""
    runner = onnx_runner(path, cfg, threads=2)
    out = []
    for rgb in images:
        h, w = rgb.shape[:2]
        out.append(runner(rgb)[:, :5].double().numpy() * np.array([w, h, w, h, 1.0]))
    return out


def average_precision(records: Sequence[FaceRecord], dets: Sequence[np.ndarray],
                      iou: float) -> float:
    gt = {str(i): r.boxes[r.labels == 1] for i, r in enumerate(records)}
    return evaluate_darkface_boxes(gt, {str(i): d for i, d in enumerate(dets)},
                                   iou_threshold=iou)["ap"]


# ---- report --------------------------------------------------------------------------------------

def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths))))


def bench_model(name: str, args, calibration: Sequence[Path], records, levels, out: Path):
    cfg = load_config(overrides=[f"MODEL.NAME='{name}'"])
    net, trained = load_network(cfg, args.shared_data)
    print(f"\n== {name} ({'released weights' if trained else 'random weights: latency only'})")
    graphs = write_graphs(cfg, net, calibration, args.variants, out)
    import skimage.data
    to_feeds = onnx_decoder(cfg).inputs
    speed = {}
    for size in args.sizes:
        rgb = cv2.resize(skimage.data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)
        speed[size] = latency(graphs, to_feeds(rgb), args.rounds, args.seconds)
    ap = {}
    if trained:
        for level, overrides in levels:
            images = level_images(records, overrides)
            ap[level] = {k: average_precision(records, detections(p, cfg, images), args.iou)
                         for k, p in graphs.items()}
    header = ["graph", *[f"{s}² ms" for s in args.sizes], *[f"x{s}²" for s in args.sizes],
              *[f"{s}² cpu ms" for s in args.sizes], *[f"cpu x{s}²" for s in args.sizes],
              *[f"AP {lv}" for lv, _ in levels]]
    rows = []
    for k in graphs:
        cells = [f"{speed[s][k][i]:.2f}" for i in range(4) for s in args.sizes]
        for lv, _ in levels:
            if not trained:
                cells.append("n/a")
            elif k == "fp32":
                cells.append(f"{ap[lv][k]:.4f}")
            else:
                cells.append(f"{ap[lv][k]:.4f} ({ap[lv][k] - ap[lv]['fp32']:+.4f})")
        rows.append([k, *cells])
    print(f"\n{name}: network latency (1 thread; ms: best round's fastest run, cpu ms: median "
          f"thread CPU time of a run; x = fp32 time / graph time, median of {args.rounds} "
          f"interleaved rounds) and AP at IoU {args.iou} on {len(records)} dlib "
          f"photos ({sum(len(r.boxes) for r in records)} faces), (change vs fp32)")
    print_table(header, rows)
    if args.profile:
        size = max(args.sizes)
        rgb = cv2.resize(skimage.data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)
        kinds = conv_kinds(graphs["fp32"])
        ops = {k: profile_ops(p, to_feeds(rgb), out, kinds) for k, p in graphs.items()}
        names = sorted({o for c in ops.values() for o in c}, key=lambda o: -max(
            c.get(o, 0) for c in ops.values()))
        print(f"\n{name}: onnxruntime kernel time per operator type at {size}² (ms per run, "
              f"1 thread)")
        print_table(["operator", *ops], [[o, *[f"{ops[k].get(o, 0):.2f}" for k in ops]]
                                         for o in names] + [["total", *[
                                             f"{sum(ops[k].values()):.2f}" for k in ops]]])
    return {"latency": speed, "ap": ap}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["yunet_n", "retinaface_mnet"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                   metavar="VARIANT", help=f"int8 variants: {', '.join(VARIANTS)}")
    p.add_argument("--sizes", nargs="+", type=int, default=[320, 640])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--seconds", type=float, default=0.3)
    p.add_argument("--levels", nargs="+", default=None,
                   help="night levels to score (default: all of bench/night_benchmark.py's)")
    p.add_argument("--iou", type=float, default=IOU)
    p.add_argument("--profile", action="store_true", help="per-operator times")
    p.add_argument("--shared-data", type=Path, default=SHARED)
    p.add_argument("--out", type=Path, default=None, help="graphs and calibration images "
                                                          "(default: a temporary folder)")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        calibration = write_calibration_set(out / "calib")
        records = scored_records(args.shared_data)
        check_split(calibration, records)
        levels = night_levels(args.levels)
        print(f"calibration: {len(calibration)} images ({', '.join(p.stem for p in calibration)})"
              f"; scored: {len(records)} dlib photos; levels: "
              f"{', '.join(n for n, _ in levels)}")
        results = {name: bench_model(name, args, calibration, records, levels, out)
                   for name in args.models}
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
