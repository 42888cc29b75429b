"""The pseudo-label student of train.py (docs/DUAL_TEACHER.md; PSEUDO.*, EMA.*): the
pseudo-labelled target batches, their weak and strong views, the mean teacher.

:func:`build_student` gives the :class:`Student` of a run; each step takes its
:class:`PseudoBatch` (``Student.batch``), adds :func:`pseudo_losses` (terms ``pl_*``, weighted
PSEUDO.WEIGHT) to the loss dict and :func:`pseudo_counts` to the log, and calls
``Student.update`` after the optimizer step. The night adaptation (adapt/pseudo/night_student.py)
builds its batches from the same pieces: :func:`face_records`, :func:`weak_config`,
:func:`label_counts`.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import torch

from adapt.pseudo.ema import ModelEMA
from adapt.pseudo.labels import (PseudoRecord, detections_to_targets, pseudo_label_loader,
                                 read_pseudo_labels, to_face_record)
from adapt.pseudo.strong_view import StrongAugParams, sample_generators, strong_augment
from data.annotations import FaceRecord
from data.darkface import filter_held_out
from data.loaders import require_file
from data.ssl_datasets import stream_seed
from models.inference import autocast
from models.registry import build_train_dataset, entry_of

log = logging.getLogger("train")         # the lines of train.py's log keep their name

PL_PREFIX = "pl_"                        # the loss terms of the target batch: pl_loc_pal2, ...
# Every registry detector's loss takes ignore rows (label -1): models/dsfd/loss.py,
# models/retinaface/loss.py, models/yunet/loss.py.


def face_records(records: list[PseudoRecord], high: float, low: float) -> list[FaceRecord]:
    """Pseudo labels as training records: faces (score >= ``high``) and ignore regions
    (``[low, high)``); images without any box at or above ``low`` dropped (the detection losses
    mine negatives per positive, so an image without boxes would add nothing)."""
    faces = [to_face_record(r, high, low) for r in records]
    return [f for f in faces if len(f.boxes)]


def weak_config(cfg):
    """``cfg`` for the weak view of dark target images: the detector's training augmentation
    without AUG.lowlight_prob (they are dark already)."""
    weak = copy.deepcopy(cfg)
    weak.AUG.lowlight_prob = 0.0
    return weak


def label_counts(targets: list, prefix: str) -> dict:
    """Faces (label 1) and ignore regions (label -1) per image of ``targets``, for the log:
    ``{prefix}_faces``, ``{prefix}_ignored``."""
    labels = torch.cat([t[:, 4] for t in targets]) if targets else torch.zeros(0)
    n = max(len(targets), 1)
    return {f"{prefix}_faces": float((labels == 1).sum()) / n,
            f"{prefix}_ignored": float((labels == -1).sum()) / n}


def build_pseudo_loader(cfg, rank: int, world: int, pin: bool):
    """The images of PSEUDO.LIST (held-out DARK FACE ids dropped) with their boxes split by
    PSEUDO.HIGH / LOW into faces and ignore regions (:func:`face_records`), in MODEL.NAME's
    training augmentation (the weak view, :func:`weak_config`); endless and resumable."""
    p = cfg.PSEUDO
    path = require_file(p.LIST, "PSEUDO.LIST")
    records = filter_held_out(cfg, read_pseudo_labels(path, root=cfg.FACE.DATA_ROOT),
                              "PSEUDO.LIST", log)
    faces = face_records(records, p.HIGH, p.LOW)
    if not faces:
        raise ValueError(f"{path} (config key PSEUDO.LIST): no image has a box scoring at least "
                         f"PSEUDO.LOW={p.LOW}")
    positives = sum(int((f.labels == 1).sum()) for f in faces)
    log.info("PSEUDO.LIST: %d of %d images with boxes, %d faces (score >= %g), %d ignore "
             "regions", len(faces), len(records), positives, p.HIGH,
             sum(len(f.labels) for f in faces) - positives)
    seed = stream_seed(cfg.RUN.SEED, "pseudo")
    dataset = build_train_dataset(weak_config(cfg), path, cfg.FACE.DATA_ROOT, seed, records=faces)
    return pseudo_label_loader(dataset, p.BATCH_SIZE, rank, world, seed, cfg.RUN.NUM_WORKERS,
                               pin)


class PseudoBatch(NamedTuple):
    images: torch.Tensor      # the student's view [B, 3, S, S]
    targets: list             # per image [n, 5 + 2L]: label 1 (face) or -1 (ignore)
    skipped: int              # unreadable images met


@dataclass
class Student:
    """What a pseudo-label run adds to the detection run: the target loader (PSEUDO.ENABLE)
    and the mean teacher (EMA.ENABLE, refreshing the labels with EMA.REFRESH)."""
    cfg: Any
    loader: Any = None                   # data.ssl_datasets.CyclingLoader
    ema: ModelEMA | None = None
    postprocess: Callable | None = None  # the registry's: (out, size) -> [k, 5 + 2L] rows
    spec: Any = None                     # models.interface.InputSpec

    def batch(self, step: int, rank: int, device, memory_format) -> PseudoBatch | None:
        """The target batch of optimizer step ``step + 1``: the weak view's labels (the fixed
        pseudo labels, or the EMA teacher's detections on it), the strong view's images."""
        if self.loader is None:
            return None
        weak, targets, skipped = next(self.loader)
        weak = weak.to(device, non_blocking=True, memory_format=memory_format)
        targets = [t.to(device, non_blocking=True) for t in targets]
        if self.cfg.EMA.REFRESH and step >= self.cfg.EMA.REFRESH_AFTER:
            targets = self.teacher_targets(weak)
        images = self.strong_view(weak, step, rank) if self.cfg.PSEUDO.STRONG_AUG else weak
        return PseudoBatch(images.contiguous(memory_format=memory_format), targets, skipped)

    @torch.no_grad()
    def teacher_targets(self, weak: torch.Tensor) -> list:
        """The EMA teacher's detections on the weak view, split by PSEUDO.HIGH / LOW (with
        the teacher's landmarks when the detector has them)."""
        with autocast(weak.device, self.cfg.RUN.AMP):
            out = self.ema.module(weak)
        dets = self.postprocess(out, tuple(weak.shape[-2:]))
        return [detections_to_targets(d, self.cfg.PSEUDO.HIGH, self.cfg.PSEUDO.LOW)
                for d in dets]

    def strong_view(self, weak: torch.Tensor, step: int, rank: int) -> torch.Tensor:
        """Photometric only (adapt/pseudo/strong_view.py), so the weak view's boxes stay valid. Each
        image draws from (RUN.SEED, step, its position in the global batch) alone: a resumed
        run is exact and N processes draw what one process draws."""
        n = len(weak)
        gens = sample_generators(self.cfg.RUN.SEED, step, rank * n, n, weak.device)
        params = StrongAugParams(lowlight_prob=self.cfg.PSEUDO.STRONG_LOWLIGHT_PROB)
        return strong_augment(weak, self.spec.channel_order, self.spec.mean, self.spec.std,
                              gens, params)

    def update(self, net) -> None:
        """After each optimizer step: the mean teacher follows the student."""
        if self.ema is not None:
            self.ema.update(net)

    def state_dict(self) -> dict:
        state = {}
        if self.loader is not None:
            state["pseudo_loader"] = self.loader.state_dict()
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load_state_dict(self, ckpt) -> None:
        for key, part in (("pseudo_loader", self.loader), ("ema", self.ema)):
            if part is None:
                continue
            if key in ckpt:
                part.load_state_dict(ckpt[key])
            else:
                log.warning("the checkpoint has no %s state: starting it anew", key)


def build_student(cfg, net, resume, rank: int, world: int, pin: bool) -> Student:
    """The :class:`Student` of ``cfg``; the EMA teacher copies ``net`` (the detector, weights
    loaded or restored), then takes the checkpoint's state when resuming."""
    entry = entry_of(cfg)
    student = Student(cfg, postprocess=entry.postprocess(cfg), spec=entry.input_spec(cfg))
    if cfg.PSEUDO.ENABLE:
        student.loader = build_pseudo_loader(cfg, rank, world, pin)
    if cfg.EMA.ENABLE:
        student.ema = ModelEMA(net, cfg.EMA.DECAY, cfg.EMA.TAU)
    if resume is not None:
        student.load_state_dict(resume.checkpoint)
    return student


def pseudo_losses(criterion, out, batch: PseudoBatch | None) -> dict:
    """The detection loss of the target batch, terms prefixed ``pl_`` (weighted PSEUDO.WEIGHT
    in the sum)."""
    if batch is None:
        return {}
    losses = criterion(out, batch.targets, tuple(batch.images.shape[-2:]))
    return {PL_PREFIX + k: v for k, v in losses.items()}


def pseudo_counts(batch: PseudoBatch | None) -> dict:
    """Faces and ignore regions per target image, for the log."""
    return {} if batch is None else label_counts(batch.targets, "pl")
