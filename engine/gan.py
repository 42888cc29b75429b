"""The pix2pix update of the noise synthesis D(H) (docs/LOW_LEVEL.md): one training step of a
conditional GAN, vanilla GAN loss plus L1, and pix2pix's linear learning-rate decay.

Shared by ``tools/train_noise.py`` (the trainer) and ``bench/bench_pix2pix.py`` (its speed), so
the bench times exactly the trainer's step, non-finite checks included.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engine import run as engine


def gan_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Vanilla GAN loss: BCE of every patch logit against 1 (real) or 0 (fake)."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


def pix2pix_step(G, D, opt_g, opt_d, real_a, real_b, lambda_l1: float, step: int = 0) -> dict:
    """One pix2pix update (D, then G). Returns the loss terms, detached; the D terms carry their
    0.5 weight, G_L1 its lambda. Raises :class:`engine.run.NonFiniteError` before an update
    whose loss or gradients are not finite (``step`` numbers it in the message)."""
    fake_b = G(real_a)
    D.requires_grad_(True)
    d_terms = {"D_fake": 0.5 * gan_loss(D(torch.cat([real_a, fake_b.detach()], 1)), False),
               "D_real": 0.5 * gan_loss(D(torch.cat([real_a, real_b], 1)), True)}
    _update(opt_d, D, d_terms, step, real_a.device)

    D.requires_grad_(False)                    # G's step does not touch D's gradients
    g_terms = {"G_GAN": gan_loss(D(torch.cat([real_a, fake_b], 1)), True),
               "G_L1": lambda_l1 * F.l1_loss(fake_b, real_b)}
    _update(opt_g, G, g_terms, step, real_a.device)
    D.requires_grad_(True)
    return {k: v.detach() for k, v in {**d_terms, **g_terms}.items()}


def _update(optimizer, net, terms: dict, step: int, device) -> None:
    loss = sum(terms.values())
    engine.check_loss(step, loss, terms, device)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    engine.check_gradients(step, [(n, p) for n, p in net.named_parameters() if p.requires_grad],
                           terms)
    optimizer.step()


def linear_decay(n_epochs: int, n_decay: int):
    """pix2pix's 'linear' policy: factor 1 for the first ``n_epochs`` epochs (0-based epoch
    e < n_epochs), then ``1 - (e + 1 - n_epochs) / (n_decay + 1)``."""
    return lambda e: 1.0 - max(0, e + 1 - n_epochs) / float(n_decay + 1)
