"""The whole pipeline on the CPU (``make demo``): real faces in the dark first, then the toy.

    python tools/demo.py [--out demo_out] [--full] [--jobs 2] [--seed 0] [--fresh]
                         [--source-steps N] [--adapt-steps N] [--teacher-steps N]
                         [--yunet-steps N] [--levels L2,L4,L5] [--noise-seeds 3]
                         [--train-seeds 2]
                         [--yunet yunet_n.pth] [--yunet-s yunet_s.pth]

Part 1, real faces in the dark (needs the released YuNet: ``--yunet``, default
``pretrained_weights/yunet_n.pth`` or ``../shared/data/yunet/yunet_n.pth``; without it the part
says where to get the weights and is skipped; tools/demo_real.py):

1. real photographs with labelled faces (``../shared/data/dlib_faces``, else the photos that
   ship with the packages) darkened by the camera model (data/camera.py, ``darkface`` preset) at
   the night benchmark's levels, with a few noise seeds; the released YuNet_n raw, with gamma,
   with CLAHE and with the night mode (``lowlevel/enhancers.py`` ``auto``); AP per level as
   ``mean ± half range over the noise seeds`` (table ``demo_out/real/night_mode.md``, picture
   ``demo_out/real_night_mode.png``).

Part 2, DSFD on the toy demo data (tools/make_demo_data.py: faces pasted on textures, dark copies
by the toy low-light simulation data/lowlight.py):

2. data; 3. source: a reduced-width DSFD trained on the clean images (train.py);
4. E(L): the brightening network trained on the dark training images, then applied to the dark
   training and held-out images (tools/train_enhancer.py, tools/enhance_images.py);
5. D(H): blurred E(L) -> E(L) pix2pix, then noise + blur + pix2pix on the clean images;
6. pseudo boxes: the source detector on the brightened dark images (for the HLA tasks);
7. HLA: joint training, detection plus the default self-supervised tasks;
8. control: as many steps on the clean images alone (separates adaptation from extra training);
9. pseudo-label adaptation (docs/DUAL_TEACHER.md): the main teacher (clean images and their
   low-light copies), pseudo labels on the raw dark training images from it alone (PL) and fused
   with the released YuNet (dual teacher), the students;
10. evaluation on the held-out dark images (the DARK FACE protocol) through the compare page
    (tools/compare_inference.py): ``demo_out/compare/compare.md``, ``pr_curves.png``,
    ``detections.png``. E(L) runs once per image and is shared by the rows that use it.

Part 3, YuNet adapted (needs the released YuNet):

11. YuNet adaptations on the toy dark images: control, HLA, PL (YuNet_n alone), dual teacher
    (YuNet_n with YuNet_s); the control and the students (seconds each) once per training seed
    (``--train-seeds``, 2), HLA once;
12. the part-1 photos again at its two darkest levels (first noise seed): the released YuNet_n
    raw, with the night mode and with E(L), and the adapted models (``demo_out/real/adapted.md``,
    ``demo_out/real_faces.png``); rows with several seeds show mean ± half range.

Speed: each stage prints its wall and CPU time, and a table of all at the end. Independent
stages run side by side (``--jobs``, default 2 = the cores of the target machine), each with
``cores / jobs`` torch threads: small networks use one core far better than two. The default is
the short demo (a few minutes of CPU per core; the numbers separate where they separate);
``--full`` restores the long settings of the earlier demo (300 source steps, 60-step
adaptations, 40-step YuNet runs, 5 darkness levels, 3 noise seeds).

Results are cached in folders named by a digest of the settings that made them
(utils/stages.py): an interrupted demo resumes, a re-run with other settings recomputes only
what they change; ``--fresh`` starts over (do it after changing the project's code).

Repeatable: the data, the darkening and every training run are seeded (``--seed``: the data and
RUN.SEED), the loaders seed their workers from RUN.SEED, every process uses a fixed number of
torch threads. The same machine and settings give the same numbers; another CPU (other SIMD
kernels), another torch or another ``--jobs`` (other thread counts, other float summation order)
can move the trained rows by a few hundredths of AP. The trained rows come from one seed each:
the DSFD table prints the spread measured between runs, the YuNet rows train with a few seeds
and show their spread, and part 1 shows the spread over camera-noise seeds, so that a difference
inside a spread is not read as a gain.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import shutil
import time
from pathlib import Path

import cv2
import numpy as np

from tools import demo_real
from utils.stages import (Stage, is_done, keyed_dir, last_cpu, mark_done,
                          process_cpu, python, run_process, run_stages, stage_table)

ROOT = Path(__file__).resolve().parents[1]

SIZE = 256          # DSFD training images are resized to SIZE x SIZE
WIDTH = 0.125       # DSFD channel multiplier
YUNET_SIZE = 256    # YuNet training input (square)
DSFD_THRESH = (0.05, 0.3)     # score, NMS: test.py's DSFD defaults (DETECT.*)
SHARED = Path(os.environ.get("HLA_SHARED_DATA", ROOT.parent / "shared" / "data"))   # as the tests
ENHANCERS = ("none", "gamma", "clahe", "auto")    # part 1's columns (lowlevel/enhancers.py)

# The two lengths of the demo; the command-line knobs override single values.
SETTINGS = {
    "short": dict(source_steps=160, adapt_steps=30, teacher_steps=20, yunet_steps=20,
                  n_train=160, n_val=0, n_dark_train=48, n_dark_val=40, levels="L2,L4,L5",
                  noise_seeds=3, train_seeds=2),
    "full": dict(source_steps=300, adapt_steps=60, teacher_steps=30, yunet_steps=40,
                 n_train=160, n_val=40, n_dark_train=60, n_dark_val=40,
                 levels="L1,L2,L3,L4,L5", noise_seeds=3, train_seeds=3),
}
# Run-to-run spread of the trained DSFD rows measured between two fresh runs of the earlier
# (full-length) demo on two machines (issue 18): control 0.345 / 0.382, HLA 0.362 / 0.371,
# source + E(L) 0.330 / 0.297, main teacher 0.623 / 0.551.
DSFD_RUN_SPREAD = 0.07


def find_weights(given: Path | None, name: str) -> Path | None:
    """``given``, else ``pretrained_weights/<name>``, else ``../shared/data/yunet/<name>``."""
    for path in ([given] if given else []) + [ROOT / "pretrained_weights" / name,
                                               SHARED / "yunet" / name]:
        if path is not None and path.is_file():
            return path
    return None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("demo_out"))
    p.add_argument("--full", action="store_true", help="the long demo (the earlier settings)")
    p.add_argument("--jobs", type=int, default=2, help="stages run side by side (default 2)")
    p.add_argument("--seed", type=int, default=0, help="data seed and RUN.SEED of every run")
    for name, about in (("source-steps", "source DSFD steps"),
                        ("adapt-steps", "steps of every DSFD adaptation run and the control"),
                        ("teacher-steps", "main teacher: steps after the source"),
                        ("yunet-steps", "steps of every YuNet adaptation run"),
                        ("noise-seeds", "camera-noise seeds per real photo and level"),
                        ("train-seeds", "training seeds of the YuNet control and students")):
        p.add_argument(f"--{name}", type=int, default=None, help=f"{about} (default: by length)")
    p.add_argument("--levels", default=None,
                   help=f"darkness levels of the real photos, of {','.join(demo_real.LEVELS)}")
    p.add_argument("--yunet", type=Path, default=None, help="released yunet_n.pth")
    p.add_argument("--yunet-s", type=Path, default=None, help="released yunet_s.pth")
    p.add_argument("--show-threshold", type=float, default=0.5)
    p.add_argument("--fresh", action="store_true", help="delete --out first")
    args = p.parse_args(argv)
    for key, value in SETTINGS["full" if args.full else "short"].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.levels = [s.strip() for s in str(args.levels).split(",") if s.strip()]
    bad = [lv for lv in args.levels if lv not in demo_real.LEVELS]
    if bad or not args.levels:
        p.error(f"--levels: unknown level(s) {bad}; known: {', '.join(demo_real.LEVELS)}")
    for key in ("jobs", "noise_seeds", "train_seeds", "source_steps", "adapt_steps",
                "teacher_steps", "yunet_steps"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1")
    return args


def threads_per_job(jobs: int) -> int:
    return max(1, min(os.cpu_count() or 1, 2) // max(1, jobs)) if jobs > 1 else \
        min(os.cpu_count() or 1, 2)


class Demo:
    """The stages; every step's results live in a keyed folder under ``out/cache``."""

    def __init__(self, args):
        self.args = args
        self.out = args.out.resolve()
        self.cache = self.out / "cache"
        self.logs = self.out / "logs"
        self.yunet = find_weights(args.yunet, "yunet_n.pth")
        self.yunet_s = find_weights(args.yunet_s, "yunet_s.pth")
        self.threads = threads_per_job(args.jobs)
        self.env = {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        self.p: dict[str, Path] = {}          # products of the stages (paths)
        self.tables: dict[str, str] = {}

    # -- running one step -------------------------------------------------------------------

    def step(self, name: str, script: str, argv: list, product: str = "",
             restart: bool = False) -> Path:
        """Run ``script argv`` once per key: ``{dir}`` in ``argv`` is the step's keyed folder
        (key: the script and ``argv`` before the substitution). An unfinished folder is resumed
        by the script (trainers: ``--resume auto``; image tools skip what exists), or emptied
        first with ``restart``. Returns the folder, or ``folder/product`` when given."""
        folder = keyed_dir(self.cache, name, [script, [str(a) for a in argv]])
        if restart and folder.exists() and not is_done(folder):
            shutil.rmtree(folder)
        if not is_done(folder):
            folder.mkdir(parents=True, exist_ok=True)
            argv = [str(a).replace("{dir}", str(folder)) for a in argv]
            log = self.logs / f"{folder.name}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            rc = run_process(python(ROOT / script, argv), log=log, env=self.env, cwd=ROOT)
            if rc != 0:
                tail = "".join(log.read_text().splitlines(True)[-15:])
                raise SystemExit(f"{script} failed (exit code {rc}); log {log}:\n{tail}")
            if product and not (folder / product).exists():
                raise SystemExit(f"{script} ended without writing {folder / product}; log {log}")
            mark_done(folder, [script, argv])
            print(f"    {name}: {script} done in {time.perf_counter() - start:.0f} s wall, "
                  f"{last_cpu():.0f} s CPU (log {log})", flush=True)
        else:
            print(f"    {name}: cached in {folder}", flush=True)
        return folder / product if product else folder

    # -- part 1: real faces in the dark -----------------------------------------------------

    def real_set(self):
        if "real_set" not in self.p:
            self.p["real_set"] = demo_real.real_set(SHARED, self.out / "real", self.yunet)
        return self.p["real_set"]

    def night_mode(self) -> None:
        """Released YuNet_n on the darkened photos: raw, gamma, CLAHE, night mode (auto)."""
        from lowlevel.enhancers import build_enhancer
        rs, seeds = self.real_set(), range(self.args.noise_seeds)
        print(f"photos: {rs.name}; faces scored at IoU {rs.iou}; camera model darkface preset")
        detectors = {e: demo_real.yunet_detector("yunet_n", self.yunet, build_enhancer(e))
                     for e in ENHANCERS}
        rows, shown = [], {}
        for level in ["clean", *self.args.levels]:
            aps = {e: [] for e in ENHANCERS}
            lumas = []
            for s in ([0] if level == "clean" else seeds):
                paths = demo_real.darkened(rs, level, s, self.out / "real" / "levels")
                lumas.append(demo_real.mean_luma(paths))
                for e, det in detectors.items():
                    dets = demo_real.detect_all(det, paths)
                    aps[e].append(demo_real.average_precision(rs, dets))
                    if level == self.args.levels[-1] and s == 0 and e in ("none", "auto"):
                        shown[e], shown["paths"] = dets, paths
            note = demo_real.LEVEL_NOTES.get(level, "the photos as they are")
            rows.append([f"{level} ({note})", f"{np.mean(lumas):.1f}",
                         *[demo_real.spread_cell(aps[e]) for e in ENHANCERS]])
        header = ["level", "mean luma", *[f"YuNet_n {e}" for e in ENHANCERS]]
        table = demo_real.markdown_table(header, rows)
        self.tables["night_mode"] = (
            f"Released YuNet_n on {rs.name}, darkened by the camera model; AP at IoU {rs.iou} "
            f"(DARK FACE protocol), mean ± half range over {len(seeds)} noise seeds:\n\n{table}")
        (self.out / "real").mkdir(parents=True, exist_ok=True)
        (self.out / "real" / "night_mode.md").write_text(self.tables["night_mode"] + "\n")
        print(self.tables["night_mode"], flush=True)
        demo_real.draw_pair(rs, {"raw": shown["none"], "night mode": shown["auto"]},
                            shown["paths"], range(min(3, len(rs.paths))),
                            self.out / "real_night_mode.png", self.args.show_threshold)

    # -- part 2: DSFD on the toy data -------------------------------------------------------

    def make_data(self) -> None:
        a = self.args
        self.p["data"] = self.step("data", "tools/make_demo_data.py", [
            "--out", "{dir}/data", "--seed", a.seed, "--n-train", a.n_train, "--n-val", a.n_val,
            "--n-dark-train", a.n_dark_train, "--n-dark-val", a.n_dark_val], "data",
            restart=True)
        self.p["dark"] = self.p["data"] / "DarkFace"

    def common_opts(self) -> list[str]:
        data = self.p["data"]
        return [f"MODEL.WIDTH={WIDTH}", f"FACE.SRC_TRAIN_FILE={data / 'wider_face_train.txt'}",
                f"FACE.DATA_ROOT={data}", f"AUG.resize_width={SIZE}",
                f"AUG.resize_height={SIZE}", "SOLVER.BATCH_SIZE=8", "SOLVER.OPTIMIZER=adamw",
                "SOLVER.WEIGHT_DECAY=1e-4", f"RUN.SEED={self.args.seed}",
                "RUN.NUM_WORKERS=0", "RUN.TENSORBOARD=False"]

    @staticmethod
    def schedule(steps: int, lr: float, warmup: int = 10, checkpoints: int = 2) -> list[str]:
        return [f"SOLVER.MAX_STEPS={steps}", f"SOLVER.LR={lr}", f"SOLVER.WARMUP_ITERS={warmup}",
                f"SOLVER.LR_STEPS=[{steps * 4 // 5}]", f"RUN.LOG_EVERY={max(steps // 6, 1)}",
                f"RUN.CKPT_EVERY={max(steps // checkpoints, 1)}"]

    def train(self, name: str, argv: list, steps: int) -> Path:
        """train.py into the keyed folder ``{dir}/run``; returns the final checkpoint."""
        return self.step(name, "train.py", ["--resume", "auto", *argv, "RUN.OUTPUT_DIR={dir}",
                                            "RUN.NAME=run"], f"run/ckpt_{steps}.pth")

    def preset(self, name: str) -> list[str]:
        return ["--config", str(ROOT / "configs" / name)]

    def train_source(self) -> None:
        steps = self.args.source_steps
        self.p["source"] = self.train("source", [
            *self.preset("detection_only.yaml"), *self.common_opts(), "MODEL.WEIGHTS=''",
            *self.schedule(steps, 1e-3, warmup=20, checkpoints=3)], steps)

    def train_enhancer(self) -> None:
        dark = self.p["dark"]
        run = self.step("enhancer", "tools/train_enhancer.py", [
            "--resume", "auto", f"ENHANCE.TRAIN_DIR={dark / 'images' / 'train'}",
            "ENHANCE.EPOCHS=2", "ENHANCE.SIZE=128", "RUN.OUTPUT_DIR={dir}", "RUN.NAME=run",
            f"RUN.SEED={self.args.seed}", "RUN.NUM_WORKERS=0", "RUN.TENSORBOARD=False"])
        self.p["el"] = run / "run" / "enhancer_final.pth"
        for split in ("train", "val"):
            self.p[f"el_{split}"] = self.step(f"enhanced_{split}", "tools/enhance_images.py", [
                "--weights", self.p["el"], "--input", dark / "images" / split,
                "--output", "{dir}/images", "--workers", "0"], "images")

    def synthesize_noise(self) -> None:
        keys = [f"ENHANCE.ENHANCED_DIR={self.p['el_train']}"]
        blurred = self.step("blur", "tools/blur_images.py", [
            "--mode", "el", "--workers", "0", *keys, "NOISE.BLUR_DIR={dir}/images"], "images")
        keys.append(f"NOISE.BLUR_DIR={blurred}")
        gen = self.step("noise", "tools/train_noise.py", [
            "--resume", "auto", *keys, "NOISE.EPOCHS=1", "NOISE.EPOCHS_DECAY=1", "NOISE.NGF=16",
            "NOISE.NDF=16", "RUN.OUTPUT_DIR={dir}", "RUN.NAME=run", f"RUN.SEED={self.args.seed}",
            "RUN.NUM_WORKERS=0", "RUN.TENSORBOARD=False"], "run/G_final.pth")
        self.p["noise"] = self.step("noise_images", "tools/synthesize_noise.py", [
            "--weights", gen, "--workers", "0",
            f"NOISE.WIDER_DIR={self.p['data'] / 'WIDER_train' / 'images'}",
            "NOISE.OUT_DIR={dir}/images"], "images")

    def pseudo_boxes(self) -> None:
        self.p["pseudo"] = self.step("pseudo_boxes", "tools/make_pseudo_boxes.py", [
            "--weights", self.p["source"], "--images", self.p["el_train"],
            "--output", "{dir}/dark_pseudo_train.txt", "--mode", "single", "--workers", "0",
            f"FACE.DATA_ROOT={self.p['data']}"], "dark_pseudo_train.txt")

    def hla_opts(self) -> list[str]:
        return [f"FACE.TAR_TRAIN_FILE={self.p['pseudo']}", f"SSL.NOISE_DIR={self.p['noise']}",
                "SSL.LOAD_HEADS=False", "SSL.BATCH_SIZE=4", "SSL.NUM_WORKERS=0",
                # the held-out images live in their own folder: nothing to filter
                "DARKFACE.FILTER_TRAIN=False"]

    def adapt(self) -> None:
        steps = self.args.adapt_steps
        self.p["hla"] = self.train("hla", [*self.common_opts(), f"MODEL.WEIGHTS={self.p['source']}",
                                           *self.hla_opts(), *self.schedule(steps, 2e-4)], steps)

    def control(self) -> None:
        """The same number of steps as each adaptation, on the clean images alone."""
        steps = self.args.adapt_steps
        self.p["control"] = self.train("control", [
            *self.preset("detection_only.yaml"), *self.common_opts(),
            f"MODEL.WEIGHTS={self.p['source']}", *self.schedule(steps, 2e-4)], steps)

    def pseudo_labels(self, name: str, teachers: list[str]) -> Path:
        """tools/make_pseudo_labels.py on the raw dark training images (flip, WBF)."""
        return self.step(name, "tools/make_pseudo_labels.py", [
            *[a for t in teachers for a in ("--teacher", t)],
            "--images", self.p["dark"] / "images" / "train", "--out", "{dir}/labels", "--flip",
            "--fusion", "wbf", "--score-thresh", "0.3", "--workers", "0",
            f"FACE.DATA_ROOT={self.p['data']}"], "labels/pseudo_labels.txt")

    @staticmethod
    def pseudo_opts(listing: Path) -> list[str]:
        """PSEUDO.LIST and a batch no larger than the number of images the teachers labelled
        (a weak teacher on the toy data may label only a few); [] when they labelled none."""
        labelled, pending = 0, False
        for line in listing.read_text().splitlines():
            if line.startswith("# "):                    # an image: "# path W H"
                pending = True
            elif line.strip() and not line.startswith("#") and pending:
                labelled, pending = labelled + 1, False
        if labelled < 8:
            print(f"    {listing}: the teachers labelled {labelled} image(s)"
                  + (f"; the student trains on batches of {labelled}" if labelled else
                     "; no student"), flush=True)
        return [f"PSEUDO.LIST={listing}", f"PSEUDO.BATCH_SIZE={min(8, labelled)}"] \
            if labelled else []

    def pseudo_label_adaptation(self) -> None:
        a, teacher_steps = self.args, self.args.teacher_steps
        self.p["teacher"] = teacher = self.train("teacher_main", [
            *self.preset("teacher_main.yaml"), *self.common_opts(),
            f"MODEL.WEIGHTS={self.p['source']}", *self.schedule(teacher_steps, 2e-4)],
            teacher_steps)
        students = [("pl", "adapt_pl.yaml", [str(teacher)], [])]
        if self.yunet is not None:
            students.append(("dual", "adapt_dual_teacher.yaml",
                             [str(teacher), f"{self.yunet}:yunet_n:1"],
                             [f"EMA.REFRESH_AFTER={a.adapt_steps // 2}"]))
        else:
            print("no released YuNet (the complementary teacher): the dual-teacher student is "
                  "skipped; see pretrained_weights/README.md")
        for name, preset, teachers, extra in students:
            opts = self.pseudo_opts(self.pseudo_labels(f"labels_{name}", teachers))
            if opts:
                self.p[name] = self.train(name, [
                    *self.preset(preset), *self.common_opts(), f"MODEL.WEIGHTS={teacher}",
                    *opts, *self.schedule(a.adapt_steps, 2e-4), *extra], a.adapt_steps)

    # -- part 3: YuNet adapted ----------------------------------------------------------------

    def yunet_train(self, name: str, extra: list, seed: int = 0) -> Path:
        data, steps = self.p["data"], self.args.yunet_steps
        return self.train(name, [
            *extra, "MODEL.NAME=yunet_n", f"FACE.SRC_TRAIN_FILE={data / 'wider_face_train.txt'}",
            f"FACE.DATA_ROOT={data}", f"YUNET.INPUT_SIZE={YUNET_SIZE}", "SOLVER.BATCH_SIZE=8",
            f"RUN.SEED={self.args.seed + seed}", "RUN.NUM_WORKERS=0", "RUN.TENSORBOARD=False",
            f"MODEL.WEIGHTS={self.yunet}", *self.schedule(steps, 1e-4, warmup=5)], steps)

    def yunet_adaptations(self) -> None:
        """HLA once; the control and the pseudo-label students (a few CPU seconds per run) once
        per training seed, so that the table shows their spread."""
        steps, seeds = self.args.yunet_steps, range(self.args.train_seeds)
        self.p["y_hla"] = [self.yunet_train("yunet_hla", self.hla_opts())]
        pl = self.pseudo_labels("labels_yunet_pl", [f"{self.yunet}:yunet_n:1"])
        runs = [("y_control", "yunet_control", self.preset("detection_only.yaml"))]
        if self.pseudo_opts(pl):
            runs.append(("y_pl", "yunet_pl", [*self.preset("adapt_pl.yaml"),
                                              *self.pseudo_opts(pl)]))
        if self.yunet_s is not None:
            dual = self.pseudo_labels("labels_yunet_dual", [f"{self.yunet}:yunet_n:1",
                                                            f"{self.yunet_s}:yunet_s:1"])
            if self.pseudo_opts(dual):
                runs.append(("y_dual", "yunet_dual", [
                    *self.preset("adapt_dual_teacher.yaml"), *self.pseudo_opts(dual),
                    f"EMA.REFRESH_AFTER={steps // 2}"]))
        for key, name, extra in runs:
            self.p[key] = [self.yunet_train(name, extra, s) for s in seeds]

    # -- evaluation ---------------------------------------------------------------------------

    def shared_el(self):
        """E(L) as a function of an RGB image, computed once per image: the enhanced copies
        that stage 4 wrote for the held-out images are looked up by the dark image's digest."""
        from lowlevel.enhancement import enhance_uint8, load_enhancer
        net, memo = load_enhancer(self.p["el"], "cpu", key="E(L) weights"), {}
        dark_val = self.p["dark"] / "images" / "val"
        for path in sorted(self.p["el_val"].glob("*.png")):
            dark = dark_val / path.name
            if dark.is_file():
                memo[_pixels_key(_read_rgb(dark))] = _read_rgb(path)

        def el(rgb: np.ndarray) -> np.ndarray:
            key = _pixels_key(rgb)
            if key not in memo:
                memo[key] = enhance_uint8(net, rgb)
            return memo[key]
        return el

    def detector(self, label: str, name: str, weights: Path, enhance: str | None, el):
        """A compare-page detector; rows with E(L) share ``el`` (their ms exclude it)."""
        from engine import compare as compare_inference
        spec = f"ours:{name}:{weights}:label={label}"
        det = compare_inference.build_detector(spec, *DSFD_THRESH)
        if enhance != "el":
            return det
        flops_el = compare_inference.build_detector(spec.replace(":label=", ":enhance=el:label="),
                                                    *DSFD_THRESH, self.p["el"]).flops
        plain = det.run
        return dataclasses.replace(det, run=lambda rgb: plain(el(rgb)), flops=flops_el,
                                   settings={**det.settings, "enhance": "el",
                                             "note": "E(L) shared by the rows, not in the ms"})

    def dsfd_table(self) -> None:
        from evaluation.common import PRCurve, plot_pr_curves
        from evaluation.darkface import load_darkface_gt
        from engine import compare as compare_inference
        dark, p, el = self.p["dark"], self.p, self.shared_el()
        val = sorted((dark / "images" / "val").glob("*.png"), key=lambda q: int(q.stem))
        rows = [("source-only, dark", p["source"], None), ("source-only + E(L)", p["source"], "el"),
                ("control (+ steps on clean) + E(L)", p["control"], "el"),
                ("HLA + E(L)", p["hla"], "el"),
                ("main teacher (clean + low-light copies), dark", p["teacher"], None)]
        rows += [(label, p[k], None) for label, k in (("PL student, dark", "pl"),
                                                      ("dual-teacher student, dark", "dual"))
                 if k in p]
        dets = [self.detector(label, "dsfd_vgg", w, e, el) for label, w, e in rows]
        gt = load_darkface_gt(dark / "label" / "val", [q.stem for q in val])
        result = compare_inference.compare(dets, val, gt=gt, out_dir=self.out / "compare",
                                           grid_images=3, draw_thresh=self.args.show_threshold)
        aps = {r["label"]: next(iter(r["ap"].values())) for r in result["detectors"]}
        clean = sorted((dark / "clean" / "val").glob("*.png"), key=lambda q: int(q.stem))
        ref = compare_inference.compare([self.detector("source-only, clean originals", "dsfd_vgg",
                                                       p["source"], None, el)], clean, gt=gt)
        aps.update({r["label"]: next(iter(r["ap"].values())) for r in ref["detectors"]})
        plot_pr_curves(self.out / "pr_curves.png", [(
            "held-out demo images (AP at IoU 0.5)",
            [PRCurve(label, *result["curves"][label][next(iter(result["curves"][label]))])
             for label in result["curves"]], [])])
        self.draw_dsfd(result, val[:3], dark / "label" / "val")
        lines = [f"| {k} | {v:.3f} |" for k, v in aps.items()]
        self.tables["dsfd"] = (
            "AP on the held-out demo images (DARK FACE protocol, IoU 0.5, single scale); one "
            f"training seed per row: differences below {DSFD_RUN_SPREAD:.2f} are within the "
            "run-to-run spread measured between two fresh runs, not gains:\n\n"
            "| model | AP |\n|---|---|\n" + "\n".join(lines))
        print(self.tables["dsfd"], flush=True)

    def draw_dsfd(self, result: dict, images: list[Path], gt_dir: Path) -> None:
        from evaluation.darkface import read_darkface_gt_file
        from utils.visualize import draw_detections, grid
        panels, titles, thr = [], [], self.args.show_threshold
        for label in ("source-only, dark", "HLA + E(L)"):
            for image in images:
                rgb = _read_rgb(image)
                rgb = np.clip(rgb * (100.0 / max(rgb.mean(), 1.0)), 0, 255).astype(np.uint8)
                dets = result["predictions"][label][image.stem]
                gt = read_darkface_gt_file(gt_dir / f"{image.stem}.txt")
                panels.append(draw_detections(rgb, dets, thr, gt=gt))
                titles.append(f"{label} {image.stem}: {int((dets[:, 4] >= thr).sum())} boxes >= "
                              f"{thr} (green); labels in red")
        grid(panels, columns=len(images), titles=titles).save(self.out / "detections.png")

    def real_adapted(self) -> None:
        """The part-1 photos at the same levels (first noise seed): released YuNet_n raw /
        night mode / E(L), and the adapted YuNets."""
        from lowlevel.enhancers import build_enhancer
        rs, p = self.real_set(), self.p
        memo: dict = {}
        el_bgr = build_enhancer("el", el_weights=p["el"])

        def el(bgr):                     # E(L) once per photo, shared by the rows
            key = _pixels_key(bgr)
            if key not in memo:
                memo[key] = el_bgr(bgr)
            return memo[key]
        auto = build_enhancer("auto")
        rows = [("released YuNet_n, raw", [self.yunet], None),
                ("released YuNet_n + night mode (auto)", [self.yunet], auto),
                ("released YuNet_n + E(L)", [self.yunet], el),
                ("control (+ steps on demo clean) + E(L)", p["y_control"], el),
                ("HLA + E(L)", p["y_hla"], el)]
        rows += [(label, p[k], enh) for label, k, enh in (
            ("PL student, raw", "y_pl", None), ("PL student + night mode", "y_pl", auto),
            ("dual-teacher student, raw", "y_dual", None)) if k in p]
        levels = self.args.levels[-2:]      # the two darkest: where adaptation must help
        sets = {lv: demo_real.darkened(rs, lv, 0, self.out / "real" / "levels") for lv in levels}
        table, shown = [], {}
        for label, weights, enh in rows:
            aps = {lv: [] for lv in levels}
            for w in weights:
                det = demo_real.yunet_detector("yunet_n", w, enh)
                for lv in levels:
                    dets = demo_real.detect_all(det, sets[lv])
                    aps[lv].append(demo_real.average_precision(rs, dets))
                    if lv == levels[-1] and label in (rows[0][0], "HLA + E(L)"):
                        shown[label] = dets
            seeds = f" ({len(weights)} seeds)" if len(weights) > 1 else ""
            table.append([label + seeds, *[demo_real.spread_cell(aps[lv]) for lv in levels]])
        header = ["YuNet_n", *[f"{lv} ({demo_real.LEVEL_NOTES[lv]})" for lv in levels]]
        self.tables["adapted"] = (
            f"YuNet_n adapted on the toy data ({self.args.yunet_steps} steps), on {rs.name} "
            f"darkened by the camera model (noise seed 0); AP at IoU {rs.iou}; rows with seeds: "
            "mean ± half range over the training seeds; the other rows: one run, compare their "
            "differences with the noise-seed spread of part 1 before reading them as gains."
            "\n\n" + demo_real.markdown_table(header, table))
        (self.out / "real" / "adapted.md").write_text(self.tables["adapted"] + "\n")
        print(self.tables["adapted"], flush=True)
        demo_real.draw_pair(rs, shown, sets[levels[-1]], range(min(3, len(rs.paths))),
                            self.out / "real_faces.png", self.args.show_threshold)


def _read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _pixels_key(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest() + str(image.shape)


def plan(demo: Demo) -> list[Stage]:
    """The stages in the order they are printed and started; ``needs`` lets independent ones
    run side by side. The real-photo part comes first, the toy DSFD part after."""
    a, real = demo.args, demo.yunet is not None
    stages = []
    if real:
        stages.append(Stage("night_mode", "real faces in the dark: released YuNet_n, raw / "
                            "gamma / CLAHE / night mode", demo.night_mode))
    stages += [
        Stage("data", "demo data (toy)", demo.make_data),
        Stage("source", f"source detector: DSFD x{WIDTH} on clean images, {a.source_steps} steps",
              demo.train_source, ("data",)),
        Stage("enhancer", "E(L): train, brighten the dark images", demo.train_enhancer,
              ("data",)),
        Stage("noise", "D(H): noise synthesis on the clean images", demo.synthesize_noise,
              ("enhancer",)),
        Stage("pseudo_boxes", "pseudo boxes on the brightened dark images", demo.pseudo_boxes,
              ("source", "enhancer")),
        Stage("control", f"control: {a.adapt_steps} more steps on the clean images",
              demo.control, ("source",)),
        Stage("pseudo_labels", "pseudo-label adaptation: main teacher, labels, students",
              demo.pseudo_label_adaptation, ("source",)),
        Stage("hla", f"joint high-low adaptation (HLA), {a.adapt_steps} steps", demo.adapt,
              ("noise", "pseudo_boxes")),
        Stage("evaluate", "evaluate on the held-out dark images (compare page)", demo.dsfd_table,
              ("hla", "control", "pseudo_labels"))]
    if real:
        stages += [Stage("yunet", f"YuNet adaptations on the toy data, {a.yunet_steps} steps",
                         demo.yunet_adaptations, ("noise", "pseudo_boxes")),
                   Stage("real_adapted", "real faces in the dark: E(L) and the adapted YuNets",
                         demo.real_adapted, ("yunet", "enhancer", "night_mode"))]
    return stages


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.fresh and args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    demo = Demo(args)
    import torch
    torch.set_num_threads(demo.threads)          # the in-process stages (inference)
    torch.use_deterministic_algorithms(True, warn_only=True)
    print(f"demo: {'full' if args.full else 'short'} settings, {args.jobs} stage(s) side by "
          f"side, {demo.threads} torch thread(s) each, seed {args.seed}, results in {demo.out}",
          flush=True)
    if demo.yunet is None:
        print("\nthe released YuNet weights were not found (pretrained_weights/yunet_n.pth or "
              f"{SHARED / 'yunet'}): the real-face parts are skipped. Get yunet_n.pth (and "
              "yunet_s.pth) from the libfacedetection.train repository's weights/ folder "
              "(pretrained_weights/README.md) and run the demo again.")
    stages = plan(demo)
    wall0, cpu0 = time.perf_counter(), process_cpu()
    run_stages(stages, args.jobs)
    wall, cpu = time.perf_counter() - wall0, process_cpu() - cpu0
    for key in ("night_mode", "dsfd", "adapted"):
        if key in demo.tables:
            print("\n" + demo.tables[key])
    print(f"\npictures: {demo.out / 'real_night_mode.png'}, {demo.out / 'real_faces.png'}, "
          f"{demo.out / 'detections.png'}; compare page {demo.out / 'compare' / 'compare.md'}")
    table = stage_table(stages, wall, cpu, min(os.cpu_count() or 1, 2))
    (demo.out / "stage_times.txt").write_text(table + "\n")
    print("\n" + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
