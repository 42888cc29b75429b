"""Shared timing helper for the benchmark scripts."""
import statistics
import time

import torch


def timed(fn, repeat: int, device: torch.device, warmup: int = 0) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeat`` calls (CUDA synchronised), after
    ``warmup`` calls that are not timed."""
    times = []
    for i in range(warmup + repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def interleaved(pipes: dict, photos: dict, rounds: int) -> dict[str, list[float]]:
    """Per pipeline, ms per image of each round; every round runs every photo through every
    pipeline in turn (interleaved, so a shared machine's load hits them alike). A warm-up pass
    first (kernels are chosen per input shape)."""
    for fn in pipes.values():
        for rgb in photos.values():
            fn(rgb)
    times = {k: [] for k in pipes}
    for _ in range(rounds):
        for k, fn in pipes.items():
            t = time.perf_counter()
            for rgb in photos.values():
                fn(rgb)
            times[k].append(1e3 * (time.perf_counter() - t) / len(photos))
    return times
