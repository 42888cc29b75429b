"""The periodic validation of a training run (RUN.EVAL_EVERY of ``train.py``; the fine-tune tool).

Every RUN.EVAL_EVERY steps the detector being trained runs on the images of FACE.SRC_VAL_FILE
(the first RUN.EVAL_IMAGES of them; 0 = all), one image at a time at its original size, single
scale, through :class:`models.inference.FaceDetector` (the origin-size setting of
Pytorch_Retinaface's WIDER FACE test), and the detections are scored against the file's boxes:

* FACE.SRC_VAL_FILE is read by ``data.annotations`` in FACE.VAL_FORMAT (``auto`` sniffs it):
  the WIDER list (images under FACE.DATA_ROOT), a RetinaFace ``label.txt`` or a ``labelv2``
  file (images under ``images/`` beside the file), or a Laboro TV Face root (its ``val``
  split; its ``tvval_list.txt`` has no boxes, so a ``val/label.txt`` with the dev ground truth
  must be there). FACE.IMAGE_ROOT is the training images' folder and is not used here.
  Landmarks are not needed. A file without a single box is an error.
* RUN.EVAL_PROTOCOL ``darkface`` (the default) reports ``val_ap``: the DARK FACE protocol
  (:func:`evaluation.darkface.evaluate_darkface_boxes`: AP at IoU 0.5, max-IoU matching, every
  detection a proposal). ``wider`` reports ``val_ap_wider``: the WIDER FACE protocol
  (:func:`evaluation.widerface.evaluate_widerface_boxes`) in its one setting without the
  official easy/medium/hard keep lists, "all faces": every face of the file is kept, none is
  ignored. Everything else is the official tool's: GT boxes as int32 ``x y w h`` (a non-integer
  box of the file is rounded as MATLAB's int32 conversion does, half away from zero), the int32
  ``boxoverlap.m`` matching (first GT in annotation order with rounded overlap 1), min-max
  score normalisation over all images in single precision, images without faces skipped (their
  detections are no false positives), 1000 thresholds, VOC AP. On WIDER FACE val this is not
  the "hard" AP (which ignores the faces outside ``wider_hard_val.mat``'s keep lists).
  ``both`` reports both.
* The metrics come back as a dict whose first entry is RUN.EVAL_METRIC: the engine keeps
  ``best.pth`` on the first metric (``engine.run.Run.evaluate``).

:func:`score_detections` is the scoring on its own, for predictions made elsewhere.
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from data.annotations import FaceRecord, detect_format, read_annotations
from utils.files import resolve_path
from data.image_folder import read_rgb
from evaluation.darkface import evaluate_darkface_boxes
from evaluation.widerface import SETTINGS, WiderGT, evaluate_widerface_boxes, to_int32
from models.inference import FaceDetector

log = logging.getLogger("train")

PROTOCOLS = ("darkface", "wider", "both")
METRICS = {"darkface": ("val_ap",), "wider": ("val_ap_wider",),
           "both": ("val_ap", "val_ap_wider")}


def check_metric(protocol: str, metric: str) -> None:
    """RUN.EVAL_METRIC must be one of the metrics RUN.EVAL_PROTOCOL reports."""
    if protocol not in METRICS:
        raise ValueError(f"config key RUN.EVAL_PROTOCOL={protocol!r} must be one of "
                         f"{', '.join(PROTOCOLS)}")
    if metric not in METRICS[protocol]:
        raise ValueError(f"config key RUN.EVAL_METRIC={metric!r} is not reported by "
                         f"RUN.EVAL_PROTOCOL={protocol!r} (it reports "
                         f"{', '.join(METRICS[protocol])})")


def validation_records(cfg) -> list[FaceRecord]:
    """The records of FACE.SRC_VAL_FILE in FACE.VAL_FORMAT, the first RUN.EVAL_IMAGES of them
    (0 = all); images without faces are kept (they count in the score normalisation)."""
    path = resolve_path(cfg.FACE.SRC_VAL_FILE)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (set by config key FACE.SRC_VAL_FILE)")
    fmt = cfg.FACE.VAL_FORMAT if cfg.FACE.VAL_FORMAT != "auto" else detect_format(path)
    if (fmt == "laboro") != path.is_dir():
        want = "a Laboro TV Face root folder" if fmt == "laboro" else "an annotation file"
        raise ValueError(f"config key FACE.SRC_VAL_FILE={str(path)!r}: FACE.VAL_FORMAT={fmt} "
                         f"needs {want}")
    root = resolve_path(cfg.FACE.DATA_ROOT) if fmt == "wider" else None
    records = read_annotations(path, fmt, root=root, split="val")
    records = records[:cfg.RUN.EVAL_IMAGES or None]
    if not any(len(r.boxes) for r in records):
        hint = (" (the Laboro val list tvval_list.txt has no boxes: put the dev ground truth "
                "beside it as val/label.txt, in the retinaface format)" if fmt == "laboro" else "")
        raise ValueError(f"config key FACE.SRC_VAL_FILE={str(path)!r}: no face box in the "
                         f"{len(records)} validation images to evaluate against{hint}")
    return records


def wider_ground_truth(records: Sequence[FaceRecord]) -> WiderGT:
    """The records as WIDER FACE GT with every face kept in every setting: int32 ``x y w h``
    (MATLAB's rounding for non-integer boxes), one image per record, annotation order."""
    boxes = []
    for r in records:
        b = np.asarray(r.boxes, dtype=np.float64).reshape(-1, 4)
        xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)
        boxes.append(to_int32(xywh).astype(np.int32))
    keep = [np.arange(len(b), dtype=np.int64) for b in boxes]
    names = [str(i) for i in range(len(records))]
    return WiderGT(["all"] * len(records), names, boxes, {s: keep for s in SETTINGS})


def score_detections(records: Sequence[FaceRecord], detections: Sequence[np.ndarray],
                     protocol: str = "darkface", metric: str = "val_ap") -> dict:
    """Score ``detections`` (per record, ``[k, >=5]`` pixel ``x1 y1 x2 y2 score``) against the
    records' boxes; ``{metric: AP, other metrics...}`` with RUN.EVAL_METRIC first."""
    check_metric(protocol, metric)
    if len(detections) != len(records):
        raise ValueError(f"{len(detections)} detection arrays for {len(records)} images")
    dets = [np.asarray(d, dtype=np.float64).reshape(len(d), -1)[:, :5] for d in detections]
    metrics = {}
    if protocol in ("darkface", "both"):
        gt = {str(i): r.boxes for i, r in enumerate(records)}
        metrics["val_ap"] = evaluate_darkface_boxes(
            gt, {str(i): d for i, d in enumerate(dets)})["ap"]
    if protocol in ("wider", "both"):
        xywh = [np.concatenate([d[:, :2], d[:, 2:4] - d[:, :2], d[:, 4:5]], axis=1)
                for d in dets]
        metrics["val_ap_wider"] = evaluate_widerface_boxes(wider_ground_truth(records),
                                                           xywh)["hard"]   # all settings equal
    return {metric: metrics[metric], **{k: v for k, v in metrics.items() if k != metric}}


def detect_records(detector: Callable, records: Sequence[FaceRecord],
                   progress: bool | None = None) -> list[np.ndarray]:
    """Run ``detector`` (a :class:`FaceDetector`) on each record's image at its own size;
    ``[k, 5]`` pixel ``x1 y1 x2 y2 score`` per image. ``progress``: a tqdm bar (None: only on
    a terminal)."""
    out = []
    disable = None if progress is None else not progress
    for record in tqdm(records, desc="validation", leave=False, disable=disable):
        rgb = read_rgb(record.path)
        h, w = rgb.shape[:2]
        dets = detector(rgb[None])[0][:, :5].double().numpy()
        out.append(dets * np.array([w, h, w, h, 1.0]))            # pixels, score
    return out


def build_validation(cfg, trainer, device) -> Callable[[], dict] | None:
    """RUN.EVAL_EVERY's evaluation (None when it is off): ``evaluate() -> {metric: AP}`` on
    ``trainer.net``, RUN.EVAL_METRIC first (see the module doc). The records are read once,
    here, so a bad file fails before the first step."""
    if cfg.RUN.EVAL_EVERY <= 0:
        return None
    protocol, metric = cfg.RUN.EVAL_PROTOCOL, cfg.RUN.EVAL_METRIC
    check_metric(protocol, metric)
    records = validation_records(cfg)
    log.info("validation: %d images of %s, %s protocol, best checkpoint on %s", len(records),
             cfg.FACE.SRC_VAL_FILE, protocol, metric)

    def evaluate() -> dict:
        detector = FaceDetector.from_config(trainer.net, cfg, device)
        try:
            return score_detections(records, detect_records(detector, records), protocol,
                                    metric)
        finally:
            trainer.train()                            # FaceDetector switched it to eval
    return evaluate
