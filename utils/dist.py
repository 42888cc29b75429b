"""Distributed helpers that are safe without a process group (one process is a world of 1).

``python train.py`` runs one process; under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``
set) :func:`init_distributed` creates the process group: nccl on CUDA, gloo otherwise.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as td


def is_distributed() -> bool:
    return td.is_available() and td.is_initialized() and td.get_world_size() > 1


def world_size() -> int:
    return td.get_world_size() if td.is_available() and td.is_initialized() else 1


def rank() -> int:
    return td.get_rank() if td.is_available() and td.is_initialized() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def pick_device(spec: str = "auto") -> torch.device:
    """``auto``: ``cuda:LOCAL_RANK`` when CUDA is there, else the CPU."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"RUN.DEVICE={spec!r} but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    return device


def init_distributed(device: torch.device, backend: str = "auto",
                     timeout_s: int = 1800) -> None:
    """Create the process group when launched by torchrun; a no-op otherwise."""
    if not launched_by_torchrun() or td.is_initialized():
        return
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if backend == "nccl" else {}
    td.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s), **kwargs)


def cleanup() -> None:
    if td.is_available() and td.is_initialized():
        td.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        td.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (returns a new tensor; the input is unchanged)."""
    if not is_distributed():
        return t
    t = t.clone()
    td.all_reduce(t, op=td.ReduceOp.SUM)
    return t


def all_reduce_mean_dict(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Average a dict of scalar tensors over ranks in one collective (for logging)."""
    if not is_distributed() or not values:
        return values
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().float() for k in keys])
    td.all_reduce(stacked, op=td.ReduceOp.SUM)
    stacked /= world_size()
    return dict(zip(keys, stacked))


@torch.no_grad()
def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor from every rank along dim 0 (no gradient)."""
    if not is_distributed():
        return t
    out = [torch.empty_like(t) for _ in range(world_size())]
    td.all_gather(out, t.contiguous())
    return torch.cat(out, 0)


def broadcast(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    if is_distributed():
        td.broadcast(t, src)
    return t
