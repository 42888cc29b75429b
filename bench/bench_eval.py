"""Time the WIDER FACE and DARK FACE evaluators on synthetic predictions.

    python bench/bench_eval.py [--wider-gt DIR] [--wider-preds 200] [--dark-images 1000]
        [--dark-preds 100] [--seed 0]

WIDER: the real val GT (3,226 images, 39,708 faces) with ``--wider-preds`` predictions per image
(every face jittered once, up to that number, then random boxes), written as the official
``<event>/<name>.txt`` files into a temporary folder. DARK FACE: ``--dark-images`` synthetic
1080x720 images with 1-20 faces each and ``--dark-preds`` predictions per image. Prints seconds
for loading the GT, reading the prediction files, matching + curves, and the total of
``evaluate_widerface`` / ``evaluate_darkface`` (file reading included).
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from evaluation.darkface import (evaluate_darkface, evaluate_darkface_boxes,
                                 load_darkface_gt, load_darkface_preds)
from evaluation.widerface import (evaluate_widerface, evaluate_widerface_boxes,
                                  load_widerface_gt, load_widerface_preds)

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_WIDER_GT = Path(os.environ.get("HLA_SHARED_DATA", ROOT.parent / "shared" / "data")
                        ) / "widerface_val_gt"


def synthetic_predictions(gt_xywh: np.ndarray, n: int, rng, width=1024, height=768
                          ) -> np.ndarray:
    """(n, 5) x y w h score: jittered copies of the faces first, random boxes for the rest."""
    faces = gt_xywh[:n].astype(np.float64)
    size = np.maximum(faces[:, 2:], 1)
    jittered = np.concatenate([faces[:, :2] + rng.normal(0, 0.1, (len(faces), 2)) * size,
                               size * rng.uniform(0.8, 1.25, (len(faces), 2))], 1)
    m = n - len(faces)
    side = np.exp(rng.uniform(np.log(6), np.log(300), (m, 1)))
    random = np.concatenate([rng.uniform(0, width, (m, 1)), rng.uniform(0, height, (m, 1)),
                             side, side * 1.2], 1)
    boxes = np.concatenate([jittered, random])
    scores = np.concatenate([rng.uniform(0.3, 1, len(faces)), rng.uniform(0.02, 0.7, m)])
    return np.concatenate([np.round(boxes, 2), np.round(scores, 6)[:, None]], 1)


def write_rows(path: Path, rows: np.ndarray, header: list[str]) -> None:
    body = "\n".join(" ".join(f"{v:g}" for v in r) for r in rows)
    path.write_text("\n".join(header + [body]) + "\n")


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def bench_wider(gt_dir: Path, per_image: int, rng) -> None:
    gt, t_gt = timed(lambda: load_widerface_gt(gt_dir))
    with tempfile.TemporaryDirectory() as tmp:
        pred_dir = Path(tmp)
        total = 0
        for event, name, boxes in zip(gt.events, gt.names, gt.boxes):
            rows = synthetic_predictions(boxes, per_image, rng)
            total += len(rows)
            (pred_dir / event).mkdir(exist_ok=True)
            write_rows(pred_dir / event / f"{name}.txt", rows, [f"{name}.jpg", str(len(rows))])
        preds, t_read = timed(lambda: load_widerface_preds(pred_dir, gt))
        result, t_eval = timed(lambda: evaluate_widerface_boxes(gt, preds))
        result_cli, t_total = timed(lambda: evaluate_widerface(gt_dir, pred_dir))
    assert all(result[s] == result_cli[s] for s in ("easy", "medium", "hard"))
    print(f"WIDER FACE val: {len(gt)} images, {sum(len(b) for b in gt.boxes)} faces, "
          f"{total} predictions ({total / len(gt):.0f}/image)")
    print(f"  load GT .mat files      {t_gt:7.2f} s")
    print(f"  read prediction files   {t_read:7.2f} s")
    print(f"  match + curves (3 sets) {t_eval:7.2f} s")
    print(f"  evaluate_widerface      {t_total:7.2f} s   (all of the above, end to end)")
    print(f"  AP easy/medium/hard     {result['easy']:.4f} / {result['medium']:.4f} / "
          f"{result['hard']:.4f}   (synthetic, meaningless)")


def bench_dark(num_images: int, per_image: int, rng) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        gt_dir, pred_dir = Path(tmp) / "gt", Path(tmp) / "pred"
        gt_dir.mkdir()
        pred_dir.mkdir()
        faces = 0
        for i in range(1, num_images + 1):
            n = int(rng.integers(1, 21))
            faces += n
            side = np.exp(rng.uniform(np.log(6), np.log(80), (n, 1)))
            xy = rng.uniform(0, 1000, (n, 2))
            gt_xyxy = np.round(np.concatenate([xy, xy + np.c_[side, side * 1.2]], 1))
            write_rows(gt_dir / f"{i}.txt", gt_xyxy, [str(n)])
            rows = synthetic_predictions(np.c_[gt_xyxy[:, :2], gt_xyxy[:, 2:] - gt_xyxy[:, :2]],
                                         per_image, rng, width=1080, height=720)
            rows[:, 2:4] += rows[:, :2]                       # x y w h -> corners
            write_rows(pred_dir / f"{i}.txt", rows, [])
        gt, t_gt = timed(lambda: load_darkface_gt(gt_dir))
        preds, t_read = timed(lambda: load_darkface_preds(pred_dir, gt.keys()))
        result, t_eval = timed(lambda: evaluate_darkface_boxes(gt, preds))
        _, t_total = timed(lambda: evaluate_darkface(gt_dir, pred_dir))
    print(f"DARK FACE (synthetic): {num_images} images, {faces} faces, "
          f"{num_images * per_image} predictions")
    print(f"  load GT files           {t_gt:7.2f} s")
    print(f"  read prediction files   {t_read:7.2f} s")
    print(f"  match + curve           {t_eval:7.2f} s")
    print(f"  evaluate_darkface       {t_total:7.2f} s   (end to end); AP {result['ap']:.4f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wider-gt", type=Path, default=DEFAULT_WIDER_GT)
    parser.add_argument("--wider-preds", type=int, default=200)
    parser.add_argument("--dark-images", type=int, default=1000)
    parser.add_argument("--dark-preds", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    print(f"numpy {np.__version__}, {os.cpu_count()} CPU(s)")
    bench_wider(args.wider_gt, args.wider_preds, rng)
    bench_dark(args.dark_images, args.dark_preds, rng)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
