"""The data of the self-supervised tasks: the images each task's streams read and the endless,
rank-sharded loaders train.py and pretrain_fast_headers.py draw from.

Each task's dataset factory (``factory(task, cfg, sources) -> {stream: Dataset}``, defined
here) is its ``data`` column in the one task table, :data:`adapt.hla.tasks.SSL_TASKS`:

| toggle | streams | data |
|---|---|---|
| JIGSAW_33 / _22 / _41 / _14 | ``jig_<k>_src``, ``jig_<k>_trg`` | puzzles of H and of E(L) |
| ROTATION | ``rot_src``, ``rot_trg`` | rotated crops of H and of E(L) |
| CONTRASTIVE | ``con_src``, ``con_trg`` | MoCo pairs of H and of E(L) |
| CONTRASTIVE_SOURCE / _TARGET | ``consrc`` / ``contrg`` | MoCo pairs of H / of E(L) |
| TRANSFER_CONTRASTIVE | ``tsf`` | pairs across H and D(H) |
"""
from __future__ import annotations

import logging
from typing import Mapping

import torch

from data.darkface import filter_held_out
from data.ssl_datasets import (ContrastiveDataset, CyclingLoader, JigsawDataset,
                               RotationDataset, TransferDataset, load_records, require_dir,
                               stream_seed)

log = logging.getLogger(__name__)


class DataSources:
    """The list files and folders of the tasks, parsed once and shared."""

    def __init__(self, cfg):
        self.cfg = cfg
        self._records = {}

    def _load(self, key: str):
        if key not in self._records:
            section, name = key.split(".")
            self._records[key] = load_records(self.cfg[section][name], self.cfg.FACE.DATA_ROOT,
                                              key)
        return self._records[key]

    def source(self):
        """WIDER (H): FACE.SRC_TRAIN_FILE."""
        return self._load("FACE.SRC_TRAIN_FILE")

    def target(self):
        """Enhanced DARK FACE (E(L)) with pseudo boxes: FACE.TAR_TRAIN_FILE, without the
        held-out evaluation images (DARKFACE.FILTER_TRAIN; data/darkface.py)."""
        key = "FACE.TAR_TRAIN_FILE"
        if key not in self._records:
            kept = filter_held_out(self.cfg, self._load(key), key, log)
            if not kept:
                raise ValueError(f"every image of {self.cfg.FACE.TAR_TRAIN_FILE} (config "
                                 f"key {key}) is in the held-out split")
            self._records[key] = kept
        return self._records[key]

    def noise_dir(self):
        """D(H): SSL.NOISE_DIR, a flat folder of degraded WIDER images."""
        return require_dir(self.cfg.SSL.NOISE_DIR, "SSL.NOISE_DIR")


def _domains(task, sources):
    """Source records for ``*_src`` streams, target records for the others."""
    return [sources.source() if s.endswith("src") else sources.target() for s in task.streams]


def _seed(cfg, stream: str) -> int:
    return stream_seed(cfg.RUN.SEED, stream)


def jigsaw_data(task, cfg, sources):
    kind = task.toggle.split("_")[1]                       # JIGSAW_33 -> "33"
    return {s: JigsawDataset(r, cfg.AUG, kind, cfg.SSL.JIGSAW_KEEP_FACE, seed=_seed(cfg, s),
                             name=s)
            for s, r in zip(task.streams, _domains(task, sources))}


def rotation_data(task, cfg, sources):
    return {s: RotationDataset(r, cfg.AUG, cfg.SSL.JIGSAW_KEEP_FACE, seed=_seed(cfg, s), name=s)
            for s, r in zip(task.streams, _domains(task, sources))}


def contrastive_data(task, cfg, sources):
    return {s: ContrastiveDataset(r, cfg.AUG, seed=_seed(cfg, s), name=s)
            for s, r in zip(task.streams, _domains(task, sources))}


def transfer_data(task, cfg, sources):
    noise_dir = sources.noise_dir()
    return {s: TransferDataset(sources.source(), cfg.AUG, noise_dir, seed=_seed(cfg, s), name=s)
            for s in task.streams}


def build_task_datasets(task, cfg, sources: DataSources) -> dict:
    """``{stream: Dataset}`` of one task object (its table row's ``data`` factory)."""
    return task.data(task, cfg, sources)


def build_ssl_loaders(tasks, cfg, global_batch: int, rank: int, world: int,
                      pin_memory: bool = False) -> dict[str, CyclingLoader]:
    """One endless, rank-sharded loader per stream of every task."""
    sources = DataSources(cfg)
    loaders = {}
    for task in tasks:
        for name, dataset in build_task_datasets(task, cfg, sources).items():
            loaders[name] = CyclingLoader(dataset, global_batch, rank, world,
                                          seed=stream_seed(cfg.RUN.SEED, name),
                                          num_workers=cfg.SSL.NUM_WORKERS,
                                          pin_memory=pin_memory, name=name)
    return loaders


def next_ssl_batches(loaders: Mapping[str, CyclingLoader], device: torch.device,
                     memory_format=torch.contiguous_format) -> tuple[dict, int]:
    """One batch from every loader, on ``device``; and the unreadable images met."""
    batches, skipped = {}, 0
    for name, loader in loaders.items():
        *tensors, n_skipped = next(loader)
        skipped += n_skipped
        batches[name] = [t.to(device, non_blocking=True, memory_format=memory_format)
                         if t.dim() == 4 else t.to(device, non_blocking=True) for t in tensors]
    return batches, skipped
