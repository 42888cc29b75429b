"""DataLoaders built from the config, and the DataLoader helpers every tool shares."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from utils.files import resolve_path
from data.samplers import ResumableSampler
from data.widerface import detection_collate


def identity_collate(sample):
    """Collate for ``DataLoader(batch_size=None)`` over datasets that already return what the
    consumer wants (one decoded image and its index, say): pass it through unchanged."""
    return sample


def require_file(path: str, key: str) -> Path:
    p = resolve_path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist (set by config key {key})")
    return p


def build_detection_loader(cfg, dataset, local_batch: int, rank: int, world: int,
                           pin_memory: bool) -> tuple[DataLoader, ResumableSampler]:
    """The labelled detection loader over ``dataset`` (MODEL.NAME's training dataset,
    ``models.registry.build_train_dataset``): shuffled, no drop_last, one shard per rank."""
    sampler = ResumableSampler(len(dataset), cfg.SOLVER.BATCH_SIZE, shuffle=True,
                               seed=cfg.RUN.SEED, rank=rank, world=world)
    loader = DataLoader(dataset, batch_size=local_batch, sampler=sampler,
                        num_workers=cfg.RUN.NUM_WORKERS, collate_fn=detection_collate,
                        pin_memory=pin_memory, drop_last=False,
                        persistent_workers=False, generator=torch.Generator())
    # its own generator: creating an iterator draws a worker seed from it, and drawing from the
    # global RNG would shift a resumed run's random stream (samples are seeded by their keys)
    return loader, sampler
