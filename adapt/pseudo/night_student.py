"""The student's batches of the night adaptation (tools/adapt_to_night.py; adapt/pseudo/night.py
has the footage, the teacher and the held-out numbers).

Each step concatenates up to three parts, each through the detector's own training augmentation
(crop, flip, resize: the weak view, ``models/registry.py``, without AUG.lowlight_prob)
and then a photometric strong view, so the weak view's boxes stay the targets:

* **night** (``PSEUDO.BATCH_SIZE`` images): the raw training frames with the round's pseudo
  labels split by ``PSEUDO.HIGH`` / ``PSEUDO.LOW`` into faces (label 1) and ignore regions
  (label -1; the losses count their anchors neither as faces nor as background); frames without
  any box at or above PSEUDO.LOW are left out (the losses mine negatives per positive). Strong
  view: adapt/pseudo/strong_view.py (colour jitter, blur, noise; PSEUDO.STRONG_AUG).
* **synthetic night** (``ADAPT.SYNTH_BATCH_SIZE``): the frames where the teacher is confident
  (at least one face >= PSEUDO.HIGH), taken in their night-mode copy (brightened), with the same
  labels, then darkened by the camera model (data/camera.py, preset ``ADAPT.DARKEN_PRESET``):
  realistic dark images whose faces are known, darker than most of the footage.
* With ``ADAPT.STUDENT_INPUT=enhanced`` the student learns the domain it is deployed in (behind
  ``--enhance``): the night part takes the frames' night-mode copies (:func:`enhanced_records`)
  and the synthetic part runs the camera-darkened copies through the same enhancer again
  (``enhancer`` of :func:`next_batch`, BGR uint8 in and out) before the photometric jitter.
* **labelled daylight** (``ADAPT.LABELLED_BATCH_SIZE``, only with ``ADAPT.LABELLED``): the
  user's labelled images in any format of data/annotations.py, each camera-darkened with
  probability ``ADAPT.LABELLED_DARKEN_PROB``, else the photometric strong view.

Every random draw of a view comes from generators seeded by ``(RUN.SEED, step, position in the
global batch, part)`` (``adapt.pseudo.strong_view.sample_generators``): a resumed run is exact
and N DDP processes draw what one process draws. A part whose image set is smaller than its global batch
repeats its records to fill one.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from data.annotations import FaceRecord, read_annotations
from models.registry import build_train_dataset
from adapt.pseudo.labels import POSITIVE, PseudoRecord, pseudo_label_loader
from adapt.pseudo.student import face_records, label_counts, weak_config
from data.ssl_datasets import stream_seed
from adapt.pseudo.strong_view import (StrongAugParams, from_pixels, sample_generators,
                                      strong_augment, to_pixels)

log = logging.getLogger(__name__)

PARTS = ("night", "synth", "labelled")


def night_records(records: list[PseudoRecord], high: float, low: float) -> list[FaceRecord]:
    """The frames' labels as training records: faces and ignore regions; frames without any
    box at or above ``low`` dropped (:func:`adapt.pseudo.student.face_records`)."""
    return face_records(records, high, low)


def synth_records(records: list[PseudoRecord], night_paths: dict[str, str], high: float,
                  low: float) -> list[FaceRecord]:
    """The confident frames (a face >= ``high``) as records of their night-mode copies
    (``night_paths``: raw path -> night-mode path)."""
    out = []
    for face in night_records(records, high, low):
        if (face.labels == POSITIVE).any():
            out.append(FaceRecord(night_paths[face.path], face.boxes, face.landmarks,
                                  face.labels, face.size))
    return out


def enhanced_records(records: list[FaceRecord], night_paths: dict[str, str]) -> list[FaceRecord]:
    """``records`` of raw frames as records of their night-mode copies (``night_paths``)."""
    return [FaceRecord(night_paths[r.path], r.boxes, r.landmarks, r.labels, r.size)
            for r in records]


def labelled_records(cfg) -> list[FaceRecord]:
    """ADAPT.LABELLED read as ADAPT.LABELLED_FORMAT (images under ADAPT.LABELLED_ROOT)."""
    a = cfg.ADAPT
    path = Path(a.LABELLED)
    if not path.exists():
        raise FileNotFoundError(f"--labelled {path} (config key ADAPT.LABELLED) does not exist")
    records = read_annotations(path, a.LABELLED_FORMAT, root=a.LABELLED_ROOT or None)
    records = [r for r in records if (r.labels == POSITIVE).any()]
    if not records:
        raise ValueError(f"--labelled {path} (ADAPT.LABELLED): no image with a face")
    return records


def _filled(records: list, batch: int) -> list:
    """``records`` repeated up to at least ``batch`` entries."""
    return records * max(1, math.ceil(batch / max(len(records), 1)))


@dataclass
class NightLoaders:
    """The endless, resumable loaders of one round (``None`` for a part that has no images or
    a zero batch) and the global batch of each part."""
    round: int
    loaders: dict = field(default_factory=dict)
    batches: dict = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """No part has images: the round cannot train."""
        return not any(v is not None for v in self.loaders.values())

    def state_dict(self) -> dict:
        return {"round": self.round,
                **{k: v.state_dict() for k, v in self.loaders.items() if v is not None}}

    def load_state_dict(self, state: dict) -> None:
        if int(state.get("round", -1)) != self.round:
            return                             # the checkpoint ended the round before
        for name, loader in self.loaders.items():
            if loader is not None and name in state:
                loader.load_state_dict(state[name])


def build_loaders(cfg, round_: int, parts: dict[str, list[FaceRecord]], rank: int, world: int,
                  pin: bool = False) -> NightLoaders:
    """A :class:`NightLoaders` for ``parts`` (name -> records) with the batches of the config."""
    weak = weak_config(cfg)
    sizes = {"night": cfg.PSEUDO.BATCH_SIZE, "synth": cfg.ADAPT.SYNTH_BATCH_SIZE,
             "labelled": cfg.ADAPT.LABELLED_BATCH_SIZE if cfg.ADAPT.LABELLED else 0}
    out = NightLoaders(round_)
    for name in PARTS:
        records, batch = parts.get(name) or [], sizes[name]
        if not records or batch <= 0:
            out.loaders[name] = None
            continue
        seed = stream_seed(cfg.RUN.SEED, f"adapt_{name}_{round_}")
        dataset = build_train_dataset(weak, f"<{name} frames>", cfg.FACE.DATA_ROOT, seed,
                                      records=_filled(records, batch))
        out.loaders[name] = pseudo_label_loader(dataset, batch, rank, world, seed,
                                                cfg.RUN.NUM_WORKERS, pin)
        out.batches[name] = batch
        log.info("round %d, %s: %d images, %d per step", round_, name, len(records), batch)
    if out.empty:
        log.warning("round %d: nothing to train on: the teacher found no face scoring at least "
                    "PSEUDO.LOW=%g on any training frame (lower PSEUDO.LOW / PSEUDO.HIGH, or "
                    "add --labelled images)", round_, cfg.PSEUDO.LOW)
    return out


def camera_dark(x: Tensor, spec, seeds: list[int], preset: str) -> Tensor:
    """The camera-model copy (data/camera.py ``darken``, on the CPU) of the normalised batch
    ``x`` ``[B, 3, H, W]`` (``spec``: the detector's InputSpec), image ``b`` drawing from
    ``seeds[b]``; normalised the same way, on ``x``'s device."""
    from data.camera import darken
    pixels, _ = to_pixels(x.cpu(), spec.channel_order, spec.mean, spec.std)
    bgr = spec.channel_order == "BGR"
    rgb = (pixels.flip(1) if bgr else pixels).div(255.0).clamp(0.0, 1.0)
    dark = darken(rgb, preset=preset, seeds=seeds).to(rgb.dtype) * 255.0
    return from_pixels(dark.flip(1) if bgr else dark, spec.mean, spec.std).to(x.device)


def enhanced_view(x: Tensor, spec, enhancer) -> Tensor:
    """``enhancer`` (BGR uint8 HxWx3 -> same) applied to each image of the normalised batch
    ``x``; normalised the same way, on ``x``'s device."""
    import numpy as np
    pixels, _ = to_pixels(x.cpu(), spec.channel_order, spec.mean, spec.std)
    bgr = pixels if spec.channel_order == "BGR" else pixels.flip(1)
    u8 = bgr.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = np.stack([np.ascontiguousarray(enhancer(np.ascontiguousarray(im))) for im in u8])
    out = torch.from_numpy(out).permute(0, 3, 1, 2).to(pixels.dtype)
    out = out if spec.channel_order == "BGR" else out.flip(1)
    return from_pixels(out, spec.mean, spec.std).to(x.device)


def _seeds(gens: list[torch.Generator]) -> list[int]:
    return [int(torch.randint(0, 2 ** 62, (1,), generator=g)) for g in gens]


def strong_view(name: str, weak: Tensor, cfg, spec, step: int, first: int,
                enhancer=None) -> Tensor:
    """The strong view of part ``name`` (module doc); ``first``: the position of ``weak``'s
    first image in the part's global batch; ``enhancer``: applied after the camera model
    (``ADAPT.STUDENT_INPUT=enhanced``)."""
    n, device = len(weak), weak.device
    gens = lambda tag: sample_generators(cfg.RUN.SEED, step, first, n, device,  # noqa: E731
                                         name=f"adapt_{name}_{tag}")
    cpu_gens = lambda tag: sample_generators(cfg.RUN.SEED, step, first, n, "cpu",  # noqa: E731
                                             name=f"adapt_{name}_{tag}")
    photometric = StrongAugParams(lowlight_prob=0.0)
    if name == "synth":
        view = strong_augment(weak, spec.channel_order, spec.mean, spec.std, gens("jitter"),
                              StrongAugParams(lowlight_prob=0.0, noise_prob=0.0))
        dark = camera_dark(view, spec, _seeds(cpu_gens("camera")), cfg.ADAPT.DARKEN_PRESET)
        return dark if enhancer is None else enhanced_view(dark, spec, enhancer)
    view = strong_augment(weak, spec.channel_order, spec.mean, spec.std, gens("jitter"),
                          photometric) if cfg.PSEUDO.STRONG_AUG else weak
    if name == "labelled" and cfg.ADAPT.LABELLED_DARKEN_PROB > 0:
        coins = torch.stack([torch.rand(1, generator=g, device=device)[0]
                             for g in gens("coin")])
        on = coins < cfg.ADAPT.LABELLED_DARKEN_PROB
        if bool(on.any()):
            dark = camera_dark(weak, spec, _seeds(cpu_gens("camera")), cfg.ADAPT.DARKEN_PRESET)
            view = torch.where(on.view(-1, 1, 1, 1), dark, view)
    return view


def next_batch(loaders: NightLoaders, cfg, spec, step: int, rank: int, device,
               memory_format=torch.contiguous_format, enhancer=None):
    """``(images, targets, counts, skipped)`` of optimizer step ``step + 1``: every part's
    strong view, concatenated; ``counts``: faces and ignore regions per image, per part;
    ``enhancer``: see :func:`strong_view`."""
    images, targets, counts, skipped = [], [], {}, 0
    for name in PARTS:
        loader = loaders.loaders.get(name)
        if loader is None:
            continue
        weak, part_targets, part_skipped = next(loader)
        weak = weak.to(device, non_blocking=True)
        part_targets = [t.to(device, non_blocking=True) for t in part_targets]
        images.append(strong_view(name, weak, cfg, spec, step, rank * len(weak), enhancer))
        targets += part_targets
        skipped += part_skipped
        counts.update(label_counts(part_targets, name))
    batch = torch.cat(images).contiguous(memory_format=memory_format)
    return batch, targets, counts, skipped
