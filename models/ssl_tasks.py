"""The self-supervised tasks of joint high-low adaptation: one registry, one object per task.

:data:`SSL_TASKS` maps each config toggle ``TRAIN.<TOGGLE>`` (weight ``TRAIN_WEIGHT.<TOGGLE>``,
REFERENCE 2.5) to the trainer attribute that holds its head (the HLA checkpoint prefix), the
task class and the pre-trained head file in ``SSL.HEADS_DIR``. Adding a task is a class here
(or a new kind of an existing one), one entry in the dict and the config default.

A task object knows its data streams (one endless loader each), builds its head module, names
the images that go through the detector's feature mode, and turns features into a loss dict
whose keys are the stream names:

| toggle | attribute | losses (streams) | data |
|---|---|---|---|
| JIGSAW_33 / _22 / _41 / _14 | ``jig_33_trainer`` ... | ``jig_33_src``, ``jig_33_trg`` | puzzles, H, E(L) |
| ROTATION | ``rot_trainer`` | ``rot_src``, ``rot_trg`` | rotated crops, H and E(L) |
| CONTRASTIVE | ``con_trainer`` | ``con_src``, ``con_trg`` | MoCo pairs, H and E(L), one queue |
| CONTRASTIVE_SOURCE | ``consrc_trainer`` | ``consrc`` | MoCo pairs from H |
| CONTRASTIVE_TARGET | ``contrg_trainer`` | ``contrg`` | MoCo pairs from E(L) |
| TRANSFER_CONTRASTIVE | ``tsf_trainer`` | ``tsf`` | pairs from H / D(H) |
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from data.permutations import PERMUTATIONS
from data.ssl_datasets import (ContrastiveDataset, CyclingLoader, JigsawDataset,
                               RotationDataset, TransferDataset, load_records, require_dir,
                               stream_seed)
from data.darkface import drop_held_out, held_out_ids
from models.heads import ClassificationHead
from models.moco import MoCo

log = logging.getLogger(__name__)
NUM_ROTATIONS = 4


def held_out_split(cfg) -> list[str] | None:
    """The held-out DARK FACE ids, or None (with a warning) when they cannot be determined."""
    if not cfg.DARKFACE.VAL_IDS and not Path(cfg.DARKFACE.IMAGE_DIR).is_dir():
        log.warning("DARKFACE.VAL_IDS is empty and DARKFACE.IMAGE_DIR=%s does not exist: the "
                    "target list is NOT filtered against a held-out split, so do not evaluate "
                    "on images of FACE.TAR_TRAIN_FILE (or set DARKFACE.FILTER_TRAIN=False to "
                    "silence this)", cfg.DARKFACE.IMAGE_DIR)
        return None
    return held_out_ids(cfg)


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
        if key not in self._records and self.cfg.DARKFACE.FILTER_TRAIN:
            records = self._load(key)
            held = held_out_split(self.cfg)
            if held is not None:
                kept = drop_held_out(records, held)
                log.info("%s: %d of %d images kept after removing the held-out DARK FACE "
                         "split", key, len(kept), len(records))
                if not kept:
                    raise ValueError(f"every image of {self.cfg.FACE.TAR_TRAIN_FILE} (config "
                                     f"key {key}) is in the held-out split")
                self._records[key] = kept
        return self._load(key)

    def noise_dir(self):
        """D(H): SSL.NOISE_DIR, a flat folder of degraded WIDER images."""
        return require_dir(self.cfg.SSL.NOISE_DIR, "SSL.NOISE_DIR")


class SSLTask:
    """One enabled task. ``streams`` are its loss names, one data loader each."""

    streams: tuple[str, ...] = ()

    def __init__(self, toggle: str, spec: "TaskSpec", cfg, weight: float):
        self.toggle, self.attr, self.head_file = toggle, spec.attr, spec.head_file
        self.weight = float(weight)
        self.cfg = cfg

    def build_module(self, net: nn.Module) -> nn.Module:
        raise NotImplementedError

    def build_datasets(self, sources: DataSources) -> dict:
        """``{stream: Dataset}``."""
        raise NotImplementedError

    def query_images(self, batches: Mapping[str, list]) -> list[Tensor]:
        """The images this task feeds through ``net.features`` (one per stream)."""
        return [batches[s][0] for s in self.streams]

    def losses(self, module: nn.Module, feats: list[list[Tensor]],
               batches: Mapping[str, list]) -> dict[str, Tensor]:
        raise NotImplementedError

    def _seed(self, stream: str) -> int:
        return stream_seed(self.cfg.RUN.SEED, stream)


class JigsawTask(SSLTask):
    """Jigsaw on H and E(L) with one shared classifier (REFERENCE 5.2, 5.3)."""

    def __init__(self, toggle, spec, cfg, weight):
        super().__init__(toggle, spec, cfg, weight)
        self.kind = toggle.split("_")[1]                     # JIGSAW_33 -> "33"
        self.streams = (f"jig_{self.kind}_src", f"jig_{self.kind}_trg")
        self.num_classes = len(PERMUTATIONS[self.kind])

    def build_module(self, net):
        return ClassificationHead(net.feature_channels, self.num_classes)

    def build_datasets(self, sources):
        return {name: JigsawDataset(records, self.cfg.AUG, self.kind, self.cfg.SSL.JIGSAW_KEEP_FACE,
                                    seed=self._seed(name), name=name)
                for name, records in zip(self.streams, (sources.source(), sources.target()))}

    def losses(self, module, feats, batches):
        return {s: module(f, batches[s][1]) for s, f in zip(self.streams, feats)}


class RotationTask(JigsawTask):
    """4-way rotation on H and E(L) (REFERENCE 5.4; not used by the paper)."""

    def __init__(self, toggle, spec, cfg, weight):
        SSLTask.__init__(self, toggle, spec, cfg, weight)
        self.streams = ("rot_src", "rot_trg")
        self.num_classes = NUM_ROTATIONS

    def build_datasets(self, sources):
        return {name: RotationDataset(records, self.cfg.AUG, self.cfg.SSL.JIGSAW_KEEP_FACE,
                                      seed=self._seed(name), name=name)
                for name, records in zip(self.streams, (sources.source(), sources.target()))}


class ContrastiveTask(SSLTask):
    """MoCo on one domain (REFERENCE 5.5, 6.3): CONTRASTIVE_TARGET on E(L) (``contrg``),
    CONTRASTIVE_SOURCE on H (``consrc``)."""

    def __init__(self, toggle, spec, cfg, weight):
        super().__init__(toggle, spec, cfg, weight)
        self.streams = (spec.attr.removesuffix("_trainer"),)

    def build_module(self, net):
        s = self.cfg.SSL
        return MoCo(net, net.feature_channels, dim=s.MOCO_DIM, K=s.MOCO_K, m=s.MOCO_M, T=s.MOCO_T)

    def _records(self, sources, stream):
        return sources.source() if stream.endswith("src") else sources.target()

    def build_datasets(self, sources):
        return {name: ContrastiveDataset(self._records(sources, name), self.cfg.AUG,
                                         seed=self._seed(name), name=name)
                for name in self.streams}

    def losses(self, module, feats, batches):
        return {s: module.contrastive_loss(f, batches[s][1]) for s, f in zip(self.streams, feats)}


class SharedContrastiveTask(ContrastiveTask):
    """CONTRASTIVE: one MoCo module (one queue) applied to a source batch, then to a target
    batch, every step (REFERENCE 5.5; not used by the paper)."""

    def __init__(self, toggle, spec, cfg, weight):
        super().__init__(toggle, spec, cfg, weight)
        self.streams = ("con_src", "con_trg")


class TransferTask(ContrastiveTask):
    """MoCo across H and D(H) (REFERENCE 5.5, 6.4): ``tsf``."""

    def build_datasets(self, sources):
        noise_dir = sources.noise_dir()
        return {name: TransferDataset(sources.source(), self.cfg.AUG, noise_dir,
                                      seed=self._seed(name), name=name)
                for name in self.streams}


@dataclass(frozen=True)
class TaskSpec:
    attr: str          # attribute of the trainer (the HLA checkpoint prefix)
    task: type         # the SSLTask subclass
    head_file: str     # pre-trained head in SSL.HEADS_DIR


# config toggle -> task; the order is the state_dict order (the reference's for the defaults)
SSL_TASKS: dict[str, TaskSpec] = {
    "ROTATION": TaskSpec("rot_trainer", RotationTask, "rot_head.pth"),
    "JIGSAW_33": TaskSpec("jig_33_trainer", JigsawTask, "jig_33_head.pth"),
    "JIGSAW_22": TaskSpec("jig_22_trainer", JigsawTask, "jig_22_head.pth"),
    "JIGSAW_41": TaskSpec("jig_41_trainer", JigsawTask, "jig_41_head.pth"),
    "JIGSAW_14": TaskSpec("jig_14_trainer", JigsawTask, "jig_14_head.pth"),
    "CONTRASTIVE": TaskSpec("con_trainer", SharedContrastiveTask, "con_head.pth"),
    "CONTRASTIVE_SOURCE": TaskSpec("consrc_trainer", ContrastiveTask, "consrc_head.pth"),
    "CONTRASTIVE_TARGET": TaskSpec("contrg_trainer", ContrastiveTask, "contrg_head.pth"),
    "TRANSFER_CONTRASTIVE": TaskSpec("tsf_trainer", TransferTask, "tsf_head.pth"),
}


def build_tasks(cfg, weights: Mapping[str, float] | None = None) -> list[SSLTask]:
    """The enabled tasks (``cfg.TRAIN.<toggle>``), weighted by ``weights`` or
    ``cfg.TRAIN_WEIGHT``."""
    weights = cfg.TRAIN_WEIGHT if weights is None else weights
    return [spec.task(toggle, spec, cfg, weights[toggle])
            for toggle, spec in SSL_TASKS.items() if cfg.TRAIN[toggle]]


def uses_moco(tasks) -> bool:
    return any(isinstance(t, ContrastiveTask) for t in tasks)


def check_moco_batch(cfg, tasks, global_batch: int, batch_key: str) -> None:
    """Every enqueue writes the global batch into the queue: it must divide SSL.MOCO_K."""
    if uses_moco(tasks) and cfg.SSL.MOCO_K % global_batch:
        raise ValueError(f"config key SSL.MOCO_K={cfg.SSL.MOCO_K} must be a multiple of the "
                         f"global batch {batch_key}={global_batch} (each step enqueues the keys "
                         f"of every process)")


def build_ssl_loaders(tasks, cfg, global_batch: int, rank: int, world: int,
                      pin_memory: bool = False) -> dict[str, CyclingLoader]:
    """One endless, rank-sharded loader per stream of every task."""
    sources = DataSources(cfg)
    loaders = {}
    for task in tasks:
        for name, dataset in task.build_datasets(sources).items():
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
