"""Evaluate a detector on the held-out DARK FACE split: detection, AP, PR plot and a report.

    python tools/darkface_proxy.py --weights W [--out results/darkface_proxy]
        [--mode multi|single] [--scale S] [--no-enhance] [--enhancer E]
        [--official-curves ../shared/data/official_pr_curves/darkface]
        [DARKFACE.VAL_IDS=../shared/data/hla_lists/darkface_val_500_ids.txt] [KEY.SUB=VALUE ...]

The official DARK FACE test server closed in 2024, so results need a labelled split that no
training stage sees. The split comes from DARKFACE.VAL_IDS (recommended: the 500 ids the HLA-Face
authors published) or, without it, the every-k-th rule of data/darkface.py over
DARKFACE.IMAGE_DIR. The command runs test.py on those images (the reference protocol by default:
E(L) enhancement, multi-scale + flip + pyramid, box voting), evaluates exactly as the official
tool does (tools/eval_darkface.py: AP at IoU 0.5) against DARKFACE.LABEL_DIR, and writes into
``--out``: ``pred/`` (one txt per image), ``ap.json``, ``pr_curve.png``, ``pr_curve.csv`` and
``report.md`` (the exact protocol). Interrupted runs resume (images with results are skipped).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

from data import config as config_lib
from data.image_folder import read_rgb
from data.darkface import held_out_ids
from evaluation.common import PRCurve, plot_pr_curves, write_pr_csv
from evaluation.darkface import evaluate_darkface
from evaluation.official_curves import darkface_curves
from models.test_time import reference_passes

ROOT = Path(__file__).resolve().parents[1]


def sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def find_images(image_dir: Path, ids: list[str]) -> list[Path]:
    paths = []
    for i in ids:
        found = [image_dir / f"{i}{ext}" for ext in (".png", ".jpg", ".jpeg", ".bmp")]
        found = [p for p in found if p.is_file()]
        if not found:
            raise FileNotFoundError(f"held-out image {i} not found in {image_dir} "
                                    f"(config key DARKFACE.IMAGE_DIR)")
        paths.append(found[0].resolve())
    return paths


def write_report(path: Path, args, cfg, ids: list[str], ap: float, seconds: float,
                 image_size) -> None:
    split = (f"id list `{cfg.DARKFACE.VAL_IDS}`" if cfg.DARKFACE.VAL_IDS else
             f"every-k-th rule over `{cfg.DARKFACE.IMAGE_DIR}` (data/darkface.py)")
    if args.mode == "multi":
        h, w = image_size
        passes = ", ".join(f"{p.scale:g}{' flipped' if p.flip else ''}"
                           f"{'' if p.keep == 'all' else ' (' + p.keep + ' faces)'}"
                           for p in reference_passes(h, w, args.scale))
        scales = (f"multi-scale (the reference's plan; for {w}x{h}: {passes}), box voting at "
                  f"IoU 0.3 (+1 px) with singleton groups dropped, top {cfg.DETECT.TOP_K}"
                  + ("; passes that find nothing add no dummy row" if args.no_dummy else ""))
    else:
        scales = f"single scale {args.scale:g} (cv2 INTER_LINEAR), no voting"
    enhancer = "none (--no-enhance)" if args.no_enhance else (
        f"E(L) `{args.enhancer or cfg.ENHANCE.WEIGHTS}` (sha1 "
        f"{sha1(Path(args.enhancer or cfg.ENHANCE.WEIGHTS))}), uint8 quantised (x*255+0.5)")
    d = cfg.DETECT
    lines = [
        "# DARK FACE held-out evaluation", "",
        f"- **AP (IoU 0.5): {ap:.4f}** on {len(ids)} images",
        f"- split: {split}; ids sha1 {hashlib.sha1(' '.join(ids).encode()).hexdigest()[:12]}",
        f"- ground truth: `{cfg.DARKFACE.LABEL_DIR}` (count, then x1 y1 x2 y2 per face)",
        f"- detector: `{args.weights}` (sha1 {sha1(Path(args.weights))})",
        f"- enhancement: {enhancer}",
        f"- test-time: {scales}",
        f"- per pass: softmax score > {d.CONF_THRESH}, NMS {d.NMS_THRESH} over the top "
        f"{d.NMS_TOP_K}, keep {d.TOP_K}",
        "- evaluator: the official DARK FACE tool's protocol (tools/eval_darkface.py): global "
        "min-max score normalisation (single precision), 1,000 thresholds, max-IoU matching at "
        "IoU >= 0.5 with the +1 pixel convention, duplicates add proposals but no recall, "
        "all-point VOC AP",
        f"- wall time: {seconds:.0f} s", "",
    ]
    path.write_text("\n".join(lines))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--weights", required=True)
    p.add_argument("--out", type=Path, default=Path("results/darkface_proxy"))
    p.add_argument("--mode", choices=["multi", "single"], default="multi")
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--no-enhance", action="store_true")
    p.add_argument("--enhancer", default=None)
    p.add_argument("--no-dummy", action="store_true")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--official-curves", type=Path, default=None,
                   help="folder of the official tool's baseline curves to draw beside ours")
    p.add_argument("--config", action="append", default=[], metavar="PRESET")
    p.add_argument("opts", nargs="*", metavar="KEY.SUB=VALUE")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = config_lib.load_config(args.config, args.opts)
    ids = held_out_ids(cfg)
    label_dir = Path(cfg.DARKFACE.LABEL_DIR)
    if not label_dir.is_dir():
        raise FileNotFoundError(f"{label_dir} does not exist (set by config key "
                                f"DARKFACE.LABEL_DIR)")
    images = find_images(Path(cfg.DARKFACE.IMAGE_DIR), ids)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "images.txt").write_text("".join(f"{p}\n" for p in images))
    start = time.time()
    test_args = ["--weights", args.weights, "--images", str(args.out / "images.txt"),
                 "--output", str(args.out / "pred"), "--mode", args.mode, "--scale",
                 str(args.scale), "--batch-size", str(args.batch_size), "--workers",
                 str(args.workers)]
    test_args += ["--no-enhance"] if args.no_enhance else []
    test_args += ["--enhancer", args.enhancer] if args.enhancer else []
    test_args += ["--no-dummy"] if args.no_dummy else []
    for preset in args.config:
        test_args += ["--config", preset]
    # test.py is an entry point: it runs as its own process, as a user would run it
    subprocess.run([sys.executable, str(ROOT / "test.py"), *test_args, *args.opts], check=True)
    result = evaluate_darkface(label_dir, args.out / "pred", ids=ids)
    seconds = time.time() - start
    ap = result["ap"]
    (args.out / "ap.json").write_text(json.dumps({"ap": ap, "images": len(ids)}) + "\n")
    write_pr_csv(args.out / "pr_curve.csv", result["precision"], result["recall"])
    official = darkface_curves(args.official_curves) if args.official_curves else []
    plot_pr_curves(args.out / "pr_curve.png", [(
        "DARK FACE held-out split", [PRCurve("ours", result["precision"], result["recall"])],
        official)])
    image_size = read_rgb(images[0]).shape[:2]
    write_report(args.out / "report.md", args, cfg, ids, ap, seconds, image_size)
    print(f"DARK FACE held-out AP (IoU 0.5): {ap:.4f} on {len(ids)} images; report in "
          f"{args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
