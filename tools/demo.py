"""The whole HLA-Face pipeline on the embedded demo data, on the CPU (``make demo``).

    python tools/demo.py [--out demo_out] [--fresh] [--source-steps N] [--adapt-steps N]

1. data: a small dataset from images that ship with scikit-image and matplotlib
   (tools/make_demo_data.py): clean WIDER-style images with exact face boxes, and DARK FACE-style
   images made by a simulated low-light degradation (data/lowlight.py).
2. source: a reduced-width DSFD trained on the clean images, detection loss only (train.py).
3. E(L): the brightening network trained without references on the dark training images, then
   applied to them (tools/train_enhancer.py, tools/enhance_images.py).
4. D(H): blurred E(L) -> E(L) pix2pix, then noise + blur + pix2pix on the clean images
   (tools/blur_images.py, tools/train_noise.py, tools/synthesize_noise.py).
5. pseudo boxes: the source detector on the brightened dark images (tools/make_pseudo_boxes.py).
6. adaptation: joint training, detection plus the default self-supervised tasks (3x3 jigsaw on
   H and E(L), MoCo on E(L), MoCo across H / D(H)), from the source model (train.py).
7. evaluation on the held-out dark images (the DARK FACE protocol, tools/eval_darkface.py):
   source-only on the raw dark images, source-only with E(L), adapted with E(L), and the
   source-only model on the clean originals for reference; the detections are drawn into
   ``demo_out/detections.png`` and the PR curves into ``demo_out/pr_curves.png``.

Everything is small so the demo ends in minutes; the numbers show the pipeline working, not the
paper's results. Each stage skips work whose output exists, so an interrupted demo resumes;
``--fresh`` starts over.
"""
from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from data.image_folder import read_rgb  # noqa: E402
from evaluation.common import PRCurve, plot_pr_curves  # noqa: E402
from evaluation.darkface import evaluate_darkface, read_darkface_gt_file  # noqa: E402
from tools import (blur_images, enhance_images, make_demo_data, make_pseudo_boxes,  # noqa: E402
                   synthesize_noise)
from utils.logger import setup_logging  # noqa: E402
from utils.visualize import draw_detections, grid  # noqa: E402

SIZE = 256          # training images are resized to SIZE x SIZE
WIDTH = 0.125       # DSFD channel multiplier


def run_entry(script: str, argv: list[str]) -> int:
    """Run one of the project's entry points (train.py, test.py) as its own process, exactly as
    a user runs it; its output goes to this terminal."""
    return subprocess.run([sys.executable, str(ROOT / script), *argv], cwd=ROOT).returncode


class Demo:
    def __init__(self, args):
        self.args = args
        self.out = args.out.resolve()          # list files written below hold absolute paths
        self.data = self.out / "data"
        self.runs = self.out / "runs"
        self.dark = self.data / "DarkFace"
        self.times: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def stage(self, title: str):
        print(f"\n=== {len(self.times) + 1}/7 {title} ===", flush=True)
        start = time.time()
        yield
        self.times.append((title, time.time() - start))
        print(f"--- {title}: {self.times[-1][1]:.0f} s", flush=True)

    # -- stages -------------------------------------------------------------------------------

    def make_data(self):
        if (self.data / "README.txt").is_file():
            print(f"demo data already in {self.data}")
            return
        make_demo_data.main(["--out", str(self.data), "--n-dark-train", "60"])

    def common_opts(self) -> list[str]:
        return [f"MODEL.WIDTH={WIDTH}", f"FACE.SRC_TRAIN_FILE={self.data / 'wider_face_train.txt'}",
                f"FACE.DATA_ROOT={self.data}", f"AUG.resize_width={SIZE}",
                f"AUG.resize_height={SIZE}", "SOLVER.BATCH_SIZE=8", "SOLVER.OPTIMIZER=adamw",
                "SOLVER.WEIGHT_DECAY=1e-4", f"RUN.OUTPUT_DIR={self.runs}",
                f"RUN.NUM_WORKERS={self.args.workers}", "RUN.TENSORBOARD=False"]

    def train_source(self) -> Path:
        steps = self.args.source_steps
        final = self.runs / "source" / f"ckpt_{steps}.pth"
        if not final.is_file():
            self._train(["--config", str(ROOT / "configs" / "detection_only.yaml"),
                         *self.common_opts(), "MODEL.WEIGHTS=''", "RUN.NAME=source",
                         f"SOLVER.MAX_STEPS={steps}", "SOLVER.LR=1e-3", "SOLVER.WARMUP_ITERS=20",
                         f"SOLVER.LR_STEPS=[{steps * 4 // 5}]", "RUN.LOG_EVERY=25",
                         f"RUN.CKPT_EVERY={max(steps // 3, 1)}"], final)
        return final

    def train_enhancer(self) -> Path:
        weights = self.runs / "enhancer" / "enhancer_final.pth"
        if not weights.is_file():
            self._run("tools/train_enhancer.py", [
                "--resume", "auto", f"ENHANCE.TRAIN_DIR={self.dark / 'images' / 'train'}",
                "ENHANCE.EPOCHS=2", "ENHANCE.SIZE=128", f"RUN.OUTPUT_DIR={self.runs}",
                "RUN.NAME=enhancer", "RUN.NUM_WORKERS=0", "RUN.TENSORBOARD=False"], weights)
        enhance_images.main(["--weights", str(weights), "--input",
                             str(self.dark / "images" / "train"), "--output",
                             str(self.dark / "images_enhanced" / "train"), "--workers", "0"])
        return weights

    def synthesize_noise(self) -> Path:
        enhanced, blurred = self.dark / "images_enhanced" / "train", \
            self.dark / "images_enhanced_denoise" / "train"
        noise_out = self.data / "WiderFace" / "WIDER_images_add_noise" / "train"
        generator = self.runs / "noise" / "G_final.pth"
        keys = [f"ENHANCE.ENHANCED_DIR={enhanced}", f"NOISE.BLUR_DIR={blurred}"]
        blur_images.main(["--mode", "el", *keys])
        if not generator.is_file():
            self._run("tools/train_noise.py", [
                "--resume", "auto", *keys, "NOISE.EPOCHS=1", "NOISE.EPOCHS_DECAY=1",
                "NOISE.NGF=16", "NOISE.NDF=16", f"RUN.OUTPUT_DIR={self.runs}", "RUN.NAME=noise",
                "RUN.NUM_WORKERS=0", "RUN.TENSORBOARD=False"], generator)
        synthesize_noise.main(["--weights", str(generator), "--workers", str(self.args.workers),
                               f"NOISE.WIDER_DIR={self.data / 'WIDER_train' / 'images'}",
                               f"NOISE.OUT_DIR={noise_out}"])
        return noise_out

    def pseudo_boxes(self, source: Path) -> Path:
        listing = self.data / "dark_pseudo_train.txt"
        if not listing.is_file():
            make_pseudo_boxes.main(["--weights", str(source), "--images",
                                    str(self.dark / "images_enhanced" / "train"), "--output",
                                    str(listing), "--mode", "single", "--workers", "0",
                                    f"FACE.DATA_ROOT={self.data}"])
        return listing

    def adapt(self, source: Path, pseudo: Path, noise_dir: Path) -> Path:
        steps = self.args.adapt_steps
        final = self.runs / "adapted" / f"ckpt_{steps}.pth"
        if not final.is_file():
            self._train([*self.common_opts(), f"MODEL.WEIGHTS={source}", "RUN.NAME=adapted",
                         f"FACE.TAR_TRAIN_FILE={pseudo}", f"SSL.NOISE_DIR={noise_dir}",
                         "SSL.LOAD_HEADS=False", "SSL.BATCH_SIZE=4",
                         f"SSL.NUM_WORKERS={min(self.args.workers, 1)}",
                         # the held-out images live in their own folder: nothing to filter
                         "DARKFACE.FILTER_TRAIN=False",
                         f"SOLVER.MAX_STEPS={steps}", "SOLVER.LR=2e-4", "SOLVER.WARMUP_ITERS=10",
                         f"SOLVER.LR_STEPS=[{steps * 4 // 5}]", "RUN.LOG_EVERY=20",
                         f"RUN.CKPT_EVERY={max(steps // 2, 1)}"], final)
        return final

    def _train(self, argv: list[str], final: Path) -> None:
        self._run("train.py", ["--resume", "auto", *argv], final)

    @staticmethod
    def _run(script: str, argv: list[str], final: Path) -> None:
        """A trainer as its own process; it must leave ``final`` behind."""
        rc = run_entry(script, argv)
        if rc != 0 or not final.is_file():
            raise SystemExit(f"{script} failed (exit code {rc}); see {final.parent / 'log.txt'}")

    # -- evaluation ---------------------------------------------------------------------------

    def detect(self, name: str, weights: Path, images: Path, enhancer: Path | None) -> Path:
        out = self.out / "pred" / name
        extra = ["--enhancer", str(enhancer)] if enhancer else ["--no-enhance"]
        rc = run_entry("test.py", ["--weights", str(weights), "--images", str(images), "--output",
                                   str(out), "--mode", "single", "--workers", "0",
                                   "--batch-size", "4", *extra])
        if rc != 0:
            raise SystemExit(f"test.py failed (exit code {rc}) on {weights}")
        return out

    def evaluate(self, source: Path, adapted: Path, enhancer: Path) -> dict:
        val, clean = self.dark / "images" / "val", self.dark / "clean" / "val"
        runs = {
            "source-only, dark images": self.detect("source_dark", source, val, None),
            "source-only + E(L)": self.detect("source_el", source, val, enhancer),
            "adapted (HLA) + E(L)": self.detect("adapted_el", adapted, val, enhancer),
            "source-only, clean originals": self.detect("source_clean", source, clean, None),
        }
        gt = self.dark / "label" / "val"
        results = {name: evaluate_darkface(gt, folder) for name, folder in runs.items()}
        plot_pr_curves(self.out / "pr_curves.png", [(
            "held-out demo images (AP at IoU 0.5)",
            [PRCurve(n, r["precision"], r["recall"]) for n, r in results.items()], [])])
        self.draw(runs)
        return {name: r["ap"] for name, r in results.items()}

    def draw(self, runs: dict) -> None:
        ids = sorted((p.stem for p in (self.dark / "label" / "val").glob("*.txt")), key=int)[:3]
        shown = [("source-only, dark images", "images"), ("adapted (HLA) + E(L)", "images")]
        panels, titles = [], []
        for name, folder in shown:
            for i in ids:
                rgb = read_rgb(self.dark / folder / "val" / f"{i}.png")
                # brightened for display only (the detector saw what its row name says)
                rgb = np.clip(rgb * (100.0 / max(rgb.mean(), 1.0)), 0, 255).astype(np.uint8)
                gt = read_darkface_gt_file(self.dark / "label" / "val" / f"{i}.txt")
                text = (runs[name] / f"{i}.txt").read_text().split()
                dets = np.array(text, dtype=np.float64).reshape(-1, 5)
                panels.append(draw_detections(rgb, dets, self.args.show_threshold, gt=gt))
                titles.append(f"{name} #{i}: {int((dets[:, 4] >= self.args.show_threshold).sum())}"
                              f" boxes >= {self.args.show_threshold} (green); faces in red")
        grid(panels, columns=len(ids), titles=titles).save(self.out / "detections.png")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("demo_out"))
    p.add_argument("--source-steps", type=int, default=300)
    p.add_argument("--adapt-steps", type=int, default=80)
    p.add_argument("--workers", type=int, default=2, help="data-loading processes")
    p.add_argument("--show-threshold", type=float, default=0.5)
    p.add_argument("--fresh", action="store_true", help="delete --out first")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging()          # the same handler the trainers install: no line is logged twice
    if args.fresh and args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    demo, start = Demo(args), time.time()
    with demo.stage("demo data"):
        demo.make_data()
    with demo.stage(f"source detector: DSFD x{WIDTH} on clean images, {args.source_steps} steps"):
        source = demo.train_source()
    with demo.stage("E(L): train the brightening network, brighten the dark training images"):
        enhancer = demo.train_enhancer()
    with demo.stage("D(H): noise synthesis on the clean images"):
        noise_dir = demo.synthesize_noise()
    with demo.stage("pseudo boxes on the brightened dark images"):
        pseudo = demo.pseudo_boxes(source)
    with demo.stage(f"joint high-low adaptation, {args.adapt_steps} steps"):
        adapted = demo.adapt(source, pseudo, noise_dir)
    with demo.stage("evaluate on the held-out dark images"):
        aps = demo.evaluate(source, adapted, enhancer)
    print("\nAP on the held-out demo images (DARK FACE protocol, IoU 0.5, single scale):")
    for name, ap in aps.items():
        print(f"  {name:30s} {ap:.4f}")
    print(f"\nPR curves: {args.out / 'pr_curves.png'}; detections: "
          f"{args.out / 'detections.png'}")
    print("stage times: " + ", ".join(f"{t:.0f} s" for _, t in demo.times)
          + f"; total {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
