"""Statistics of the darkface camera preset on real daylight photos, beside DARK FACE's numbers.

    python bench/calibrate_darkface.py [--preset darkface] [--seeds 2] [--set NAME=VALUE ...]
                                       [--figure docs/night_histogram.png]

Photos: the 9 dlib photos in ../shared/data/dlib_faces (HLA_SHARED_DATA) and 4 scikit-image
photos (astronaut, coffee, chelsea, rocket). Each is darkened with ``--seeds`` seeds. Printed:
the pooled luma statistics (mean, median, share of exact zeros, 95th / 99th percentile), the mean
of each channel, the luma std of flat 8x8 patches (flat in the daylight photo) whose dark mean is
8-14 (the noise), each beside the real DARK FACE frame and the preset's target range; then the
range of the per-photo mean luma, and the dlib photos' numbers that tests/test_camera.py checks.
``--figure`` writes the luma histogram (log counts) with ours and the frame's mean and
percentiles.
"""
import argparse
import ast
import os
from pathlib import Path

import numpy as np

from data import camera

ROOT = Path(__file__).resolve().parents[1]

SHARED = Path(os.environ.get("HLA_SHARED_DATA", ROOT.parent / "shared" / "data"))


def photos() -> list[tuple[str, np.ndarray]]:
    """(name, BGR uint8) of the dlib photos (when present) and the scikit-image photos."""
    import cv2
    from skimage import data
    out = [(p.name, cv2.imread(str(p))) for p in sorted((SHARED / "dlib_faces").glob("*.jpg"))]
    out += [(n, np.ascontiguousarray(getattr(data, n)()[:, :, ::-1]))
            for n in ("astronaut", "coffee", "chelsea", "rocket")]
    return out


def measure(preset: str, seeds: int, overrides: dict):
    """Pooled luma values, flat-patch stds and per-image statistics over photos x seeds."""
    lumas, flats, per_image, dlib = [], [], [], []
    for s in range(seeds):
        for i, (name, bgr) in enumerate(photos()):
            dark = camera.darken_uint8(bgr, preset, seed=1000 * s + i, overrides=overrides)
            lumas.append(camera.luma(dark).ravel())
            flats.append(camera.flat_patch_noise(dark, bgr))
            per_image.append(camera.night_statistics(dark))
            if s == 0 and name.endswith(".jpg"):     # what tests/test_camera.py checks
                dlib.append((lumas[-1], flats[-1]))
    return np.concatenate(lumas), np.concatenate(flats), per_image, dlib


def table(y: np.ndarray, flat: np.ndarray, per_image: list) -> list[tuple]:
    """Rows (statistic, ours, DARK FACE frame, target range)."""
    frame, target = camera.DARKFACE_FRAME, camera.DARKFACE_TARGETS
    rows = [("mean luma", y.mean(), frame["mean_luma"], target["mean_luma"]),
            ("median luma", np.median(y), frame["median"], None),
            ("exact zeros", (y == 0).mean(), frame["zeros"], target["zeros"]),
            ("95th percentile", np.percentile(y, 95), frame["p95"], None),
            ("99th percentile", np.percentile(y, 99), frame["p99"], target["p99"])]
    for c, name in enumerate("bgr"):
        rows.append((f"mean {name.upper()}", np.mean([s[f"mean_{name}"] for s in per_image]),
                     frame[f"mean_{name}"], None))
    rows.append((f"flat-patch std (n={len(flat)})", flat.mean() if len(flat) else float("nan"),
                 "3.4-4.2", target["flat_std"]))
    return rows


def histogram(y: np.ndarray, path: Path, title: str) -> None:
    """Luma histogram (first 64 levels, log scale) with the mean / 95th / 99th percentile of
    ours (solid) and of the DARK FACE frame (dashed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.4, 2.8), dpi=100)
    counts = np.bincount(y, minlength=256)[:64] / len(y)
    ax.bar(np.arange(64), counts, width=1.0, color="#888")
    frame = camera.DARKFACE_FRAME
    for (ours, real, name), color in zip(
            ((y.mean(), frame["mean_luma"], "mean"), (np.percentile(y, 95), frame["p95"], "p95"),
             (np.percentile(y, 99), frame["p99"], "p99")), ("tab:blue", "tab:orange", "tab:red")):
        ax.axvline(ours, color=color, lw=1.2, label=f"{name}: ours {ours:.1f}, frame {real:g}")
        ax.axvline(real, color=color, lw=1.2, ls="--")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_yscale("log")
    ax.set_xlabel("luma (0-255; first 64 levels)")
    ax.set_ylabel("share of pixels")
    ax.set_title(f"{title}; zeros: ours {(y == 0).mean():.0%}, frame {frame['zeros']:.0%}",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="darkface", choices=tuple(camera.PRESETS))
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--figure", default="")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    args = ap.parse_args()
    overrides = {k: ast.literal_eval(v) for k, v in (s.split("=", 1) for s in args.set)}
    y, flat, per_image, dlib = measure(args.preset, args.seeds, overrides)
    print(f"preset {args.preset}, {len(per_image)} darkened photos ({args.seeds} seeds), "
          f"{len(y)} pixels")
    print(f"{'statistic':<26}{'ours':>10}{'DARK FACE':>12}   target")
    for name, ours, real, target in table(y, flat, per_image):
        real = f"{real:.3g}" if isinstance(real, float) else real
        target = f"{target[0]:g}-{target[1]:g}" if target else ""
        print(f"{name:<26}{ours:>10.3f}{real:>12}   {target}")
    means = [s["mean_luma"] for s in per_image]
    print(f"per-photo mean luma: {min(means):.2f} to {max(means):.2f} "
          f"(median {np.median(means):.2f})")
    if dlib:
        y9, f9 = (np.concatenate(v) for v in zip(*dlib))
        print(f"dlib photos, seed = index (the test): mean {y9.mean():.2f}, zeros "
              f"{(y9 == 0).mean():.3f}, p99 {np.percentile(y9, 99):.0f}, flat-patch std "
              f"{f9.mean():.2f} (n={len(f9)})")
    if args.figure:
        histogram(y, Path(args.figure), f"{args.preset} preset on {len(per_image)} daylight photos")


if __name__ == "__main__":
    main()
