"""Adapting a detector to a user's night footage without labels: the footage, the night-mode
teacher, its pseudo labels and the held-out report numbers (tools/adapt_to_night.py drives it;
the student's batches are in :mod:`adapt.pseudo.night_student`).

* **Footage** (:func:`collect_frames`): the frames of an image, folder, list file, video or
  camera (:func:`data.media.iter_frames`), written once into the run folder as
  ``frames/raw/<n>.png`` and their night-mode copies ``frames/night/<n>.png`` (the enhancer the
  caller passes, e.g. ``lowlevel.enhancers.build_enhancer('auto')``), with ``frames/frames.json``
  naming the source of each; a resumed run reuses them. :func:`split_frames` holds every k-th
  frame out (``ADAPT.HOLDOUT``): those are never trained on and give the before/after numbers.
* **Teacher** (:class:`NightTeacher`): the detector in night mode, as tools/make_pseudo_labels.py
  runs a teacher: every pass of the plan (each ``ADAPT.SCALES`` factor and, with
  ``ADAPT.FLIP``, its mirror) on the raw frame and/or its night-mode copy
  (``ADAPT.TEACHER_INPUT``), merged as one model by ``ADAPT.FUSION``
  (:func:`models.test_time.merged_passes`). Its detections become pseudo-label records
  (:func:`label_frames`, the format of adapt/pseudo/labels.py); the student splits them by
  ``PSEUDO.HIGH`` / ``PSEUDO.LOW`` into faces, ignore regions and background.
* **Held-out numbers** (:func:`holdout_metrics`): on the held-out frames, the deployed detector
  (one plain pass on the frame it will see: the raw frame, or with ``ADAPT.STUDENT_INPUT=
  enhanced`` its night-mode copy) against the night-mode teacher of the same weights (its fused
  labels), boxes matched one to one (greedy, ``ADAPT.MATCH_IOU``). The score the run maximises
  (``SCORE_KEY``) is the faces per frame both find scoring >= PSEUDO.LOW: unlike a count of
  confident faces it moves while the scores are still under PSEUDO.HIGH (the darkest footage),
  and a detector that stops finding faces loses it. Also reported: the F1 of the two sets
  >= PSEUDO.LOW, and >= PSEUDO.HIGH the confident faces of each, the faces both find and their
  F1 (the teacher-student agreement; 1 when both sets are empty).
"""
from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np

from utils.files import write_text_atomic
from data.image_folder import write_image_atomic
from data.media import FrameStats, camera_index, count_frames, iter_frames
from adapt.pseudo.labels import PseudoRecord, read_pseudo_labels, write_pseudo_labels
from models.test_time import Pass, TestTimeDetector, merged_passes

log = logging.getLogger(__name__)

MANIFEST = "frames.json"
TEACHER_INPUTS = ("raw", "enhanced", "both")
SCORE_KEY = "holdout_agreed_low"      # the held-out number the run maximises
STUDENT_INPUTS = ("raw", "enhanced")


# ---- the footage ------------------------------------------------------------------------------

@dataclass
class FrameSet:
    """The frames of a run folder: ``raw[i]`` / ``night[i]`` paths, ``names[i]`` where frame
    ``i`` came from, and the train / held-out split (indices)."""
    folder: Path
    names: list[str]
    train: list[int]
    holdout: list[int]

    def raw(self, i: int) -> Path:
        return self.folder / "raw" / f"{i:06d}.png"

    def night(self, i: int) -> Path:
        return self.folder / "night" / f"{i:06d}.png"

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw frame and its night-mode copy, BGR uint8."""
        pair = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in (self.raw(i), self.night(i))]
        for img, p in zip(pair, (self.raw(i), self.night(i))):
            if img is None:
                raise OSError(f"frame {p} of the run folder cannot be read: delete "
                              f"{self.folder / MANIFEST} to extract the footage again")
        return pair[0], pair[1]


def split_frames(n: int, holdout: float) -> tuple[list[int], list[int]]:
    """Every k-th frame held out (k = round(1 / holdout), from frame k // 2 on), the others
    trained on; at least one of each."""
    if n < 2:
        raise ValueError(f"the footage gave {n} frame(s): adaptation needs at least 2 (one is "
                         f"held out for the report)")
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"config key ADAPT.HOLDOUT={holdout} must be in (0, 1)")
    k = max(2, round(1.0 / holdout))
    held = list(range(min(k // 2, n - 1), n, k))
    train = [i for i in range(n) if i not in set(held)]
    return train, held


def footage_settings(cfg) -> dict:
    """What decides the extracted frames; a resumed run must have the same."""
    a = cfg.ADAPT
    return {"source": str(a.IMAGES), "every": float(a.EVERY), "max_frames": int(a.MAX_FRAMES),
            "enhance": str(a.ENHANCE)}


def _check_manifest(path: Path, settings: dict) -> list[str] | None:
    """The frame names recorded in ``path`` when its settings equal ``settings``."""
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    changed = [k for k in settings if saved.get("settings", {}).get(k) != settings[k]]
    if changed:
        keys = {"source": "ADAPT.IMAGES (--images)", "every": "ADAPT.EVERY",
                "max_frames": "ADAPT.MAX_FRAMES", "enhance": "ADAPT.ENHANCE"}
        raise ValueError(f"{path} holds frames extracted with other settings "
                         f"({', '.join(keys[k] for k in changed)} differ); use another --out, "
                         f"or delete {path.parent} to extract again")
    return list(saved["names"])


def collect_frames(cfg, folder: str | Path, enhancer: Callable[[np.ndarray], np.ndarray],
                   progress: bool = True) -> FrameSet:
    """Extract the footage ``ADAPT.IMAGES`` into ``folder`` (module doc) or reuse an earlier
    extraction with the same settings; returns the frames, split by ADAPT.HOLDOUT."""
    folder = Path(folder)
    settings = footage_settings(cfg)
    names = _check_manifest(folder / MANIFEST, settings)
    if names is None:
        names = _extract(cfg, folder, enhancer, progress)
        write_text_atomic(json.dumps({"settings": settings, "names": names}, indent=1) + "\n",
                          folder / MANIFEST)
    else:
        log.info("footage: %d frames extracted before, in %s", len(names), folder)
    train, held = split_frames(len(names), cfg.ADAPT.HOLDOUT)
    return FrameSet(folder, names, train, held)


def _extract(cfg, folder: Path, enhancer, progress: bool) -> list[str]:
    a = cfg.ADAPT
    source = a.IMAGES
    if not str(source):
        raise ValueError("no footage: give --images (config key ADAPT.IMAGES)")
    max_frames = a.MAX_FRAMES if a.MAX_FRAMES > 0 else None
    if camera_index(source) is not None and max_frames is None:
        raise ValueError(f"--images {source} is a camera: give ADAPT.MAX_FRAMES > 0 (how many "
                         f"frames to take)")
    every = a.EVERY if a.EVERY > 0 else None
    total = count_frames(source, every, max_frames)      # raises naming a missing source
    stats, names = FrameStats(), []
    frames = iter_frames(source, every, max_frames, stats=stats)
    if progress:
        from tqdm import tqdm
        frames = tqdm(frames, total=total, desc="footage", unit="frame")
    for name, bgr in frames:
        i = len(names)
        write_image_atomic(np.ascontiguousarray(bgr[..., ::-1]), folder / "raw" / f"{i:06d}.png")
        night = enhancer(bgr)
        write_image_atomic(np.ascontiguousarray(night[..., ::-1]),
                           folder / "night" / f"{i:06d}.png")
        names.append(name)
    log.info("footage %s: %s", source, stats.summary())
    if not names:
        raise ValueError(f"--images {source} (ADAPT.IMAGES) gave no readable frame")
    return names


# ---- the night-mode teacher -------------------------------------------------------------------

def teacher_plan(scales: Iterable[float], flip: bool) -> list[Pass]:
    scales = [float(s) for s in scales]
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"config key ADAPT.SCALES={scales} must be positive numbers")
    return [Pass(s) for s in scales] + ([Pass(s, flip=True) for s in scales] if flip else [])


class NightTeacher:
    """A :class:`models.inference.FaceDetector` in night mode (module doc): ``label(raw,
    night)`` gives pixel detections ``[n, 5 + 2L]`` of one frame (BGR uint8 both)."""

    def __init__(self, detector, plan: list[Pass], inputs: str = "both", fusion: str = "wbf",
                 iou: float = 0.55):
        if inputs not in TEACHER_INPUTS:
            raise ValueError(f"config key ADAPT.TEACHER_INPUT={inputs!r} is not one of "
                             f"{', '.join(TEACHER_INPUTS)}")
        self.runner = TestTimeDetector(detector, vote=False, dummy_rows=False,
                                       landmarks=getattr(detector, "num_landmarks", 0) > 0)
        self.plan, self.inputs, self.fusion, self.iou = plan, inputs, fusion, iou

    @classmethod
    def from_config(cls, detector, cfg) -> "NightTeacher":
        a = cfg.ADAPT
        return cls(detector, teacher_plan(a.SCALES, a.FLIP), a.TEACHER_INPUT, a.FUSION, a.IOU)

    @classmethod
    def of_module(cls, net, cfg, device) -> "NightTeacher":
        """The teacher of the network ``net`` (MODEL.NAME's post-processing, its score
        threshold raised to ADAPT.SKIP_THRESH: fusing thousands of near-zero boxes of a noisy
        frame would cost seconds and change nothing above PSEUDO.LOW)."""
        from models.inference import FaceDetector
        tcfg = copy.deepcopy(cfg)
        tcfg.DETECT.CONF_THRESH = max(cfg.DETECT.CONF_THRESH, cfg.ADAPT.SKIP_THRESH)
        return cls.from_config(FaceDetector.from_config(net, tcfg, device), cfg)

    def label(self, raw: np.ndarray, night: np.ndarray) -> np.ndarray:
        rgb = {"raw": [[raw[..., ::-1]]], "enhanced": [[night[..., ::-1]]],
               "both": [[raw[..., ::-1]], [night[..., ::-1]]]}[self.inputs]
        sources = [[np.ascontiguousarray(img) for img in s] for s in rgb]
        return merged_passes(self.runner, sources, self.plan, self.fusion, self.iou)[0]

    def plain(self, bgr: np.ndarray) -> np.ndarray:
        """The deployed detector's view: one pass on the frame it is given (BGR uint8)."""
        return self.runner.run_pass([np.ascontiguousarray(bgr[..., ::-1])], Pass(1.0))[0]


def student_view(raw: np.ndarray, night: np.ndarray, student_input: str) -> np.ndarray:
    """The frame the student sees (ADAPT.STUDENT_INPUT): the raw frame or its night-mode copy."""
    if student_input not in STUDENT_INPUTS:
        raise ValueError(f"config key ADAPT.STUDENT_INPUT={student_input!r} is not one of "
                         f"{', '.join(STUDENT_INPUTS)}")
    return night if student_input == "enhanced" else raw


def label_frames(teacher: NightTeacher, frames: FrameSet, indices: list[int],
                 progress: bool = True) -> list[PseudoRecord]:
    """The teacher's detections on ``indices`` as pseudo-label records of the raw frames."""
    items = indices
    if progress:
        from tqdm import tqdm
        items = tqdm(indices, desc="pseudo labels", unit="frame")
    out = []
    for i in items:
        raw, night = frames.read(i)
        dets = teacher.label(raw, night)
        out.append(PseudoRecord.from_detections(str(frames.raw(i).resolve()),
                                                (raw.shape[1], raw.shape[0]), dets))
    return out


def round_labels(path: Path, make: Callable[[], list[PseudoRecord]]) -> list[PseudoRecord]:
    """The labels of one round: read from ``path`` when it exists (a resumed run), else made
    and written there (atomically)."""
    if path.is_file():
        return read_pseudo_labels(path)
    records = make()
    write_pseudo_labels(path, records)
    return records


# ---- held-out numbers -------------------------------------------------------------------------

def _area(x: np.ndarray) -> np.ndarray:
    return np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of pixel corner boxes ``a`` [n, 4+] and ``b`` [m, 4+]."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    union = _area(a)[:, None] + _area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def greedy_matches(a: np.ndarray, b: np.ndarray, iou: float) -> int:
    """One-to-one matches between ``a`` and ``b``, best IoU first, each at least ``iou``."""
    if not len(a) or not len(b):
        return 0
    m = iou_matrix(a, b)
    pairs = np.argwhere(m >= iou)
    order = np.argsort(-m[pairs[:, 0], pairs[:, 1]], kind="stable")
    used_a, used_b, n = set(), set(), 0
    for i, j in pairs[order]:
        if i not in used_a and j not in used_b:
            used_a.add(int(i))
            used_b.add(int(j))
            n += 1
    return n


def f1(matched: int, a: int, b: int) -> float:
    """F1 of two box sets with ``matched`` one-to-one matches; 1 when both are empty."""
    return 2.0 * matched / (a + b) if a + b else 1.0


def _agreement(s: np.ndarray, t: np.ndarray, thresh: float, iou: float) -> tuple[int, int, int]:
    """(matched, len(s), len(t)) of the boxes of ``s`` and ``t`` scoring >= ``thresh``."""
    s, t = s[s[:, 4] >= thresh], t[t[:, 4] >= thresh]
    return greedy_matches(s, t, iou), len(s), len(t)


def holdout_metrics(teacher: NightTeacher, frames: FrameSet, cfg) -> dict:
    """The held-out numbers (module doc) of the teacher's weights; the first key is the score
    to maximise."""
    iou = cfg.ADAPT.MATCH_IOU
    low = np.zeros(3, np.int64)                  # matched, deployed, teacher (>= PSEUDO.LOW)
    high = np.zeros(3, np.int64)                 # the same >= PSEUDO.HIGH
    for i in frames.holdout:
        raw, night = frames.read(i)
        t = teacher.label(raw, night)
        s = teacher.plain(student_view(raw, night, cfg.ADAPT.STUDENT_INPUT))
        low += _agreement(s, t, cfg.PSEUDO.LOW, iou)
        high += _agreement(s, t, cfg.PSEUDO.HIGH, iou)
    n = max(len(frames.holdout), 1)
    low, high = [int(v) for v in low], [int(v) for v in high]     # plain Python numbers: the
    return {SCORE_KEY: low[0] / n, "holdout_agreement_low": f1(*low),  # checkpoint keeps them
            "holdout_agreed": high[0] / n, "holdout_agreement": f1(*high),
            "holdout_confident": high[1] / n, "holdout_teacher_confident": high[2] / n}
