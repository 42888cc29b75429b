"""MoCo on the detector's feature maps (one InfoNCE term per level), for any detector of the
interface in ``models/interface.py``.

``encoder_q`` is the detector itself (shared with detection and the other heads): it is held by
reference, not as a sub-module, so this module's state_dict has exactly the reference's keys
for DSFD::

    queue [L, dim, K]  queue_ptr [L] (int64)  encoder_k.{vgg,L2Normof1..3,extras}.*
    head_q.MLPs.{0..5}.*  head_k.MLPs.{0..5}.*

``encoder_k`` (``encoder_q.make_key_encoder()``: the parts the feature maps need) and
``head_k`` follow ``encoder_q`` and ``head_q`` by momentum ``m``; their parameters never get a
gradient.

Distributed: the keys of every rank are gathered before the enqueue, so all ranks write the
same keys at the same pointer and hold identical queues (DDP must then leave the buffers alone:
``broadcast_buffers=False``).

BatchNorm. MoCo's batch shuffle exists because BatchNorm statistics computed over a batch let a
query find its positive key through the batch itself. DSFD-VGG has no BatchNorm, so nothing is
done for it (the reference does nothing either). For detectors with BatchNorm (YuNet,
RetinaFace):

* under DDP the key images are shuffled across the ranks before the key encoder and the keys
  unshuffled after (MoCo's shuffling BN), with one permutation drawn on rank 0;
* in one process there is no other rank to shuffle with, so the key encoder runs with its
  BatchNorm in eval mode: its running statistics normalise every key on its own, so no
  statistic is shared between a query batch and its keys.

Either way the key encoder's running statistics follow the query encoder's by the same momentum
as the weights, and nothing else moves them (the shuffled train-mode pass leaves them as they
were): with the query statistics equal on every rank (``adapt/hla/trainer.py`` averages them
each step), the key encoders stay identical across ranks, buffers included.
"""
from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adapt.hla.heads import ContrastiveHead
from utils import dist


class MoCo(nn.Module):
    """Momentum contrast with one queue per feature level.

    Args:
        encoder_q: the detector (``features(x)`` gives the maps, ``make_key_encoder()`` the key
            encoder). The key encoder starts as a copy of its current weights, so build this
            after loading the detector.
        channels: channels of the feature maps.
        dim: embedding size (128). K: queue length (2048). m: momentum (0.99). T: temperature.
    """

    def __init__(self, encoder_q: nn.Module, channels, dim: int = 128, K: int = 2048,
                 m: float = 0.99, T: float = 0.07):
        super().__init__()
        self.K, self.m, self.T, self.dim = K, m, T, dim
        object.__setattr__(self, "encoder_q", encoder_q)    # by reference: see the module doc
        self.encoder_k = encoder_q.make_key_encoder()
        self.batchnorm = bool(getattr(encoder_q, "has_batchnorm", False))
        self.head_q = ContrastiveHead(channels, dim)
        self.head_k = copy.deepcopy(self.head_q).requires_grad_(False)
        levels = len(channels)
        self.register_buffer("queue", F.normalize(torch.randn(levels, dim, K), dim=1))
        self.register_buffer("queue_ptr", torch.zeros(levels, dtype=torch.long))

    def _key_pairs(self) -> tuple[list[Tensor], list[Tensor]]:
        """Parameters (key, query) matched by name: encoder_k <- encoder_q, head_k <- head_q."""
        query = dict(self.encoder_q.named_parameters())
        keys, queries = [], []
        for name, p in self.encoder_k.named_parameters():
            keys.append(p)
            queries.append(query[name])
        for p_k, p_q in zip(self.head_k.parameters(), self.head_q.parameters()):
            keys.append(p_k)
            queries.append(p_q)
        return keys, queries

    @torch.no_grad()
    def _momentum_update_key_encoder(self) -> None:
        """theta_k <- m theta_k + (1 - m) theta_q, i.e. theta_k += (1 - m)(theta_q - theta_k)."""
        keys, queries = self._key_pairs()
        torch._foreach_lerp_(keys, [q.detach() for q in queries], 1.0 - self.m)
        if self.batchnorm:
            self._momentum_update_bn_statistics()

    @torch.no_grad()
    def _momentum_update_bn_statistics(self) -> None:
        """BatchNorm running means/variances of the key encoder follow the query encoder's by
        momentum ``m`` (see the module doc)."""
        query = dict(self.encoder_q.named_buffers())
        for name, b in self.encoder_k.named_buffers():
            if b.is_floating_point() and name in query:
                b.lerp_(query[name].to(b.dtype), 1.0 - self.m)

    @torch.no_grad()
    def keys(self, im_k: Tensor) -> Tensor:
        """Normalised keys of ``im_k`` at every level: ``[N, L, dim]`` float32."""
        if self.batchnorm and dist.is_distributed():
            im_k, unshuffle = _batch_shuffle_ddp(im_k)
            with _statistics_kept(self.encoder_k):      # shuffled-batch statistics only
                feats = self.encoder_k(im_k)
            keys = torch.stack([F.normalize(k.float(), dim=1) for k in self.head_k(feats)], 1)
            return _batch_unshuffle_ddp(keys, unshuffle)
        if self.batchnorm:
            was_training = self.encoder_k.training
            self.encoder_k.eval()
            try:
                feats = self.encoder_k(im_k)
            finally:
                self.encoder_k.train(was_training)
        else:
            feats = self.encoder_k(im_k)
        return torch.stack([F.normalize(k.float(), dim=1) for k in self.head_k(feats)], 1)

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys: Tensor) -> None:
        """Write the keys of all ranks (``[N, L, dim]`` here, ``[G*N, L, dim]`` gathered in rank
        order) into every level's queue at its pointer, then advance the pointer."""
        keys = dist.all_gather_cat(keys.contiguous())
        n = keys.shape[0]
        if self.K % n:
            raise ValueError(f"MoCo queue length {self.K} is not a multiple of the global batch "
                             f"{n} (config keys SSL.MOCO_K and SSL.BATCH_SIZE)")
        # columns ptr .. ptr + n - 1 modulo K: a pointer from a head file trained with another
        # batch size may not be a multiple of n
        cols = (self.queue_ptr[:, None] + torch.arange(n, device=keys.device)) % self.K  # [L, n]
        levels = torch.arange(self.queue.shape[0], device=keys.device)[:, None]       # [L, 1]
        self.queue[levels, :, cols] = keys.permute(1, 0, 2).to(self.queue.dtype)      # [L, n, dim]
        self.queue_ptr.copy_((self.queue_ptr + n) % self.K)

    def contrastive_loss(self, feats_q: list[Tensor], im_k: Tensor) -> Tensor:
        """InfoNCE summed over the levels, from the query features (already computed by
        ``encoder_q``, with gradient) and the key images. Updates the key encoder first and
        enqueues the keys last, as the reference does."""
        self._momentum_update_key_encoder()
        k = self.keys(im_k)                                              # [N, L, dim]
        zs = self.head_q(feats_q)
        loss = 0.0
        # float32 even under AMP: the 1/T = 14.3 scale would amplify bf16 rounding of the logits
        with torch.autocast(k.device.type, enabled=False):
            for level, z in enumerate(zs):
                q = F.normalize(z.float(), dim=1)                                    # [N, dim]
                l_pos = torch.einsum("nc,nc->n", q, k[:, level]).unsqueeze(1)        # [N, 1]
                # cloned: the enqueue below writes the queue in place after autograd saved it
                l_neg = torch.einsum("nc,ck->nk", q, self.queue[level].clone())      # [N, K]
                logits = torch.cat([l_pos, l_neg], dim=1) / self.T                   # [N, 1+K]
                labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)  # positive: 0
                loss = loss + F.cross_entropy(logits, labels)
        self._dequeue_and_enqueue(k)
        return loss

    def forward(self, im_q: Tensor, im_k: Tensor) -> Tensor:
        return self.contrastive_loss(self.encoder_q.features(im_q), im_k)


@contextlib.contextmanager
def _statistics_kept(module: nn.Module):
    """Run ``module`` in training mode without moving its BatchNorm buffers (running mean,
    variance, batch count): they are put back as they were afterwards."""
    buffers = [b for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
               for b in m.buffers()]
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            torch._foreach_copy_(buffers, saved)


@torch.no_grad()
def _batch_shuffle_ddp(x: Tensor) -> tuple[Tensor, Tensor]:
    """MoCo's shuffling BN: gather the key images of all ranks, permute them with one
    permutation drawn on rank 0, and give each rank its slice. Returns the slice and the
    indices that undo the permutation. Every rank must hold the same batch size."""
    n = x.shape[0]
    x_all = dist.all_gather_cat(x.contiguous())                          # [G*n, ...]
    perm = dist.broadcast(torch.randperm(x_all.shape[0], device=x.device))
    unshuffle = torch.argsort(perm)
    r = dist.rank()
    return x_all[perm[r * n:(r + 1) * n]], unshuffle


@torch.no_grad()
def _batch_unshuffle_ddp(keys: Tensor, unshuffle: Tensor) -> Tensor:
    """The inverse of :func:`_batch_shuffle_ddp` for the keys: this rank's original order."""
    n = keys.shape[0]
    keys_all = dist.all_gather_cat(keys.contiguous())
    r = dist.rank()
    return keys_all[unshuffle[r * n:(r + 1) * n]]
