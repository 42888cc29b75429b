"""bf16 autocast + channels_last against fp32 on the CPU: speed, and how much detections move.

    python bench/bench_amp.py [--dsfd-widths 1.0 0.25] [--repeat 3] [--yunet-rounds 7]
                              [--shared-data ../shared/data] [--skip-dsfd]

(a) DSFD-VGG (random weights: no trained DSFD file ships with the project) at 640 x 640:
    milliseconds per image of ``FaceDetector`` (forward + decoding + NMS) with ``RUN.AMP=none``
    and with ``RUN.AMP=bf16 RUN.CHANNELS_LAST=True``, per width.

(b) YuNet_n with the released weights (``<shared-data>/yunet/yunet_n.pth``) on real photos:
    ``skimage.data.astronaut()``, ``camera()``, matplotlib's ``grace_hopper.jpg``, a 10 x 10
    mosaic of the 100 LFW faces of ``skimage.data.lfw_subset()``, and a simulated low-light copy
    of each (``data/lowlight.py``, seeded). Pipelines: fp32, bf16, bf16 + channels_last.
    Speed: each round runs every photo through each pipeline in turn (interleaved, so that the
    load of a shared machine hits them alike); the median over rounds, per image.

What "equal" means: the kept set of a pipeline is its detections with score >= 0.5 (after the
preset's NMS). The fp32 and bf16 kept sets are matched one to one, greedily by fp32 score, at
IoU >= 0.5. A box is *equal* when it is matched; the agreement is ``matched / (matched +
unmatched fp32 boxes + unmatched bf16 boxes)``, so a box that only one pipeline keeps (a miss
or an extra) counts against it. For the matched pairs the table gives the mean and maximum
|score difference|, the smallest IoU and the largest landmark offset in pixels.
"""
import argparse
import copy
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from data.config import load_config
from models.registry import build_net
from models.inference import FaceDetector
from models.yunet.net import load_yunet_weights

ROOT = Path(__file__).resolve().parents[1]
KEEP_SCORE, MATCH_IOU = 0.5, 0.5
PIPELINES = {"fp32": ("none", False), "bf16": ("bf16", False), "bf16+CL": ("bf16", True)}


def interleaved_ms(fns: dict, repeat: int) -> dict[str, float]:
    """Median milliseconds of each ``fn()`` over ``repeat`` rounds, the functions taking turns
    in every round (so that the load of a shared machine hits them alike); one warm-up call
    each first (oneDNN builds its kernels per shape and dtype)."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(1e3 * (time.perf_counter() - t))
    return {name: statistics.median(t) for name, t in times.items()}


def detector(cfg, net, amp: str, channels_last: bool) -> FaceDetector:
    """A FaceDetector on its own copy of ``net`` (channels_last converts the weights)."""
    cfg = copy.deepcopy(cfg)
    cfg.RUN.AMP, cfg.RUN.CHANNELS_LAST = amp, channels_last
    return FaceDetector.from_config(copy.deepcopy(net), cfg, torch.device("cpu"))


# ---- (a) DSFD speed ----------------------------------------------------------------------------

def bench_dsfd(widths, repeat: int) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (1, 640, 640, 3), dtype=np.uint8)
    print(f"(a) DSFD-VGG, 640x640, random weights, {torch.get_num_threads()} threads, "
          f"median of {repeat} (interleaved)")
    print(f"| width | fp32 ms | bf16 + channels_last ms | speed-up |")
    print(f"|---|---|---|---|")
    for width in widths:
        cfg = load_config(overrides=[f"MODEL.WIDTH={width}"])
        torch.manual_seed(0)
        net = build_net(cfg)
        fp32_det, bf16_det = detector(cfg, net, "none", False), detector(cfg, net, "bf16", True)
        ms = interleaved_ms({"fp32": lambda: fp32_det(rgb), "bf16": lambda: bf16_det(rgb)},
                            repeat)
        fp32, bf16 = ms["fp32"], ms["bf16"]
        print(f"| {width} | {fp32:.0f} | {bf16:.0f} | {fp32 / bf16:.2f}x |")


# ---- (b) YuNet agreement -----------------------------------------------------------------------

def lfw_mosaic(tile: int = 64) -> np.ndarray:
    import cv2
    import skimage.data
    grid = np.zeros((10 * tile, 10 * tile), np.uint8)
    for i, face in enumerate(skimage.data.lfw_subset()[:100]):
        r, c = divmod(i, 10)
        grid[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = cv2.resize(
            (face * 255).astype(np.uint8), (tile, tile), interpolation=cv2.INTER_CUBIC)
    return np.repeat(grid[..., None], 3, 2)


def real_photos() -> dict[str, np.ndarray]:
    """The photos and their low-light copies (seeded; mean pixel about 30-45)."""
    import matplotlib.cbook
    import skimage.data
    from PIL import Image
    from data.lowlight import simulate_low_light
    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as im:
        grace = np.array(im.convert("RGB"))
    photos = {"astronaut": skimage.data.astronaut(), "grace_hopper": grace,
              "camera": np.repeat(skimage.data.camera()[..., None], 3, 2),
              "lfw_mosaic": lfw_mosaic()}
    for seed, name in enumerate(list(photos)):
        photos[f"{name} (low light)"] = simulate_low_light(
            photos[name], np.random.default_rng(seed), exposure=0.12)
    return {k: np.ascontiguousarray(v) for k, v in photos.items()}


def pixel_rows(dets: torch.Tensor, hw) -> np.ndarray:
    h, w = hw
    rows = dets.double().numpy() * np.array([w, h, w, h, 1] + [w, h] * 5)
    return rows[rows[:, 4] >= KEEP_SCORE]


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])     # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter)


def match(ref: np.ndarray, other: np.ndarray) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching of ``ref``'s boxes (by descending score) at IoU >= 0.5."""
    pairs, used = [], set()
    iou = iou_matrix(ref, other) if len(ref) and len(other) else np.zeros((len(ref), 0))
    for i in np.argsort(-ref[:, 4], kind="stable"):
        order = [j for j in np.argsort(-iou[i]) if j not in used and iou[i, j] >= MATCH_IOU]
        if order:
            used.add(order[0])
            pairs.append((int(i), int(order[0]), float(iou[i, order[0]])))
    return pairs


def bench_yunet(shared: Path, rounds: int) -> None:
    weights = shared / "yunet" / "yunet_n.pth"
    if not weights.is_file():
        print(f"(b) skipped: {weights} not found (--shared-data)")
        return
    cfg = load_config(overrides=["MODEL.NAME='yunet_n'"])
    net = build_net(cfg)
    load_yunet_weights(net, weights)
    photos = real_photos()
    detectors = {name: detector(cfg, net, amp, cl) for name, (amp, cl) in PIPELINES.items()}
    print(f"\n(b) YuNet_n (released weights), {torch.get_num_threads()} threads; kept: score >= "
          f"{KEEP_SCORE}; equal: matched one to one at IoU >= {MATCH_IOU} (module doc)")
    print("| photo | size | fp32 kept | pipeline | kept | equal | agreement | mean / max "
          "abs(score diff) | min IoU | max landmark px |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    totals = {name: [0, 0, []] for name in PIPELINES if name != "fp32"}   # equal, union, diffs
    for photo, rgb in photos.items():
        hw = rgb.shape[:2]
        results = {name: pixel_rows(d(rgb[None])[0], hw) for name, d in detectors.items()}
        ref = results["fp32"]
        for name in totals:
            rows = results[name]
            pairs = match(ref, rows)
            union = len(ref) + len(rows) - len(pairs)
            diffs = [abs(ref[i, 4] - rows[j, 4]) for i, j, _ in pairs]
            lm = max((np.abs(ref[i, 5:] - rows[j, 5:]).max() for i, j, _ in pairs), default=0)
            totals[name][0] += len(pairs)
            totals[name][1] += union
            totals[name][2] += diffs
            agree = len(pairs) / union if union else 1.0
            print(f"| {photo} | {hw[1]}x{hw[0]} | {len(ref)} | {name} | {len(rows)} | "
                  f"{len(pairs)} | {100 * agree:.1f}% | "
                  f"{np.mean(diffs) if diffs else 0:.4f} / {max(diffs, default=0):.4f} | "
                  f"{min((p[2] for p in pairs), default=1):.3f} | {lm:.2f} |")
    for name, (equal, union, diffs) in totals.items():
        print(f"all photos, {name}: {equal} of {union} boxes equal "
              f"({100 * equal / max(union, 1):.1f}%), mean abs(score diff) "
              f"{np.mean(diffs) if diffs else 0:.4f}")
    # speed: every photo once per pipeline per round, the pipelines interleaved
    ms = interleaved_ms({name: (lambda d=d: [d(rgb[None]) for rgb in photos.values()])
                         for name, d in detectors.items()}, rounds)
    print(f"speed, ms per image (median of {rounds} rounds over the {len(photos)} photos): "
          + ", ".join(f"{name} {t / len(photos):.1f}" for name, t in ms.items()))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dsfd-widths", type=float, nargs="+", default=[1.0, 0.25])
    ap.add_argument("--repeat", type=int, default=3, help="DSFD timing repeats")
    ap.add_argument("--yunet-rounds", type=int, default=7, help="YuNet timing rounds")
    ap.add_argument("--shared-data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--skip-dsfd", action="store_true")
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, CPU: {torch.backends.cpu.get_cpu_capability()}")
    if not args.skip_dsfd:
        bench_dsfd(args.dsfd_widths, args.repeat)
    bench_yunet(args.shared_data, args.yunet_rounds)


if __name__ == "__main__":
    main()
