"""Speed of the camera model (data/camera.py) on the CPU, as a data loader would run it.

    python bench/bench_camera.py [--batch 8] [--size 640] [--threads 1 2] [--repeat 3]
                                 [--presets darkface dainet eld]

Prints images/s of ``darken`` on a batch of ``--batch`` random ``--size`` x ``--size`` images,
uint8 in and out (8-bit inputs, uint8 or floats k/255, decode through a 256-entry table) and
float32 in and out with values off the 8-bit levels (the exact curve), for each preset and thread count, plus the darkface preset with Gaussian
shot noise (``shot_dist=gaussian``, the same variance without the Poisson sampler). Median of
``--repeat`` runs after one warm-up. Beside the wall-clock rate: images per CPU-second of this
process (``cpu``), which a loaded machine inflates much less than the wall clock (with one
thread, about what an idle core would give).
"""
import time
import argparse

import torch

from bench.timing import timed
from data import camera


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--presets", nargs="+", default=["darkface", "dainet", "eld"])
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    images8 = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8,
                            generator=g)
    images = torch.rand(images8.shape, generator=g)          # not on 8-bit levels: no table
    runs = [(p, {}) for p in args.presets]
    if "darkface" in args.presets:
        runs.append(("darkface", {"shot_dist": "gaussian"}))
    cpu = torch.device("cpu")
    print(f"batch {args.batch} x {args.size}x{args.size}, median of {args.repeat}; "
          f"images/s (CPU timings on a shared machine are noisy)")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for preset, overrides in runs:
            name = preset + ("".join(f" {k}={v}" for k, v in overrides.items()))
            row = []
            for label, batch in (("uint8", images8), ("float32", images)):
                def run():
                    camera.darken(batch, preset, overrides=overrides, seeds=range(args.batch))
                run()
                cpu_start = time.process_time()
                seconds = timed(run, args.repeat, cpu)
                cpu_seconds = (time.process_time() - cpu_start) / args.repeat
                row.append(f"{label} {args.batch / seconds:6.2f} "
                           f"(cpu {args.batch / cpu_seconds:6.2f})")
            print(f"threads {threads}  {name:<28} " + "   ".join(row) + "  img/s")


if __name__ == "__main__":
    main()
