"""The whole pipeline on the embedded demo data, on the CPU (``make demo``).

    python tools/demo.py [--out demo_out] [--fresh] [--source-steps N] [--adapt-steps N]
                         [--yunet yunet_n.pth] [--yunet-s yunet_s.pth]

DSFD on the demo data:

1. data: a small dataset from images that ship with scikit-image and matplotlib
   (tools/make_demo_data.py): clean WIDER-style images with exact face boxes, and DARK FACE-style
   images made by a simulated low-light degradation (data/lowlight.py).
2. source: a reduced-width DSFD trained on the clean images, detection loss only (train.py).
3. E(L): the brightening network trained without references on the dark training images, then
   applied to them (tools/train_enhancer.py, tools/enhance_images.py).
4. D(H): blurred E(L) -> E(L) pix2pix, then noise + blur + pix2pix on the clean images
   (tools/blur_images.py, tools/train_noise.py, tools/synthesize_noise.py).
5. pseudo boxes: the source detector on the brightened dark images (tools/make_pseudo_boxes.py).
6. HLA: joint training, detection plus the default self-supervised tasks (3x3 jigsaw on H and
   E(L), MoCo on E(L), MoCo across H / D(H)), from the source model (train.py).
7. pseudo-label adaptation (docs/DUAL_TEACHER.md): the main teacher (the source model fine-tuned
   on the clean images and their low-light copies), pseudo labels on the dark training images
   from it alone (PL) and fused with a complementary teacher of another architecture (the
   released YuNet, when present), then the students; and the control: the source model trained
   the same number of steps on the clean images alone, so that the table separates adaptation
   from extra training.
8. evaluation on the held-out dark images (the DARK FACE protocol) through the compare page
   (tools/compare_inference.py): ``demo_out/compare/compare.md`` (the table), ``pr_curves.png``,
   ``grid.png``; the drawn detections in ``demo_out/detections.png`` and the PR curves of the
   DSFD variants in ``demo_out/pr_curves.png``.

Real faces with the released YuNet (``--yunet``, default ``pretrained_weights/yunet_n.pth`` or
``../shared/data/yunet/yunet_n.pth``; without it the demo says where to get it and skips this
part):

9. real photographs that ship with the packages and their simulated low-light copies
   (data/real_photos.py); the released YuNet's detections on the clean photos (score >= 0.5) are
   the reference boxes; raw, with E(L), after HLA adaptation of YuNet, with pseudo labels (PL:
   YuNet alone; dual teacher: YuNet_n with YuNet_s), and the control; the table in
   ``demo_out/real/compare/compare.md``, the picture in ``demo_out/real_faces.png``.

Everything is small so the demo ends in minutes; the numbers show the pipeline working, not the
papers' results, and are printed as they come out even where a method does not help at this
scale. Each stage skips work whose output exists, so an interrupted demo resumes; ``--fresh``
starts over.
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
from data.real_photos import write_real_photo_set  # noqa: E402
from evaluation.common import PRCurve, plot_pr_curves  # noqa: E402
from evaluation.darkface import load_darkface_gt, read_darkface_gt_file  # noqa: E402
from tools import (blur_images, compare_inference, enhance_images, make_demo_data,  # noqa: E402
                   make_pseudo_boxes, synthesize_noise)
from utils.logger import setup_logging  # noqa: E402
from utils.visualize import draw_detections, grid  # noqa: E402

SIZE = 256          # training images are resized to SIZE x SIZE
WIDTH = 0.125       # DSFD channel multiplier
YUNET_SIZE = 256    # YuNet training input (square)
DSFD_THRESH = (0.05, 0.3)     # score, NMS: test.py's DSFD defaults (DETECT.*)
YUNET_THRESH = (0.02, 0.45)   # YuNet's released test setting (configs/models/yunet_n.yaml)
REFERENCE_SCORE = 0.5         # released YuNet on the clean photos: the reference boxes
SHARED_YUNET = ROOT.parent / "shared" / "data" / "yunet"


def run_entry(script: str, argv: list[str]) -> int:
    """Run one of the project's entry points (train.py, the trainers, the pseudo-label tool) as
    its own process, exactly as a user runs it; its output goes to this terminal."""
    return subprocess.run([sys.executable, str(ROOT / script), *argv], cwd=ROOT).returncode


def find_weights(given: Path | None, name: str) -> Path | None:
    """``given``, else ``pretrained_weights/<name>``, else ``../shared/data/yunet/<name>``."""
    for path in ([given] if given else []) + [ROOT / "pretrained_weights" / name,
                                               SHARED_YUNET / name]:
        if path is not None and path.is_file():
            return path
    return None


class Demo:
    def __init__(self, args):
        self.args = args
        self.out = args.out.resolve()          # list files written below hold absolute paths
        self.data = self.out / "data"
        self.runs = self.out / "runs"
        self.dark = self.data / "DarkFace"
        self.times: list[tuple[str, float]] = []
        self.yunet = find_weights(args.yunet, "yunet_n.pth")
        self.yunet_s = find_weights(args.yunet_s, "yunet_s.pth")

    @contextlib.contextmanager
    def stage(self, title: str):
        print(f"\n=== {len(self.times) + 1}. {title} ===", flush=True)
        start = time.time()
        yield
        self.times.append((title, time.time() - start))
        print(f"--- {title}: {self.times[-1][1]:.0f} s", flush=True)

    # -- DSFD stages --------------------------------------------------------------------------

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

    @staticmethod
    def schedule(steps: int, lr: float, warmup: int = 10, checkpoints: int = 2) -> list[str]:
        return [f"SOLVER.MAX_STEPS={steps}", f"SOLVER.LR={lr}", f"SOLVER.WARMUP_ITERS={warmup}",
                f"SOLVER.LR_STEPS=[{steps * 4 // 5}]", f"RUN.LOG_EVERY={max(steps // 6, 1)}",
                f"RUN.CKPT_EVERY={max(steps // checkpoints, 1)}"]

    def train_source(self) -> Path:
        steps = self.args.source_steps
        final = self.runs / "source" / f"ckpt_{steps}.pth"
        if not final.is_file():
            self._train(["--config", str(ROOT / "configs" / "detection_only.yaml"),
                         *self.common_opts(), "MODEL.WEIGHTS=''", "RUN.NAME=source",
                         *self.schedule(steps, 1e-3, warmup=20, checkpoints=3)], final)
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
                "NOISE.NGF=16", "NOISE.NDF=16", f"RUN.OUTPUT_DIR={self.runs}",
                "RUN.NAME=noise", "RUN.NUM_WORKERS=0", "RUN.TENSORBOARD=False"], generator)
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

    def hla_opts(self, pseudo: Path, noise_dir: Path) -> list[str]:
        return [f"FACE.TAR_TRAIN_FILE={pseudo}", f"SSL.NOISE_DIR={noise_dir}",
                "SSL.LOAD_HEADS=False", "SSL.BATCH_SIZE=4",
                f"SSL.NUM_WORKERS={min(self.args.workers, 1)}",
                # the held-out images live in their own folder: nothing to filter
                "DARKFACE.FILTER_TRAIN=False"]

    def adapt(self, source: Path, pseudo: Path, noise_dir: Path) -> Path:
        steps = self.args.adapt_steps
        final = self.runs / "adapted" / f"ckpt_{steps}.pth"
        if not final.is_file():
            self._train([*self.common_opts(), f"MODEL.WEIGHTS={source}", "RUN.NAME=adapted",
                         *self.hla_opts(pseudo, noise_dir), *self.schedule(steps, 2e-4)], final)
        return final

    def control(self, source: Path) -> Path:
        """The same number of steps as each adaptation, on the clean images alone."""
        steps = self.args.adapt_steps
        final = self.runs / "control" / f"ckpt_{steps}.pth"
        if not final.is_file():
            self._train(["--config", str(ROOT / "configs" / "detection_only.yaml"),
                         *self.common_opts(), f"MODEL.WEIGHTS={source}", "RUN.NAME=control",
                         *self.schedule(steps, 2e-4)], final)
        return final

    def main_teacher(self, source: Path) -> Path:
        """The source model fine-tuned on the clean images, each replaced by its low-light copy
        with probability 0.5 (configs/teacher_main.yaml)."""
        steps = self.args.teacher_steps
        final = self.runs / "teacher_main" / f"ckpt_{steps}.pth"
        if not final.is_file():
            self._train(["--config", str(ROOT / "configs" / "teacher_main.yaml"),
                         *self.common_opts(), f"MODEL.WEIGHTS={source}",
                         *self.schedule(steps, 2e-4)], final)
        return final

    def pseudo_labels(self, name: str, teachers: list[str]) -> Path:
        """tools/make_pseudo_labels.py on the raw dark training images (flip, WBF)."""
        out = self.data / "pseudo" / name
        listing = out / "pseudo_labels.txt"
        if not listing.is_file():
            rc = run_entry("tools/make_pseudo_labels.py", [
                *[a for t in teachers for a in ("--teacher", t)],
                "--images", str(self.dark / "images" / "train"), "--out", str(out), "--flip",
                "--fusion", "wbf", "--score-thresh", "0.3", "--workers", "0",
                f"FACE.DATA_ROOT={self.data}"])
            if rc != 0 or not listing.is_file():
                raise SystemExit(f"tools/make_pseudo_labels.py failed (exit code {rc})")
        return listing

    def student(self, name: str, teacher: Path, listing: Path, preset: str,
                extra: list[str] = ()) -> Path:
        """A pseudo-label student from the main teacher (configs/adapt_*.yaml)."""
        steps = self.args.adapt_steps
        final = self.runs / name / f"ckpt_{steps}.pth"
        if not final.is_file():
            self._train(["--config", str(ROOT / "configs" / preset), *self.common_opts(),
                         f"MODEL.WEIGHTS={teacher}", f"RUN.NAME={name}",
                         f"PSEUDO.LIST={listing}", "PSEUDO.BATCH_SIZE=8",
                         *self.schedule(steps, 2e-4), *extra], final)
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

    def compare(self, rows: list[tuple], images: list[Path], gt_dir: Path, enhancer: Path,
                out: Path) -> tuple[dict, dict]:
        """The compare page (tools/compare_inference.py) of ``rows`` = (label, MODEL.NAME,
        weights, enhance or None); returns ({label: AP}, the page's numbers)."""
        detectors = []
        for label, name, weights, enhance in rows:
            score, nms = YUNET_THRESH if name.startswith("yunet") else DSFD_THRESH
            spec = f"ours:{name}:{weights}" + (f":enhance={enhance}" if enhance else "") + \
                f":label={label}"
            detectors.append(compare_inference.build_detector(spec, score, nms, enhancer))
        gt = load_darkface_gt(gt_dir, [p.stem for p in images])
        result = compare_inference.compare(detectors, images, gt=gt, out_dir=out,
                                           grid_images=3, draw_thresh=self.args.show_threshold)
        return {r["label"]: next(iter(r["ap"].values())) for r in result["detectors"]}, result

    def draw(self, result: dict, rows: list[str], images: list[Path], gt_dir: Path | None,
             path: Path) -> None:
        """Detections of ``rows`` on ``images`` (brightened for display only)."""
        panels, titles = [], []
        for label in rows:
            preds = result["predictions"][label]
            for image in images:
                rgb = read_rgb(image)
                rgb = np.clip(rgb * (100.0 / max(rgb.mean(), 1.0)), 0, 255).astype(np.uint8)
                gt = read_darkface_gt_file(gt_dir / f"{image.stem}.txt") if gt_dir else None
                dets = preds[image.stem]
                panels.append(draw_detections(rgb, dets, self.args.show_threshold, gt=gt))
                titles.append(f"{label} {image.stem}: "
                              f"{int((dets[:, 4] >= self.args.show_threshold).sum())} boxes >= "
                              f"{self.args.show_threshold} (green); reference in red")
        grid(panels, columns=len(images), titles=titles).save(path)

    def dsfd_table(self, models: dict, enhancer: Path) -> dict:
        val = sorted((self.dark / "images" / "val").glob("*.png"), key=lambda p: int(p.stem))
        clean = sorted((self.dark / "clean" / "val").glob("*.png"), key=lambda p: int(p.stem))
        gt = self.dark / "label" / "val"
        rows = [("source-only, dark", "dsfd_vgg", models["source"], None),
                ("source-only + E(L)", "dsfd_vgg", models["source"], "el"),
                ("control (+ steps on clean) + E(L)", "dsfd_vgg", models["control"], "el"),
                ("HLA + E(L)", "dsfd_vgg", models["hla"], "el"),
                ("main teacher (clean + low-light copies), dark", "dsfd_vgg",
                 models["teacher"], None),
                ("PL student, dark", "dsfd_vgg", models["pl"], None)]
        if "dual" in models:
            rows.append(("dual-teacher student, dark", "dsfd_vgg", models["dual"], None))
        if self.yunet is not None:
            rows += [("released YuNet_n, dark", "yunet_n", self.yunet, None),
                     ("released YuNet_n + E(L)", "yunet_n", self.yunet, "el")]
        aps, result = self.compare(rows, val, gt, enhancer, self.out / "compare")
        self.draw(result, ["source-only, dark", "HLA + E(L)"], val[:3], gt,
                  self.out / "detections.png")
        plot_pr_curves(self.out / "pr_curves.png", [(
            "held-out demo images (AP at IoU 0.5)",
            [PRCurve(label, *result["curves"][label][next(iter(result["curves"][label]))])
             for label in aps], [])])
        ref, _ = self.compare([("source-only, clean originals", "dsfd_vgg", models["source"],
                                None)], clean, gt, enhancer, self.out / "compare_clean")
        return {**aps, **ref}

    # -- real faces: the released YuNet ---------------------------------------------------------

    def yunet_opts(self) -> list[str]:
        return ["MODEL.NAME=yunet_n", f"FACE.SRC_TRAIN_FILE={self.data / 'wider_face_train.txt'}",
                f"FACE.DATA_ROOT={self.data}", f"YUNET.INPUT_SIZE={YUNET_SIZE}",
                "SOLVER.BATCH_SIZE=8", f"RUN.OUTPUT_DIR={self.runs}",
                f"RUN.NUM_WORKERS={self.args.workers}", "RUN.TENSORBOARD=False"]

    def yunet_run(self, name: str, steps: int, extra: list[str], weights: Path | None = None
                  ) -> Path:
        final = self.runs / name / f"ckpt_{steps}.pth"
        if not final.is_file():
            self._train([*extra, *self.yunet_opts(), f"MODEL.WEIGHTS={weights or self.yunet}",
                         f"RUN.NAME={name}", *self.schedule(steps, 1e-4, warmup=5)], final)
        return final

    def real_faces(self, pseudo: Path, noise_dir: Path, enhancer: Path) -> dict:
        """Released YuNet on real photos and their low-light copies: raw, E(L), HLA, PL,
        dual teacher, control."""
        real = self.out / "real"
        photos = write_real_photo_set(real, seed=0, copies=self.args.real_copies)
        labels = real / "label"
        self.reference_boxes(photos["clean"], labels)
        steps = self.args.yunet_steps
        detection_only = ["--config", str(ROOT / "configs" / "detection_only.yaml")]
        models = {
            "control": self.yunet_run("yunet_control", steps, detection_only),
            "hla": self.yunet_run("yunet_hla", steps, self.hla_opts(pseudo, noise_dir)),
        }
        pl = self.pseudo_labels("yunet_single", [f"{self.yunet}:yunet_n:1"])
        models["pl"] = self.yunet_run("yunet_pl", steps, [
            "--config", str(ROOT / "configs" / "adapt_pl.yaml"), f"PSEUDO.LIST={pl}",
            "PSEUDO.BATCH_SIZE=8"])
        if self.yunet_s is not None:
            dual = self.pseudo_labels("yunet_dual", [f"{self.yunet}:yunet_n:1",
                                                     f"{self.yunet_s}:yunet_s:1"])
            models["dual"] = self.yunet_run("yunet_dual", steps, [
                "--config", str(ROOT / "configs" / "adapt_dual_teacher.yaml"),
                f"PSEUDO.LIST={dual}", "PSEUDO.BATCH_SIZE=8",
                f"EMA.REFRESH_AFTER={steps // 2}"])
        rows = [("released YuNet_n, dark", "yunet_n", self.yunet, None),
                ("released YuNet_n + E(L)", "yunet_n", self.yunet, "el"),
                ("control (+ steps on demo clean) + E(L)", "yunet_n", models["control"], "el"),
                ("HLA + E(L)", "yunet_n", models["hla"], "el"),
                ("PL student, dark", "yunet_n", models["pl"], None)]
        if "dual" in models:
            rows.append(("dual-teacher student, dark", "yunet_n", models["dual"], None))
        aps, result = self.compare(rows, photos["dark"], labels, enhancer, real / "compare")
        shown = [p for p in photos["dark"] if p.stem.endswith("_0")]
        self.draw(result, ["released YuNet_n, dark", "HLA + E(L)"], shown, labels,
                  self.out / "real_faces.png")
        return aps

    def reference_boxes(self, clean: list[Path], labels: Path) -> None:
        """The released YuNet on the clean photos (score >= REFERENCE_SCORE), written as DARK
        FACE labels of every low-light copy."""
        if labels.is_dir() and any(labels.iterdir()):
            return
        labels.mkdir(parents=True, exist_ok=True)
        det = compare_inference.build_detector(f"ours:yunet_n:{self.yunet}", *YUNET_THRESH)
        for path in clean:
            dets = det.run(read_rgb(path))
            boxes = dets[dets[:, 4] >= REFERENCE_SCORE, :4]
            text = f"{len(boxes)}\n" + "".join(" ".join(f"{v:.1f}" for v in b) + "\n"
                                                for b in boxes)
            for k in range(self.args.real_copies):
                (labels / f"{path.stem}_{k}.txt").write_text(text)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("demo_out"))
    p.add_argument("--source-steps", type=int, default=300)
    p.add_argument("--adapt-steps", type=int, default=60,
                   help="steps of every adaptation run and of the control")
    p.add_argument("--teacher-steps", type=int, default=30,
                   help="main teacher: steps on clean + low-light copies after the source")
    p.add_argument("--yunet-steps", type=int, default=40, help="YuNet adaptation runs")
    p.add_argument("--real-copies", type=int, default=3,
                   help="low-light copies of each real photo")
    p.add_argument("--yunet", type=Path, default=None, help="released yunet_n.pth")
    p.add_argument("--yunet-s", type=Path, default=None, help="released yunet_s.pth")
    p.add_argument("--workers", type=int, default=2, help="data-loading processes")
    p.add_argument("--show-threshold", type=float, default=0.5)
    p.add_argument("--fresh", action="store_true", help="delete --out first")
    return p.parse_args(argv)


def print_table(title: str, aps: dict) -> None:
    print(f"\n{title}")
    for name, ap in aps.items():
        print(f"  {name:48s} {ap:.4f}")


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
    with demo.stage("pseudo boxes on the brightened dark images (for the HLA tasks)"):
        pseudo = demo.pseudo_boxes(source)
    models = {"source": source}
    with demo.stage(f"joint high-low adaptation (HLA), {args.adapt_steps} steps"):
        models["hla"] = demo.adapt(source, pseudo, noise_dir)
    with demo.stage(f"control: {args.adapt_steps} more steps on the clean images"):
        models["control"] = demo.control(source)
    with demo.stage("pseudo-label adaptation: main teacher, pseudo labels, students"):
        models["teacher"] = demo.main_teacher(source)
        single = demo.pseudo_labels("single", [str(models["teacher"])])
        models["pl"] = demo.student("pl", models["teacher"], single, "adapt_pl.yaml")
        if demo.yunet is not None:
            dual = demo.pseudo_labels("dual", [str(models["teacher"]),
                                               f"{demo.yunet}:yunet_n:1"])
            models["dual"] = demo.student("dual", models["teacher"], dual,
                                          "adapt_dual_teacher.yaml",
                                          [f"EMA.REFRESH_AFTER={args.adapt_steps // 2}"])
        else:
            print("no released YuNet (the complementary teacher): the dual-teacher student is "
                  "skipped; see pretrained_weights/README.md")
    with demo.stage("evaluate on the held-out dark images (compare page)"):
        aps = demo.dsfd_table(models, enhancer)
    print_table("AP on the held-out demo images (DARK FACE protocol, IoU 0.5, single scale):",
                aps)
    if demo.yunet is not None:
        with demo.stage(f"real faces: the released YuNet, {args.yunet_steps}-step adaptations"):
            real = demo.real_faces(pseudo, noise_dir, enhancer)
        print_table("AP on low-light copies of real photos (reference: the released YuNet on "
                    f"the clean photos, score >= {REFERENCE_SCORE}; IoU 0.5):", real)
        print(f"real-face detections: {args.out / 'real_faces.png'}; table: "
              f"{args.out / 'real' / 'compare' / 'compare.md'}")
    else:
        print("\nthe released YuNet weights were not found (pretrained_weights/yunet_n.pth or "
              f"{SHARED_YUNET}): the real-face part is skipped. Get yunet_n.pth (and yunet_s.pth) "
              "from the libfacedetection.train repository's weights/ folder "
              "(pretrained_weights/README.md) and run the demo again.")
    print(f"\ncompare page: {args.out / 'compare' / 'compare.md'}; PR curves: "
          f"{args.out / 'pr_curves.png'}; detections: {args.out / 'detections.png'}")
    print("stage times: " + ", ".join(f"{t:.0f} s" for _, t in demo.times)
          + f"; total {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
