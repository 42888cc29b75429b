"""Shared timing helper for the benchmark scripts."""
import statistics
import time

import torch


def timed(fn, repeat: int, device: torch.device) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeat`` calls (CUDA synchronised)."""
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
