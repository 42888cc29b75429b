"""A resumable, rank-aware sampler that yields ``(epoch, index)`` keys.

The permutation of an epoch depends only on (seed, epoch). It is cut into global batches of
``batch_size``, and rank r takes the r-th of ``world`` equal slices of every global batch, so
the images of one optimizer step are the same whatever the number of processes (the order is
padded by repetition to a multiple of ``world``, as DistributedSampler does). With the loss
normalised over the global batch, a DDP step equals the single-process step.

``set_epoch(epoch, skip)`` starts an epoch after ``skip`` of this rank's samples, which is how a
resumed run continues mid-epoch. Datasets seed each sample's augmentation from the key, so the
stream of batches is identical whether or not the run was interrupted.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler):
    def __init__(self, size: int, batch_size: int, shuffle: bool = True, seed: int = 0,
                 rank: int = 0, world: int = 1):
        if size <= 0:
            raise ValueError("the dataset is empty")
        if batch_size % world:
            raise ValueError(f"global batch {batch_size} is not divisible by {world} processes")
        self.size, self.batch_size, self.shuffle, self.seed = size, batch_size, shuffle, seed
        self.rank, self.world = rank, world
        self.per_rank = math.ceil(size / world)
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def indices(self) -> list[int]:
        """This rank's indices for the current epoch, in order."""
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=gen).tolist()
        else:
            order = list(range(self.size))
        total = self.per_rank * self.world
        order += (order * self.world)[: total - len(order)]
        mine = []
        for start in range(0, total, self.batch_size):
            chunk = order[start:start + self.batch_size]
            share = len(chunk) // self.world
            mine += chunk[self.rank * share:(self.rank + 1) * share]
        return mine

    def __iter__(self):
        for index in self.indices()[self.skip:]:
            yield (self.epoch, index)

    def __len__(self) -> int:
        return self.per_rank - self.skip


# consecutive redraws (unreadable images, no face left after augmentation) before a sample gives up
MAX_DRAWS = 1000


class KeyedDataset(torch.utils.data.Dataset):
    """Base of the detection training datasets: ``self.records`` indexed by the sampler's
    ``(epoch, index)`` keys, or by a plain index at :attr:`epoch` (:meth:`set_epoch`); every
    sample draws its randomness from :meth:`sample_rng`, so it is a pure function of
    (seed, epoch, index) whatever the worker, process or resume."""

    records: list
    seed: int = 0
    epoch: int = 0

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for integer keys."""
        self.epoch = int(epoch)

    def _key(self, key) -> tuple[int, int]:
        epoch, index = key if isinstance(key, (tuple, list)) else (self.epoch, key)
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} records")
        return int(epoch), index

    def sample_rng(self, epoch: int, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, index])

    def __getitem__(self, key):
        """``(image, target, skipped)`` tensors of the sample at ``key``: :meth:`read` the
        record's image, :meth:`transform` it; an unreadable image (None) or a sample with no face
        left (None) draws another record from the sample's own generator, at most MAX_DRAWS
        times. ``skipped`` counts the unreadable images met."""
        epoch, index = self._key(key)
        rng = self.sample_rng(epoch, index)
        skipped = 0
        for _ in range(MAX_DRAWS):
            record = self.records[index]
            image = self.read(record)
            if image is None:
                skipped += 1
            else:
                sample = self.transform(image, record, rng)
                if sample is not None:
                    return torch.from_numpy(sample[0]), torch.from_numpy(sample[1]), skipped
            index = int(rng.integers(len(self)))
        raise RuntimeError(self.no_sample_message(skipped))

    def read(self, record):
        """The record's image, or None (logged) when it cannot be read."""
        raise NotImplementedError

    def transform(self, image, record, rng: np.random.Generator):
        """``(image, target)`` arrays of one augmented sample, or None to draw again."""
        raise NotImplementedError

    def no_sample_message(self, skipped: int) -> str:
        return (f"no usable sample after {MAX_DRAWS} draws ({skipped} unreadable images); "
                "check the image paths")
