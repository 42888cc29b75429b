"""The demo's real-photo part (tools/demo.py): the released YuNet on real faces in the dark.

Photos: the 43 hand-labelled faces of the 9 PASCAL VOC photos in ``../shared/data/dlib_faces``
(dlib's ``training.xml`` + ``testing.xml``), scored at IoU 0.35 because dlib's boxes are tight
squares inside the larger boxes a WIDER-trained detector draws (bench/night_benchmark.py does the
same). Without that folder: the photos that ship with the packages (data/real_photos.py), with
the released YuNet_n's own detections on the clean photos (score >= 0.5) as the reference boxes,
scored at IoU 0.5.

Darkness: the camera model (data/camera.py, ``darkface`` preset) at fixed exposure ratios, the
levels of bench/night_benchmark.py (L5 matches a real DARK FACE frame's statistics), each photo
with a few noise seeds; the spread over the seeds is printed beside every AP so that a
difference smaller than the spread is not read as a gain.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from utils.stages import digest, is_done, keyed_dir, mark_done

ROOT = Path(__file__).resolve().parents[1]
DLIB_FILES = ("training.xml", "testing.xml")
# Darkness levels: the camera model's darkface preset (calibrated on a real DARK FACE frame) is
# L5; each milder level doubles the preset's exposure ratio (its whole sampling range), so the
# levels follow the preset's calibration.
LEVELS = {"L1": 16.0, "L2": 8.0, "L3": 4.0, "L4": 2.0, "L5": 1.0}
LEVEL_NOTES = {"L1": "dusk", "L2": "lit street", "L3": "night", "L4": "dark night",
               "L5": "DARK FACE dark"}
SEED_BASE = 18                    # darkening seed of (seed s, photo k): (SEED_BASE, s, k)
YUNET_THRESH = (0.02, 0.45)       # the released test setting (configs/models/yunet_n.yaml)
REFERENCE_SCORE = 0.5             # package photos: the released YuNet's clean boxes >= this


@dataclass
class RealSet:
    """Photos (paths), their face boxes (``[n, 4]`` x1 y1 x2 y2) and the IoU they are scored at."""
    name: str
    paths: list[Path]
    boxes: list[np.ndarray]
    iou: float


Detect = Callable[[np.ndarray], np.ndarray]    # BGR uint8 -> [k, 5] pixels x1 y1 x2 y2 score


def yunet_detector(name: str, weights: Path, enhancer: Callable | None = None) -> Detect:
    """A YuNet checkpoint at the photo's own size behind ``enhancer`` (BGR -> BGR)."""
    import torch
    from data.config import load_config
    from models.inference import build_face_detector
    cfg = load_config(overrides=[f"MODEL.NAME={name!r}",
                                 f"DETECT.CONF_THRESH={YUNET_THRESH[0]!r}",
                                 f"DETECT.NMS_THRESH={YUNET_THRESH[1]!r}"])
    fd = build_face_detector(cfg, weights, torch.device("cpu"))

    def detect(bgr: np.ndarray) -> np.ndarray:
        x = enhancer(bgr) if enhancer is not None else bgr
        rgb = cv2.cvtColor(x, cv2.COLOR_BGR2RGB)
        h, w = rgb.shape[:2]
        dets = fd(rgb[None])[0][:, :5].double().numpy()
        return dets * np.array([w, h, w, h, 1.0])
    return detect


def real_set(shared: Path, out: Path, yunet: Path) -> RealSet:
    """The dlib photos when ``shared/dlib_faces`` holds them, else the package photos."""
    folder = shared / "dlib_faces"
    if all((folder / f).is_file() for f in DLIB_FILES):
        from data.annotations import read_annotations
        records = [r for f in DLIB_FILES for r in read_annotations(folder / f, "dlib_xml")]
        return RealSet("dlib_faces (43 hand-labelled faces, 9 photos)",
                       [Path(r.path) for r in records],
                       [r.boxes[r.labels == 1] for r in records], 0.35)
    from data.real_photos import write_real_photo_set
    paths = write_real_photo_set(out / "package_photos", seed=0, copies=0)["clean"]
    detect = yunet_detector("yunet_n", yunet)
    boxes = []
    for path in paths:
        dets = detect(cv2.imread(str(path), cv2.IMREAD_COLOR))
        boxes.append(dets[dets[:, 4] >= REFERENCE_SCORE, :4])
    return RealSet("package photos (reference boxes: released YuNet_n on the clean photos)",
                   paths, boxes, 0.5)


def level_overrides(level: str) -> dict:
    """The camera-model overrides of ``level``: the darkface preset's exposure spec times the
    level's factor (a fixed value, or the numbers of a range/spec, scaled)."""
    from data.camera import PRESETS
    factor, spec = LEVELS[level], PRESETS["darkface"]["exposure"]
    if factor == 1.0:
        return {}
    if isinstance(spec, (int, float)):
        return {"exposure": float(spec) * factor}
    if isinstance(spec, (tuple, list)) and spec and isinstance(spec[0], str) and \
            spec[0] in ("uniform", "loguniform") and len(spec) == 3:
        return {"exposure": (spec[0], spec[1] * factor, spec[2] * factor)}
    raise ValueError(f"the darkface preset's exposure spec {spec!r} has no known scaling: "
                     "add it to tools/demo_real.py level_overrides")


def darkened(rs: RealSet, level: str, seed: int, out: Path) -> list[Path]:
    """The camera model's copies of the photos at ``level`` with noise seed ``seed`` (cached in
    a folder keyed by the level, the seed, the photos and the camera model's source)."""
    if level == "clean":
        return list(rs.paths)
    from data.camera import darken_uint8
    camera_code = digest((ROOT / "data" / "camera.py").read_text())
    overrides = level_overrides(level)
    key = {"preset": "darkface", "overrides": overrides, "seed": seed,
           "photos": [str(p) for p in rs.paths], "camera": camera_code}
    folder = keyed_dir(out, f"{level}-s{seed}", key)
    paths = [folder / f"{p.stem}.png" for p in rs.paths]
    if is_done(folder):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    for k, (src, dst) in enumerate(zip(rs.paths, paths)):
        bgr = cv2.imread(str(src), cv2.IMREAD_COLOR)
        if bgr is None:
            raise SystemExit(f"cannot read real photo {src}")
        s = int(np.random.SeedSequence([SEED_BASE, seed, k]).generate_state(1)[0])
        cv2.imwrite(str(dst), darken_uint8(bgr, "darkface", seed=s, overrides=overrides))
    mark_done(folder, key)
    return paths


def mean_luma(paths: Sequence[Path]) -> float:
    return float(np.mean([cv2.imread(str(p), cv2.IMREAD_GRAYSCALE).mean() for p in paths]))


def average_precision(rs: RealSet, dets: Sequence[np.ndarray]) -> float:
    from evaluation.darkface import evaluate_darkface_boxes
    gt = {str(i): b for i, b in enumerate(rs.boxes)}
    preds = {str(i): d for i, d in enumerate(dets)}
    return float(evaluate_darkface_boxes(gt, preds, iou_threshold=rs.iou)["ap"])


def detect_all(detect: Detect, paths: Sequence[Path]) -> list[np.ndarray]:
    return [detect(cv2.imread(str(p), cv2.IMREAD_COLOR)) for p in paths]


def spread_cell(values: Sequence[float]) -> str:
    """``mean`` for one value, ``mean ± half range`` over seeds."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {(max(values) - min(values)) / 2:.3f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def draw_pair(rs: RealSet, rows: dict[str, list[np.ndarray]], paths: Sequence[Path],
              picks: Sequence[int], out: Path, threshold: float = 0.5) -> None:
    """Detections of each row on photos ``picks`` (brightened for display only)."""
    from utils.visualize import draw_detections, grid
    panels, titles = [], []
    for label, dets in rows.items():
        for k in picks:
            rgb = cv2.cvtColor(cv2.imread(str(paths[k]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            rgb = np.clip(rgb * (100.0 / max(rgb.mean(), 1.0)), 0, 255).astype(np.uint8)
            panels.append(draw_detections(rgb, dets[k], threshold, gt=rs.boxes[k]))
            titles.append(f"{label}: {int((dets[k][:, 4] >= threshold).sum())} boxes >= "
                          f"{threshold} (green); labels in red")
    grid(panels, columns=len(picks), titles=titles).save(out)
