"""The training container: the detector plus one head per enabled self-supervised task.

Its attributes are named exactly as the reference's ``Trainer`` (``net``, ``jig_33_trainer``,
``contrg_trainer``, ``tsf_trainer``, ...), so its state_dict *is* the HLA trainer layout
(452 keys with the default tasks: the 186 detector keys under ``net.``, 36 for the jigsaw head,
115 for each MoCo task; docs/ADAPTATION.md): HLA ``trainer_<it>.pth`` files load into it
strictly, and ``utils.checkpoint.detector_state_dict`` finds the detector under ``net.``.

``forward(images, ssl_batches)`` runs the detection forward and every task's loss, so that one
DDP wrapper around the container synchronises all gradients. The detector reads the task images
in feature mode (only the maps the heads read). For a detector without BatchNorm (DSFD-VGG)
same-size batches of different tasks are concatenated into one pass, since samples do not
interact; with BatchNorm every task batch gets its own pass, so that one task's statistics never
normalise another's (the batches stay what each task's loader made them).

BatchNorm under DDP: each rank normalises with its own batch (no SyncBN), so each rank's running
statistics would drift apart (DDP runs with ``broadcast_buffers=False`` for the MoCo queues).
Once every pass of a step has run, before MoCo's key encoders copy them, the detector's running
means and variances are averaged over the ranks (one all-reduce), so the ranks hold identical
detectors at every step and a checkpoint written by rank 0 is every rank's state.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from utils import dist
from utils.checkpoint import load_file, strip_prefix

log = logging.getLogger(__name__)


class HLATrainer(nn.Module):
    def __init__(self, net: nn.Module, tasks: Sequence = (), ssl_bgr: bool = False):
        super().__init__()
        self.net = net
        self.tasks = list(tasks)                    # plain objects, not sub-modules
        # the task loaders make RGB tensors; a BGR detector reads them with channels flipped
        self.ssl_bgr = ssl_bgr
        for task in self.tasks:
            setattr(self, task.attr, task.build_module(net))

    @property
    def loss_weights(self) -> dict[str, float]:
        """Weight of every self-supervised loss term (the detection terms weigh 1)."""
        return {s: task.weight for task in self.tasks for s in task.streams}

    def forward(self, images: Tensor | None = None, ssl_batches: Mapping | None = None):
        """``(detector output or None, {stream: loss})``."""
        out = self.net(images) if images is not None else None
        return out, self.ssl_losses(ssl_batches or {})

    def ssl_losses(self, batches: Mapping) -> dict[str, Tensor]:
        if self.ssl_bgr:
            batches = {k: [t.flip(1) if t.dim() == 4 else t for t in v] for k, v in batches.items()}
        queries = [task.query_images(batches) for task in self.tasks]
        feats = self.features([x for q in queries for x in q])
        if self.net.training and getattr(self.net, "has_batchnorm", False):
            average_batchnorm_statistics(self.net)      # the step's last update (module doc)
        losses, i = {}, 0
        for task, q in zip(self.tasks, queries):
            losses.update(task.losses(getattr(self, task.attr), feats[i:i + len(q)], batches))
            i += len(q)
        return losses

    def features(self, images: list[Tensor]) -> list[list[Tensor]]:
        """``net.features`` of each batch; without BatchNorm one forward per input size."""
        if getattr(self.net, "has_batchnorm", False):
            return [list(self.net.features(x)) for x in images]
        groups: dict[tuple, list[int]] = {}
        for i, x in enumerate(images):
            groups.setdefault(tuple(x.shape[1:]), []).append(i)
        out: list = [None] * len(images)
        for members in groups.values():
            batch = torch.cat([images[i] for i in members]) if len(members) > 1 \
                else images[members[0]]
            sizes = [images[i].shape[0] for i in members]
            levels = [f.split(sizes) for f in self.net.features(batch)]   # L x [n_i, C, H, W]
            for j, i in enumerate(members):
                out[i] = [level[j] for level in levels]
        return out


@torch.no_grad()
def average_batchnorm_statistics(module: nn.Module) -> None:
    """Running means and variances of the training-mode BatchNorms of ``module`` averaged over
    the ranks (one all-reduce; a no-op in one process).

    Called between the forward and the backward of a step: the step's graph holds these
    buffers, so they are rewritten through ``.data`` (the version check would refuse an in-place
    write). No gradient changes: a training-mode BatchNorm's backward reads the batch
    statistics, never the running ones (eval-mode BatchNorms, whose backward would, are left
    alone; their statistics do not move anyway)."""
    if not dist.is_distributed():
        return
    buffers = [b.data for m in module.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
               for b in (m.running_mean, m.running_var) if b is not None]
    if not buffers:
        return
    flat = dist.all_reduce_sum(torch.cat([b.reshape(-1) for b in buffers])) / dist.world_size()
    torch._foreach_copy_(buffers, list(flat.split([b.numel() for b in buffers])))


# ---------------------------------------------------------------------------------------------
# loading


def trainer_state_dict(obj: Mapping[str, Any]) -> dict:
    """The HLA-layout state dict inside our checkpoints (``"model"``), a reference
    ``trainer_<it>.pth`` or a DataParallel save of one (``module.``). A plain detector state
    dict (older checkpoints of ours, DSFD files) is put under ``net.``."""
    if "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):
        state = strip_prefix(state, "module.")
    if not any(k.startswith("net.") for k in state):
        state = {f"net.{k}": v for k, v in state.items()}
    return state


def load_head(module: nn.Module, state: Mapping, source: str, attr: str) -> None:
    """Strict load of one head, with an error that says where the weights came from."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise RuntimeError(f"{source} does not fit {attr} (for MoCo heads the queue length is "
                           f"config key SSL.MOCO_K, the width MODEL.WIDTH): {exc}") from None


def init_heads(trainer: HLATrainer, init_state: Mapping | None, heads_dir: str | Path,
               load_files: bool, weights_source: str = "MODEL.WEIGHTS") -> None:
    """Initialise every task head: from ``init_state`` (a trainer checkpoint given as the
    detector weights) when it holds that head, else from ``heads_dir/<head file>`` when
    ``load_files`` (SSL.LOAD_HEADS), else keep the fresh head (MoCo key encoder = the
    detector)."""
    for task in trainer.tasks:
        module = getattr(trainer, task.attr)
        sub = strip_prefix(init_state, task.attr + ".") if init_state else {}
        if sub:
            load_head(module, sub, f"{task.attr}.* of {weights_source}", task.attr)
            log.info("%s: loaded from %s", task.attr, weights_source)
        elif load_files:
            path = Path(heads_dir) / task.head_file
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} does not exist: the pre-trained head of TRAIN.{task.toggle} (config "
                    f"keys SSL.HEADS_DIR and SSL.LOAD_HEADS; make it with "
                    f"pretrain_fast_headers.py + transfer_headers.py, or set SSL.LOAD_HEADS=False "
                    f"to start the heads from scratch)")
            load_head(module, load_file(path, "head file"), str(path), task.attr)
            log.info("%s: loaded %s", task.attr, path)
        else:
            log.info("%s: new head (SSL.LOAD_HEADS=False)", task.attr)
