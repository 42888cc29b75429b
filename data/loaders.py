"""DataLoaders for training, built from the config."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from data.samplers import ResumableSampler
from data.widerface import WIDERDetection, detection_collate
from utils.runs import resolve_path  # noqa: F401  (re-exported for the tools)


def require_file(path: str, key: str) -> Path:
    p = resolve_path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist (set by config key {key})")
    return p


def build_detection_loader(cfg, local_batch: int, rank: int, world: int,
                           pin_memory: bool) -> tuple[DataLoader, ResumableSampler]:
    """The WIDER detection loader (REFERENCE 6.1): shuffled, no drop_last, one shard per rank."""
    list_file = require_file(cfg.FACE.SRC_TRAIN_FILE, "FACE.SRC_TRAIN_FILE")
    dataset = WIDERDetection(str(list_file), cfg.AUG, root=cfg.FACE.DATA_ROOT, train=True,
                             seed=cfg.RUN.SEED)
    sampler = ResumableSampler(len(dataset), cfg.SOLVER.BATCH_SIZE, shuffle=True,
                               seed=cfg.RUN.SEED, rank=rank, world=world)
    loader = DataLoader(dataset, batch_size=local_batch, sampler=sampler,
                        num_workers=cfg.RUN.NUM_WORKERS, collate_fn=detection_collate,
                        pin_memory=pin_memory, drop_last=False,
                        persistent_workers=False, generator=torch.Generator())
    # its own generator: creating an iterator draws a worker seed from it, and drawing from the
    # global RNG would shift a resumed run's random stream (samples are seeded by their keys)
    return loader, sampler
