"""The demo pipeline on the embedded demo data, on the CPU (``make demo``).

    python tools/demo.py --out demo_out [--steps N] [--width W] [--size S] [--fresh]

1. ``data``: build the demo dataset (tools/make_demo_data.py): clean WIDER-style images with
   exact face boxes, and a DARK FACE-style set made by a simulated low-light degradation.
2. ``source``: train a reduced-width DSFD on the clean images, detection loss only (train.py);
   the loss falls in the log.
3. ``detect``: run test.py on the held-out images, clean and dark, and draw the detections
   into ``demo_out/detections.png``.
4. ``evaluate``: AP (the DARK FACE protocol) of the model on the held-out images, clean and dark,
   and the PR curves in ``demo_out/pr_curves.png`` -- the day-night gap the rest of the project
   closes.

Each stage skips work whose output already exists, so an interrupted demo resumes; ``--fresh``
starts over.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import test as test_script  # noqa: E402
import train  # noqa: E402
from evaluation.common import PRCurve, plot_pr_curves  # noqa: E402
from evaluation.darkface import evaluate_darkface, read_darkface_gt_file  # noqa: E402
from tools import make_demo_data  # noqa: E402
from utils.visualize import draw_detections, grid  # noqa: E402

log = logging.getLogger("demo")


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def stage_data(out: Path) -> Path:
    data = out / "data"
    if (data / "README.txt").is_file():
        print(f"demo data already in {data}")
    else:
        make_demo_data.main(["--out", str(data)])
    return data


def stage_source(out: Path, data: Path, args) -> Path:
    """Detection-only training of a small DSFD from scratch on the clean images."""
    run = out / "runs" / "source"
    final = run / f"ckpt_{args.steps}.pth"
    if final.is_file():
        print(f"source model already trained: {final}")
        return final
    opts = [
        f"MODEL.WIDTH={args.width}", "MODEL.WEIGHTS=''",
        f"FACE.SRC_TRAIN_FILE={data / 'wider_face_train.txt'}", f"FACE.DATA_ROOT={data}",
        f"AUG.resize_width={args.size}", f"AUG.resize_height={args.size}",
        f"SOLVER.BATCH_SIZE={args.batch}", f"SOLVER.MAX_STEPS={args.steps}",
        f"SOLVER.LR={args.lr}", "SOLVER.WARMUP_ITERS=20", f"SOLVER.LR_STEPS=[{int(args.steps * 0.8)}]",
        f"RUN.OUTPUT_DIR={out / 'runs'}", "RUN.NAME=source", "RUN.LOG_EVERY=20",
        f"RUN.CKPT_EVERY={max(args.steps // 4, 1)}", f"RUN.NUM_WORKERS={args.workers}",
    ]
    rc = train.main(["--config", str(ROOT / "configs" / "detection_only.yaml"),
                     "--resume", "auto", *opts])
    if rc != 0 or not final.is_file():
        raise SystemExit(f"training failed (exit code {rc}); see {run / 'log.txt'}")
    return final


def detect(weights: Path, images: Path, output: Path, args) -> Path:
    if not output.is_dir() or len(list(output.glob("*.txt"))) < len(list(images.glob("*.png"))):
        test_script.main(["--weights", str(weights), "--images", str(images), "--output",
                          str(output), "--workers", "0", "--batch-size", "4"])
    return output


def read_pred(path: Path) -> np.ndarray:
    text = path.read_text().split()
    return np.array(text, dtype=np.float64).reshape(-1, 5)


def stage_detect(out: Path, data: Path, weights: Path, args) -> dict:
    preds = {}
    for domain in ("clean", "dark"):
        folder = data / "DarkFace" / ("clean" if domain == "clean" else "images") / "val"
        preds[domain] = detect(weights, folder, out / "pred" / f"source_{domain}", args)
    ids = sorted(p.stem for p in (data / "DarkFace" / "label" / "val").glob("*.txt"))[:3]
    panels, titles = [], []
    for domain in ("clean", "dark"):
        folder = data / "DarkFace" / ("clean" if domain == "clean" else "images") / "val"
        for i in ids:
            rgb = test_script.read_rgb(folder / f"{i}.png")
            if domain == "dark":                  # brighten for display only
                rgb = np.clip(rgb.astype(np.float32) * (110.0 / max(rgb.mean(), 1.0)), 0,
                              255).astype(np.uint8)
            gt = read_darkface_gt_file(data / "DarkFace" / "label" / "val" / f"{i}.txt")
            dets = read_pred(preds[domain] / f"{i}.txt")
            panels.append(draw_detections(rgb, dets, threshold=args.show_threshold, gt=gt))
            titles.append(f"{domain} #{i}: {int((dets[:, 4] >= args.show_threshold).sum())} "
                          f"detections >= {args.show_threshold} (green), faces in red")
    picture = out / "detections.png"
    grid(panels, columns=len(ids), titles=titles).save(picture)
    print(f"detections drawn in {picture}")
    return preds


def stage_evaluate(out: Path, data: Path, preds: dict) -> dict:
    gt = data / "DarkFace" / "label" / "val"
    results, curves = {}, []
    for domain, folder in preds.items():
        r = evaluate_darkface(gt, folder)
        results[domain] = r["ap"]
        curves.append(PRCurve(f"source-only DSFD, {domain} images", r["precision"], r["recall"]))
    plot_pr_curves(out / "pr_curves.png", [("demo held-out images (AP at IoU 0.5)", curves, [])])
    print("AP on the held-out demo images (DARK FACE protocol, IoU 0.5):")
    for domain, ap in results.items():
        print(f"  source-only model, {domain:5s} images: {ap:.4f}")
    print(f"PR curves in {out / 'pr_curves.png'}")
    return results


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("demo_out"))
    p.add_argument("--steps", type=int, default=400, help="source training steps")
    p.add_argument("--width", type=float, default=0.25, help="DSFD channel multiplier")
    p.add_argument("--size", type=int, default=320, help="training image size")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--show-threshold", type=float, default=0.5)
    p.add_argument("--fresh", action="store_true", help="delete --out first")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if args.fresh and args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    banner("1/4 demo data")
    data = stage_data(args.out)
    banner(f"2/4 train a DSFD (width {args.width}) on the clean images, {args.steps} steps")
    weights = stage_source(args.out, data, args)
    banner("3/4 detect on the held-out images")
    preds = stage_detect(args.out, data, weights, args)
    banner("4/4 evaluate")
    stage_evaluate(args.out, data, preds)
    print(f"\ndemo finished in {time.time() - start:.0f} s; outputs in {args.out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
