"""The self-supervised tasks of joint high-low adaptation: one task table, one object per task.

:data:`SSL_TASKS` maps each config toggle ``TRAIN.<TOGGLE>`` (weight ``TRAIN_WEIGHT.<TOGGLE>``)
to the trainer attribute that holds its head (the HLA checkpoint prefix), the task class (head
and loss), the pre-trained head file in ``SSL.HEADS_DIR``, the run-folder tag and the dataset
factory of its streams (``adapt/hla/sources.py``). Adding a task is a class here (or a reused
one), its dataset, one row of the table and its two config keys (the toggle and the weight).

A task object knows its streams (one endless loader each), builds its head module on the
detector's feature maps (``net.feature_channels``: any detector of ``models/interface.py``),
names the images that go through the detector's feature mode, and turns features into a loss
dict whose keys are the stream names:

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
from typing import Callable, Mapping

from torch import Tensor, nn

from adapt.hla.heads import ClassificationHead
from adapt.hla.moco import MoCo
from adapt.hla.sources import contrastive_data, jigsaw_data, rotation_data, transfer_data

log = logging.getLogger(__name__)
NUM_ROTATIONS = 4
# classes of each jigsaw: the size of its permutation table (data/permutations.py; a test checks)
JIGSAW_CLASSES = {"33": 30, "22": 24, "41": 24, "14": 24}


class SSLTask:
    """One enabled task. ``streams`` are its loss names, one data loader each."""

    streams: tuple[str, ...] = ()

    def __init__(self, toggle: str, spec: "TaskSpec", cfg, weight: float):
        self.toggle, self.attr, self.head_file = toggle, spec.attr, spec.head_file
        self.data = spec.data
        self.weight = float(weight)
        self.cfg = cfg

    def build_module(self, net: nn.Module) -> nn.Module:
        raise NotImplementedError

    def query_images(self, batches: Mapping[str, list]) -> list[Tensor]:
        """The images this task feeds through ``net.features`` (one per stream)."""
        return [batches[s][0] for s in self.streams]

    def losses(self, module: nn.Module, feats: list[list[Tensor]],
               batches: Mapping[str, list]) -> dict[str, Tensor]:
        raise NotImplementedError


class JigsawTask(SSLTask):
    """Jigsaw on H and E(L) with one shared classifier (the reference's tasks)."""

    def __init__(self, toggle, spec, cfg, weight):
        super().__init__(toggle, spec, cfg, weight)
        self.kind = toggle.split("_")[1]                     # JIGSAW_33 -> "33"
        self.streams = (f"jig_{self.kind}_src", f"jig_{self.kind}_trg")
        self.num_classes = JIGSAW_CLASSES[self.kind]

    def build_module(self, net):
        return ClassificationHead(net.feature_channels, self.num_classes)

    def losses(self, module, feats, batches):
        return {s: module(f, batches[s][1]) for s, f in zip(self.streams, feats)}


class RotationTask(JigsawTask):
    """4-way rotation on H and E(L) (not used by the paper)."""

    def __init__(self, toggle, spec, cfg, weight):
        SSLTask.__init__(self, toggle, spec, cfg, weight)
        self.streams = ("rot_src", "rot_trg")
        self.num_classes = NUM_ROTATIONS


class ContrastiveTask(SSLTask):
    """MoCo on one domain: CONTRASTIVE_TARGET on E(L) (``contrg``),
    CONTRASTIVE_SOURCE on H (``consrc``)."""

    def __init__(self, toggle, spec, cfg, weight):
        super().__init__(toggle, spec, cfg, weight)
        self.streams = (spec.attr.removesuffix("_trainer"),)

    def build_module(self, net):
        s = self.cfg.SSL
        return MoCo(net, net.feature_channels, dim=s.MOCO_DIM, K=s.MOCO_K, m=s.MOCO_M, T=s.MOCO_T)

    def losses(self, module, feats, batches):
        return {s: module.contrastive_loss(f, batches[s][1]) for s, f in zip(self.streams, feats)}


class SharedContrastiveTask(ContrastiveTask):
    """CONTRASTIVE: one MoCo module (one queue) applied to a source batch, then to a target
    batch, every step (not used by the paper)."""

    def __init__(self, toggle, spec, cfg, weight):
        super().__init__(toggle, spec, cfg, weight)
        self.streams = ("con_src", "con_trg")


class TransferTask(ContrastiveTask):
    """MoCo across H and D(H): ``tsf`` (the data side pairs a WIDER image with its D(H)
    copy)."""


@dataclass(frozen=True)
class TaskSpec:
    attr: str          # attribute of the trainer (the HLA checkpoint prefix)
    task: type         # the SSLTask subclass
    head_file: str     # pre-trained head in SSL.HEADS_DIR
    tag: str           # the reference-style run-folder tag
    data: Callable     # (task, cfg, sources) -> {stream: Dataset} (adapt/hla/sources.py)


# config toggle -> task; the order is the state_dict order (the reference's for the defaults)
SSL_TASKS: dict[str, TaskSpec] = {
    "ROTATION": TaskSpec("rot_trainer", RotationTask, "rot_head.pth", "rot", rotation_data),
    "JIGSAW_33": TaskSpec("jig_33_trainer", JigsawTask, "jig_33_head.pth", "jig33", jigsaw_data),
    "JIGSAW_22": TaskSpec("jig_22_trainer", JigsawTask, "jig_22_head.pth", "jig22", jigsaw_data),
    "JIGSAW_41": TaskSpec("jig_41_trainer", JigsawTask, "jig_41_head.pth", "jig41", jigsaw_data),
    "JIGSAW_14": TaskSpec("jig_14_trainer", JigsawTask, "jig_14_head.pth", "jig14", jigsaw_data),
    "CONTRASTIVE": TaskSpec("con_trainer", SharedContrastiveTask, "con_head.pth", "con",
                         contrastive_data),
    "CONTRASTIVE_SOURCE": TaskSpec("consrc_trainer", ContrastiveTask, "consrc_head.pth", "con-src",
                         contrastive_data),
    "CONTRASTIVE_TARGET": TaskSpec("contrg_trainer", ContrastiveTask, "contrg_head.pth", "con-trg",
                         contrastive_data),
    "TRANSFER_CONTRASTIVE": TaskSpec("tsf_trainer", TransferTask, "tsf_head.pth", "tsf",
                         transfer_data),
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


def tagged_run_name(cfg, base: str, weights: Mapping[str, float]) -> str:
    """``RUN.NAME``, or ``base`` followed by ``<tag>(<weight>)`` for every enabled task, as the
    reference names its run folders (``vgg_det_jig33(0.075000)_con-trg(0.050000)_tsf(...)``,
    ``weights_fast_det_jig33(1.000000)_...``)."""
    if cfg.RUN.NAME:
        return cfg.RUN.NAME
    tags = [f"{spec.tag}({weights[k]:f})" for k, spec in SSL_TASKS.items() if cfg.TRAIN[k]]
    return "_".join([base, *tags])
