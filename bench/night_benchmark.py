"""The night benchmark: real labelled faces darkened by the camera model, AP per darkness level.

    python bench/night_benchmark.py [--out night_bench] [--methods NAME,NAME,...|all]
        [--levels clean,L1,...] [--images N] [--iou 0.35] [--el-weights W] [--steps 50]
        [--lr 0.002] [--row-steps ROW=N,...] [--row-lr ROW=LR,...] [--train-size 256]
        [--adapt-levels L4,L5] [--cached-only] [--plot-levels L4,L5] [--list-methods]
        [--adapt-args ARG ...]

Faces: the 43 hand-labelled faces of the 9 PASCAL VOC photos in ``../shared/data/dlib_faces``
(dlib's ``training.xml`` + ``testing.xml``, read by the ``dlib_xml`` format of
data/annotations.py). Darkness: every :data:`LEVELS` entry darkens every photo with the camera
model (``data/camera.py``, its ``darkface`` preset with the level's fixed exposure), one fixed
seed per (level, photo); the statistics of each level (mean luma, share of zero pixels,
percentiles, channel means) are printed beside the AP, with the DARK FACE frame's for the darkest.
Score: the DARK FACE protocol of ``evaluation/darkface.py`` (min-max normalised scores, every
detection a proposal, max-IoU matching, VOC AP over 1000 thresholds) at IoU :data:`IOU`
= 0.35 instead of 0.5, because dlib's boxes are tight squares (37-109 px) inside the larger
WIDER-style boxes the detectors draw (the released YuNet_n on the clean photos: best IoU
0.54-0.81 per face).

Methods (rows, ``--list-methods``; :data:`METHODS` maps a name to a function, so a row is one
function and one line): the released YuNet_n / YuNet_s raw and behind every enhancer of
``lowlevel/enhancers.py``; trained rows run the project's entry points as subprocesses. Every
trained row except ``adapt`` trains on the FINE-TUNING SET, never on a benchmark photo
(:func:`check_split` refuses an overlap): the photos that scikit-image and matplotlib ship
(``data/real_photos.py``: astronaut, Grace Hopper, camera, and LFW mosaics), labelled by the
released YuNet_n's own detections on the clean photo at score >= 0.5. ``adapt`` runs
``tools/adapt_to_night.py`` on the level's night photos themselves, without their labels (by
design: it adapts to the user's footage), once per level.

Results: ``--out/cache/<method>/<level>.json`` keeps each row's detections with the key they
depend on (weights, enhancer code, training recipe, camera code, level, photos): a re-run only
computes what changed. Trained weights live in ``--out/models/``, the darkened photos in
``--out/levels/<level>/``. Printed: the statistics table and the AP table; written:
``results.json``, ``results.md`` and ``pr_curves.png`` (the darkest levels).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from data import camera
from data.annotations import FaceRecord, read_annotations, write_annotations
from evaluation.darkface import evaluate_darkface_boxes

ROOT = Path(__file__).resolve().parents[1]

SHARED = ROOT.parent / "shared" / "data"
DLIB_FILES = ("training.xml", "testing.xml")
IOU = 0.35                    # dlib's tight squares vs. WIDER-style detections (module doc)
SEED = 16                     # darkening seed base: photo k uses (SEED, k) at every level
LABEL_SCORE = 0.5             # the released YuNet_n's clean detections >= this: fine-tuning labels
YUNET_THRESH = (0.02, 0.45)   # the released test setting (configs/models/yunet_n.yaml)
# The DARK FACE frame (issue 16): the darkest level must fall in these ranges.
# data/camera.py's DARK FACE frame and target ranges, in this table's keys (zeros in %)
_KEYS = {"mean": "mean_luma", "zeros": "zeros", "p50": "median", "p95": "p95", "p99": "p99",
         "B": "mean_b", "G": "mean_g", "R": "mean_r"}
_PERCENT = {"zeros": 100.0}
DARKFACE_RANGES = {k: tuple(v * _PERCENT.get(k, 1.0) for v in camera.DARKFACE_TARGETS[_KEYS[k]])
                   for k in ("mean", "zeros", "p99")}
DARKFACE_FRAME = {k: camera.DARKFACE_FRAME[v] * _PERCENT.get(k, 1.0) for k, v in _KEYS.items()}


@dataclass(frozen=True)
class Level:
    """One darkness level: the camera model's ``darkface`` preset with its exposure fixed at
    ``2 ** stops`` times the middle of the preset's exposure range (the calibrated DARK FACE
    darkness), every other parameter drawn as the preset draws it; ``stops = None``: the photo
    as it is."""
    name: str
    stops: float | None
    note: str = ""

    @property
    def clean(self) -> bool:
        return self.stops is None

    @property
    def overrides(self) -> dict:
        return {} if self.clean else {"exposure": preset_exposure() * 2.0 ** self.stops}


def preset_exposure() -> float:
    """The middle of the darkface preset's exposure draw (geometric for a log-uniform one)."""
    from data.camera import PRESETS
    spec = PRESETS["darkface"]["exposure"]
    if isinstance(spec, (int, float)):
        return float(spec)
    kind, lo, hi = spec[0], float(spec[1]), float(spec[2])
    return float(np.sqrt(lo * hi)) if kind in ("loguniform", "invuniform") else (lo + hi) / 2


# Mild to DARK FACE dark, in stops (factors 2 of light) above the calibrated darkface preset's
# own darkness (L5); the last step is half a stop, as the darkest levels matter most.
LEVELS: tuple[Level, ...] = (
    Level("clean", None, "the photos as they are"),
    Level("L1", 3.0, "dusk"),
    Level("L2", 2.0, "night, lit street"),
    Level("L3", 1.0, "night"),
    Level("L4", 0.5, "dark night"),
    Level("L5", 0.0, "DARK FACE dark"),
)


def level_by_name(names: Sequence[str]) -> list[Level]:
    known = {lv.name: lv for lv in LEVELS}
    bad = [n for n in names if n not in known]
    if bad:
        raise SystemExit(f"--levels: unknown level(s) {', '.join(bad)}; known: "
                         f"{', '.join(known)}")
    return [known[n] for n in names]


# ---- digests (the cache keys) -------------------------------------------------------------------

def digest(obj) -> str:
    """sha256 (16 hex digits) of a JSON-able object, a file (Path) or bytes."""
    h = hashlib.sha256()
    if isinstance(obj, Path):
        h.update(obj.read_bytes() if obj.is_file() else str(obj).encode())
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        h.update(obj)
    else:
        h.update(json.dumps(obj, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def code_digest(*relative: str) -> str:
    """Digest of project source files (a missing one counts as its name)."""
    return digest([digest(ROOT / r) for r in relative])


# ---- the benchmark photos and their darkened copies ---------------------------------------------

def benchmark_records(folder: Path, limit: int | None = None) -> list[FaceRecord]:
    """The dlib photos with their face boxes (training.xml, then testing.xml)."""
    missing = [folder / n for n in DLIB_FILES if not (folder / n).is_file()]
    if missing:
        raise SystemExit(f"{missing[0]} not found (--dlib-faces): the benchmark needs dlib's "
                         "examples/faces (../shared/data/dlib_faces/README.md)")
    records = [r for n in DLIB_FILES for r in read_annotations(folder / n, "dlib_xml")]
    return records[:limit] if limit else records


def darken_bgr(bgr: np.ndarray, level: Level, photo_index: int) -> np.ndarray:
    """The level's copy of one BGR photo (the photo itself for ``clean``)."""
    if level.clean:
        return bgr
    from data.camera import darken_uint8
    # One seed per photo for every level: the levels of a photo differ in exposure only.
    seed = int(np.random.SeedSequence([SEED, photo_index]).generate_state(1)[0])
    return darken_uint8(bgr, preset="darkface", seed=seed, overrides=dict(level.overrides))


def level_images(records: Sequence[FaceRecord], level: Level, out: Path) -> list[Path]:
    """Darken every photo for ``level`` into ``out/levels/<level>/<stem>.png`` and return the
    paths; the folder is rewritten when the level, the photos or the camera code changed."""
    folder = out / "levels" / level.name
    recipe = {"level": level.name, "stops": level.stops, "overrides": level.overrides,
              "seed": SEED, "camera": None if level.clean else code_digest("data/camera.py"),
              "photos": [digest(Path(r.path)) for r in records]}
    stamp = folder.with_suffix(".json")             # beside the folder: it holds images only
    paths = [folder / f"{Path(r.path).stem}.png" for r in records]
    if stamp.is_file() and json.loads(stamp.read_text())["recipe"] == recipe and all(
            p.is_file() for p in paths):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    for k, (record, path) in enumerate(zip(records, paths)):
        bgr = cv2.imread(record.path, cv2.IMREAD_COLOR)
        if bgr is None:
            raise SystemExit(f"cannot read benchmark photo {record.path}")
        cv2.imwrite(str(path), darken_bgr(bgr, level, k))
    stamp.write_text(json.dumps({"recipe": recipe, "pixels": [pixel_digest(p, full=True)
                                                              for p in paths]}, indent=1))
    return paths


def level_key(records: Sequence[FaceRecord], level: Level, out: Path) -> dict:
    """What a row's detections at ``level`` depend on: the darkened photos' pixels (so a
    rewrite of the camera code that gives the same pixels keeps the cache)."""
    level_images(records, level, out)
    stamp = json.loads((out / "levels" / f"{level.name}.json").read_text())
    return {"level": level.name, "pixels": digest(stamp["pixels"])}


def image_stats(paths: Sequence[Path]) -> dict:
    """Statistics of a level, over all pixels of its photos: luma (BT.601, as cv2's grey)
    mean, share of zeros (%), median and 95th / 99th percentiles; channel means B, G, R."""
    images = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths]
    luma = np.concatenate([cv2.cvtColor(im, cv2.COLOR_BGR2GRAY).ravel() for im in images])
    channels = np.concatenate([im.reshape(-1, 3) for im in images]).mean(axis=0)
    p50, p95, p99 = np.percentile(luma, [50, 95, 99])
    return {"mean": float(luma.mean()), "zeros": float((luma == 0).mean() * 100),
            "p50": float(p50), "p95": float(p95), "p99": float(p99),
            "B": float(channels[0]), "G": float(channels[1]), "R": float(channels[2])}


def in_darkface_range(stats: dict) -> bool:
    return all(lo <= stats[k] <= hi for k, (lo, hi) in DARKFACE_RANGES.items())


# ---- the fine-tuning set (never a benchmark photo) ----------------------------------------------

LFW_GROUPS = ((0, 20), (20, 40), (40, 60), (60, 80))     # identities of the extra LFW mosaics


def fine_tune_photos() -> dict[str, np.ndarray]:
    """The photos with faces that scikit-image and matplotlib ship (RGB uint8): the four of
    ``data/real_photos.py`` and four more 4 x 5 mosaics of LFW faces (identities 0-79)."""
    from data.real_photos import REAL_PHOTOS, load_real_photo
    photos = {name: load_real_photo(name) for name in REAL_PHOTOS}
    for lo, hi in LFW_GROUPS:
        photos[f"lfw_{lo}_{hi}"] = lfw_mosaic(range(lo, hi))
    return photos


def lfw_mosaic(identities: range, cell: int = 112, grid: tuple[int, int] = (4, 5)) -> np.ndarray:
    """20 LFW faces of ``skimage.data.lfw_subset()`` (25 px, scaled x3) on a grey grid, RGB."""
    from skimage import data
    faces = (data.lfw_subset()[list(identities)] * 255.0).astype(np.uint8)
    rows, cols = grid
    canvas = np.full((rows * cell, cols * cell, 3), 118, np.uint8)
    side, pad = 75, (cell - 75) // 2
    for k, face in enumerate(faces):
        r, c = divmod(k, cols)
        y, x = r * cell + pad, c * cell + pad
        canvas[y:y + side, x:x + side] = cv2.resize(face, (side, side),
                                                    interpolation=cv2.INTER_CUBIC)[..., None]
    return canvas


def pixel_digest(path_or_array, full: bool = False) -> str:
    """Digest of decoded pixels: at 64 x 64 (a re-encoded or resized copy of a photo is still
    the same photo) or, with ``full``, of every pixel."""
    if isinstance(path_or_array, (str, Path)):
        image = cv2.imread(str(path_or_array), cv2.IMREAD_COLOR)
        if image is None:
            raise SystemExit(f"cannot read {path_or_array}")
    else:
        image = np.ascontiguousarray(path_or_array)
    if not full:
        image = cv2.resize(image, (64, 64), interpolation=cv2.INTER_AREA)
    return digest(image.tobytes())


def check_split(benchmark: Sequence[FaceRecord], fine_tune: Sequence[Path]) -> None:
    """Refuse a fine-tuning set that holds a benchmark photo (same file name or same pixels,
    compared at 64 x 64 so that a re-encoded copy is caught)."""
    bench_names = {Path(r.path).stem for r in benchmark}
    bench_pixels = {pixel_digest(cv2.imread(r.path, cv2.IMREAD_COLOR)): r.path
                    for r in benchmark}
    for path in fine_tune:
        same = bench_pixels.get(pixel_digest(path))
        if Path(path).stem.split("__")[0] in bench_names or same:
            raise ValueError(f"fine-tuning image {path} is the benchmark photo "
                             f"{same or Path(path).stem}: the fine-tuning set must not hold "
                             "benchmark photos")


@dataclass
class FineTuneSet:
    root: Path                # FACE.DATA_ROOT of the training runs
    train_list: Path          # clean photos + the released YuNet_n's boxes (WIDER list)
    night: Path               # camera-model night copies (unlabelled; the PL teachers' input)
    key: dict


def write_fine_tune_set(out: Path, yunet_n: Path, copies: int = 3) -> FineTuneSet:
    """The fine-tuning photos under ``out/finetune``: ``images/`` with ``train.txt`` (boxes:
    the released YuNet_n at score >= LABEL_SCORE on the clean photo) and ``night/`` (``copies``
    camera-model copies of each, the darkface preset's own sampling, seeds SEED + 1)."""
    root = out / "finetune"
    photos = fine_tune_photos()
    recipe = {"photos": {n: digest(p.tobytes()) for n, p in photos.items()}, "copies": copies,
              "labeller": digest(yunet_n), "score": LABEL_SCORE,
              "camera": code_digest("data/camera.py")}
    stamp = root / "key.json"
    if stamp.is_file() and json.loads(stamp.read_text())["recipe"] == recipe:
        return FineTuneSet(root, root / "train.txt", root / "night",
                           json.loads(stamp.read_text())["content"])
    fts = FineTuneSet(root, root / "train.txt", root / "night", {})
    (root / "images").mkdir(parents=True, exist_ok=True)
    fts.night.mkdir(parents=True, exist_ok=True)
    detect = released_detector("yunet_n", yunet_n)
    records = []
    for i, (name, rgb) in enumerate(photos.items()):
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        path = root / "images" / f"{name}.png"
        cv2.imwrite(str(path), bgr)
        dets = detect(bgr)
        boxes = dets[dets[:, 4] >= LABEL_SCORE, :4]
        records.append(FaceRecord(str(path), boxes, np.full((len(boxes), 5, 2), -1.0),
                                  np.ones(len(boxes), np.int64)))
        for k in range(copies):
            from data.camera import darken_uint8
            seed = int(np.random.SeedSequence([SEED + 1, i, k]).generate_state(1)[0])
            cv2.imwrite(str(fts.night / f"{name}__{k}.png"), darken_uint8(bgr, "darkface", seed))
    write_annotations(records, fts.train_list, "wider", root=root)
    # What the trained rows depend on: the labels and every pixel (not the code that made them).
    fts.key = {"labels": digest(fts.train_list), "pixels": digest(
        [pixel_digest(p, full=True) for p in sorted(root.glob("*/*.png"))])}
    stamp.write_text(json.dumps({"recipe": recipe, "content": fts.key}, indent=1))
    return fts


# ---- detectors ----------------------------------------------------------------------------------

Detect = Callable[[np.ndarray], np.ndarray]       # BGR uint8 -> [k, 5] pixel x1 y1 x2 y2 score


def released_detector(name: str, weights: Path, enhance: str = "none",
                      el_weights: Path | None = None, cache: Path | None = None) -> Detect:
    """A YuNet checkpoint (released or ours) at the photo's own size, behind an enhancer of
    ``lowlevel/enhancers.py``, at the released test setting (score 0.02, NMS 0.45). With
    ``cache``, the detections of each enhanced image are kept there under the digest of the
    weights and its pixels: an edit of the enhancer code that leaves an enhancer's output as it
    was costs that enhancer's run only."""
    import torch
    from data.config import load_config
    from lowlevel.enhancers import build_enhancer
    from models.inference import build_face_detector
    cfg = load_config(overrides=[f"MODEL.NAME={name!r}",
                                 f"DETECT.CONF_THRESH={YUNET_THRESH[0]!r}",
                                 f"DETECT.NMS_THRESH={YUNET_THRESH[1]!r}"])
    fd = build_face_detector(cfg, weights, torch.device("cpu"))
    enhancer = build_enhancer(enhance, el_weights=el_weights)

    tag = f"{name}-{digest(weights)}"

    def detect(bgr: np.ndarray) -> np.ndarray:
        enhanced = enhancer(bgr)
        path = cache / f"{tag}-{pixel_digest(enhanced, full=True)}.npy" if cache else None
        if path is not None and path.is_file():
            return np.load(path)
        rgb = cv2.cvtColor(enhanced, cv2.COLOR_BGR2RGB)
        h, w = rgb.shape[:2]
        dets = fd(rgb[None])[0][:, :5].double().numpy() * np.array([w, h, w, h, 1.0])
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, dets)
        return dets
    return detect


def run_entry(script: str, argv: Sequence[str], log: Path) -> None:
    """An entry point of the project as its own process (never imported), output to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(ROOT / script), *map(str, argv)]
    print(f"  $ {' '.join(cmd[1:])}  (log: {log})", flush=True)
    with log.open("a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"{script} failed (exit code {rc}); end of {log}:\n{tail}")


# ---- methods (rows) -----------------------------------------------------------------------------

class Unavailable(RuntimeError):
    """A row that cannot run here (a missing tool, preset or weights); the message says why."""


class Skipped(RuntimeError):
    """A row that is not run at this level (the message says why); it runs at the others."""


@dataclass
class Context:
    """What the rows share: the options, the photos and memoised detectors / training runs."""
    args: argparse.Namespace
    records: list[FaceRecord]
    memo: dict = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return self.args.out

    def weights(self, name: str) -> Path:
        path = self.args.yunet_dir / f"{name}.pth"
        if not path.is_file():
            raise Unavailable(f"{path} not found (--yunet-dir): the released {name} weights")
        return path

    def once(self, key, build: Callable):
        if key not in self.memo:
            self.memo[key] = build()
        return self.memo[key]

    def fine_tune_set(self) -> FineTuneSet:
        def build():
            fts = write_fine_tune_set(self.out, self.weights("yunet_n"))
            check_split(self.records, sorted((fts.root / "images").glob("*.png"))
                        + sorted(fts.night.glob("*.png")))
            return fts
        return self.once("fine_tune_set", build)


@dataclass(frozen=True)
class Method:
    """One row: ``key(ctx, level)`` is what its detections depend on (cheap: no training);
    ``build(ctx, level)`` returns its detector (training it first when needed)."""
    name: str
    about: str
    key: Callable[[Context, Level], dict]
    build: Callable[[Context, Level], Detect]


def released(model: str, enhance: str) -> Method:
    """The released YuNet ``model`` behind the enhancer ``enhance``."""
    def key(ctx: Context, level: Level) -> dict:
        el = ctx.args.el_weights if enhance == "el" else None
        if enhance == "el" and el is None:
            raise Unavailable("needs --el-weights (an E(L) trained on camera-model night copies)")
        return {"model": model, "weights": digest(ctx.weights(model)), "enhance": enhance,
                "el": digest(Path(el)) if el else None,
                "code": code_digest("lowlevel/enhancers.py", "lowlevel/classic.py")}

    def build(ctx: Context, level: Level) -> Detect:
        el = ctx.args.el_weights if enhance == "el" else None
        return ctx.once((model, enhance), lambda: released_detector(
            model, ctx.weights(model), enhance, el, ctx.out / "cache" / "images"))
    about = f"released {model}" + ("" if enhance == "none" else f", --enhance {enhance}")
    return Method(model if enhance == "none" else f"{model}+{enhance}", about, key, build)


def row_value(spec: str, name: str, default, flag: str, kind=float):
    """``kind(VALUE)`` of ``ROW=VALUE,...`` in ``spec`` for row ``name``, else ``default``."""
    for item in filter(None, (spec or "").split(",")):
        row, _, value = item.partition("=")
        try:
            parsed = kind(value)
        except ValueError:
            raise SystemExit(f"{flag} {item!r}: expected ROW=VALUE") from None
        if row == name:
            return parsed
    return default


def row_steps(args: argparse.Namespace, name: str) -> int:
    """The training steps of row ``name``: ``--row-steps NAME=N`` or ``--steps``."""
    return row_value(args.row_steps, name, args.steps, "--row-steps", int)


def row_lr(args: argparse.Namespace, name: str) -> float:
    """The learning rate of row ``name``: ``--row-lr NAME=LR`` or ``--lr``."""
    return row_value(args.row_lr, name, args.lr, "--row-lr")


def schedule(steps: int, lr: float, warmup: int = 5) -> list[str]:
    return [f"SOLVER.MAX_STEPS={steps}", f"SOLVER.LR={lr}", f"SOLVER.WARMUP_ITERS={warmup}",
            f"SOLVER.LR_STEPS=[{steps * 4 // 5}]", f"RUN.LOG_EVERY={max(steps // 6, 1)}",
            f"RUN.CKPT_EVERY={steps}"]


def train_yunet(ctx: Context, name: str, argv: list[str], recipe: dict) -> Path:
    """train.py for YuNet_n from the released weights on the fine-tuning set with ``argv``
    (presets, overrides); the run folder is named by the recipe's digest, so a changed recipe
    trains anew and an unchanged one is reused. Returns the final checkpoint."""
    fts = ctx.fine_tune_set()
    steps = row_steps(ctx.args, name)
    lr = row_lr(ctx.args, name)
    run = f"{name}-{digest([recipe, fts.key, steps, ctx.args.train_size, lr])}"
    runs = ctx.out / "models"
    final = runs / run / f"ckpt_{steps}.pth"
    if not final.is_file() and ctx.args.cached_only:
        raise Skipped(f"not trained yet ({final} missing; run without --cached-only)")
    if not final.is_file():
        run_entry("train.py", [
            "--resume", "auto", *argv, "MODEL.NAME=yunet_n",
            f"MODEL.WEIGHTS={ctx.weights('yunet_n')}", f"FACE.SRC_TRAIN_FILE={fts.train_list}",
            f"FACE.DATA_ROOT={fts.root}", f"YUNET.INPUT_SIZE={ctx.args.train_size}",
            "SOLVER.BATCH_SIZE=8", f"RUN.OUTPUT_DIR={runs}", f"RUN.NAME={run}",
            "RUN.NUM_WORKERS=0", "RUN.TENSORBOARD=False", *schedule(steps, lr)],
            runs / f"{run}.log")
        if not final.is_file():
            raise RuntimeError(f"train.py left no {final}")
    return final


def preset(relative: str) -> Path:
    path = ROOT / relative
    if not path.is_file():
        raise Unavailable(f"{relative} does not exist yet")
    return path


@dataclass(frozen=True)
class Recipe:
    """How a trained row trains: ``key(ctx)`` (cheap) and ``argv(ctx)`` (train.py's presets
    and overrides; may first run tools, e.g. the pseudo-label teachers)."""
    key: Callable[[Context], dict]
    argv: Callable[[Context], list[str]]


def trained(name: str, about: str, recipe: Recipe) -> Method:
    """A row trained once (for every level) on the fine-tuning set by ``recipe``."""
    def key(ctx: Context, level: Level) -> dict:
        return {"trained": recipe.key(ctx), "steps": row_steps(ctx.args, name),
                "lr": row_lr(ctx.args, name),
                "size": ctx.args.train_size, "start": digest(ctx.weights("yunet_n"))}

    def build(ctx: Context, level: Level) -> Detect:
        def make():
            ckpt = train_yunet(ctx, name, recipe.argv(ctx), recipe.key(ctx))
            return released_detector("yunet_n", ckpt)
        return ctx.once(name, make)
    return Method(name, about, key, build)


def preset_recipe(relative: str, *extra: str) -> Recipe:
    """train.py with the preset ``relative`` (and ``extra`` overrides)."""
    return Recipe(lambda ctx: {"preset": digest(preset(relative)), "extra": extra},
                  lambda ctx: ["--config", str(preset(relative)), *extra])


def pseudo_recipe(relative: str, teachers: Sequence[str], *extra: str) -> Recipe:
    """Pseudo labels by the released ``teachers`` on the fine-tuning set's night copies
    (tools/make_pseudo_labels.py: flip, WBF, score >= 0.3), then train.py with the preset
    ``relative`` on them (+ the labelled clean fine-tuning photos as its source batch)."""
    def key(ctx: Context) -> dict:
        return {"preset": digest(preset(relative)), "extra": extra,
                "teachers": {t: digest(ctx.weights(t)) for t in teachers}}

    def argv(ctx: Context) -> list[str]:
        fts = ctx.fine_tune_set()
        out = ctx.out / "models" / f"pseudo-{digest([key(ctx), fts.key])}"
        if not (out / "pseudo_labels.txt").is_file():
            run_entry("tools/make_pseudo_labels.py", [
                *[a for t in teachers for a in ("--teacher", f"{ctx.weights(t)}:{t}:1")],
                "--images", fts.night, "--out", out, "--flip", "--fusion", "wbf",
                "--score-thresh", "0.3", "--workers", "0", f"FACE.DATA_ROOT={fts.root}"],
                out.with_suffix(".log"))
        return ["--config", str(preset(relative)), *extra,
                f"PSEUDO.LIST={out / 'pseudo_labels.txt'}", "PSEUDO.BATCH_SIZE=8"]
    return Recipe(key, argv)


def adapted() -> Method:
    """tools/adapt_to_night.py on the level's night photos (no labels), once per level."""
    def key(ctx: Context, level: Level) -> dict:
        preset("tools/adapt_to_night.py")
        if level.name not in ctx.args.adapt_levels.split(","):
            raise Skipped(f"adapted at --adapt-levels {ctx.args.adapt_levels} only (CPU time)")
        return {"preset": digest(preset("configs/adapt_to_night.yaml")),
                "weights": digest(ctx.weights("yunet_n")),
                "extra": ctx.args.adapt_args, "level": level.name,
                "code": code_digest("tools/adapt_to_night.py", "adapt/pseudo/night.py",
                                    "adapt/pseudo/night_student.py", "lowlevel/enhancers.py")}

    def build(ctx: Context, level: Level) -> Detect:
        def make():
            images = level_images(ctx.records, level, ctx.out)[0].parent
            run = ctx.out / "models" / f"adapt-{level.name}-{digest(key(ctx, level))}"
            weights = run / ADAPTED_WEIGHTS
            if not (run / "report.md").is_file() and ctx.args.cached_only:
                raise Skipped(f"not adapted yet ({run} unfinished; run without --cached-only)")
            if not (run / "report.md").is_file():          # written when the run ends
                run_entry("tools/adapt_to_night.py", [
                    "--weights", ctx.weights("yunet_n"), "--model", "yunet_n", "--images",
                    images, "--out", run, "--resume", "auto", *ctx.args.adapt_args],
                    run.with_suffix(".log"))
                if not weights.is_file():
                    raise RuntimeError(f"tools/adapt_to_night.py left no {weights}")
            return released_detector("yunet_n", weights, adapted_enhance(weights))
        return ctx.once(("adapt", level.name), make)
    return Method("adapt", "released yunet_n adapted by tools/adapt_to_night.py to the level's "
                  "own night photos (their labels only score it), scored behind the enhancer "
                  "it trained behind (ADAPT.STUDENT_INPUT=enhanced: its --enhance, default "
                  "auto; raw: none)", key, build)


def adapted_enhance(weights: Path) -> str:
    """The --enhance the adapted detector is deployed behind: the tool's ADAPT.ENHANCE when its
    student trained on enhanced frames, else none."""
    from utils.checkpoint import load_file
    adapt = load_file(weights, "adapted weights")["config"]["ADAPT"]
    return adapt["ENHANCE"] if adapt.get("STUDENT_INPUT", "raw") == "enhanced" else "none"


ADAPTED_WEIGHTS = "adapted.pth"
# A CPU-sized adaptation: input 320, 4 rounds of 15 steps (patience 3: every round is
# evaluated and the best held-out score is kept).
ADAPT_ARGS = ("YUNET.INPUT_SIZE=320", "PSEUDO.BATCH_SIZE=4", "ADAPT.SYNTH_BATCH_SIZE=4",
              "ADAPT.ROUND_STEPS=15", "ADAPT.MAX_ROUNDS=4", "ADAPT.PATIENCE=3",
              "RUN.NUM_WORKERS=0")
NOT_RUN = {
    "hla": "HLA for YuNet needs E(L)-brightened and D(H)-noised copies of the target images and "
           "the jigsaw/MoCo heads' data (tools/demo.py builds them for its synthetic set); not "
           "wired into this benchmark",
}


def method_table() -> dict[str, Method]:
    """Every row, in table order: released YuNet_n behind each enhancer, released YuNet_s raw
    and behind a few, then the trained rows."""
    from lowlevel.enhancers import ENHANCE_CHOICES
    rows = [released("yunet_n", e) for e in ENHANCE_CHOICES]
    rows += [released("yunet_s", e) for e in ("none", "gamma", "auto")]
    rows += [
        trained("control", "released yunet_n fine-tuned on the clean fine-tuning photos only "
                "(configs/detection_only.yaml): what the photos alone do",
                preset_recipe("configs/detection_only.yaml")),
        trained("zero_shot", "released yunet_n fine-tuned on camera-model night copies + the "
                "clean fine-tuning photos (configs/zero_shot_night.yaml)",
                preset_recipe("configs/zero_shot_night.yaml")),
        trained("pl", "released yunet_n as its own teacher: pseudo labels on the fine-tuning "
                "photos' night copies, student (configs/adapt_pl.yaml)",
                pseudo_recipe("configs/adapt_pl.yaml", ["yunet_n"])),
        trained("dual_teacher", "pseudo labels by released yunet_n + yunet_s (WBF) on the "
                "night copies, student with an EMA teacher (configs/adapt_dual_teacher.yaml)",
                pseudo_recipe("configs/adapt_dual_teacher.yaml", ["yunet_n", "yunet_s"],
                              "EMA.REFRESH_AFTER=30")),
        adapted(),
    ]
    return {m.name: m for m in rows}


def default_methods() -> list[str]:
    """The default rows: every row but ``yunet_s+gamma`` (``--methods all`` adds it)."""
    return [name for name in method_table() if name != "yunet_s+gamma"]


# ---- running, caching, scoring ------------------------------------------------------------------

def run_row(ctx: Context, method: Method, level: Level) -> list[np.ndarray]:
    """The row's detections on the level's photos, from the cache when its key matches."""
    key = {"method": method.key(ctx, level), "level": level_key(ctx.records, level, ctx.out)}
    path = ctx.out / "cache" / method.name.replace("+", "_") / f"{level.name}.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("key") == json.loads(json.dumps(key, default=str)):
            return [np.asarray(d, dtype=np.float64).reshape(-1, 5) for d in saved["detections"]]
    detect = method.build(ctx, level)
    start = time.perf_counter()
    dets = [detect(cv2.imread(str(p), cv2.IMREAD_COLOR))
            for p in level_images(ctx.records, level, ctx.out)]
    seconds = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "seconds": seconds,
                                "detections": [d.tolist() for d in dets]}, default=str))
    return dets


def score(records: Sequence[FaceRecord], dets: Sequence[np.ndarray], iou: float) -> dict:
    """The DARK FACE protocol's AP (and curve) at IoU ``iou`` over the benchmark photos."""
    gt = {str(i): r.boxes[r.labels == 1] for i, r in enumerate(records)}
    return evaluate_darkface_boxes(gt, {str(i): d for i, d in enumerate(dets)},
                                   iou_threshold=iou)


# ---- report ------------------------------------------------------------------------------------

STAT_ROWS = (("mean", "mean luma"), ("zeros", "zero pixels %"), ("p50", "luma median"),
             ("p95", "luma 95th pct"), ("p99", "luma 99th pct"), ("B", "mean B"),
             ("G", "mean G"), ("R", "mean R"))


def table_lines(levels: Sequence[Level], stats: dict, results: dict, iou: float,
                markdown: bool) -> list[str]:
    """The statistics rows, then one AP row per method (``n/a`` for a row that did not run),
    as aligned text or a markdown table."""
    head = ["", *[lv.name for lv in levels]]
    rows = [["stops above DARK FACE", *["-" if lv.clean else f"{lv.stops:g}" for lv in levels]],
            ["camera exposure", *["-" if lv.clean else f"{lv.overrides['exposure']:.3g}"
                                  for lv in levels]]]
    rows += [[label, *[f"{stats[lv.name][k]:.1f}" for lv in levels]] for k, label in STAT_ROWS]
    rows.append(["DARK FACE ranges met", *["yes" if in_darkface_range(stats[lv.name]) else "no"
                                           for lv in levels]])
    rows.append([f"AP (IoU {iou:g}) per method", *[""] * len(levels)])
    for name, res in results.items():
        rows.append([name, *[f"{res['ap'][lv.name]:.3f}" if lv.name in res.get("ap", {})
                             else "n/a" for lv in levels]])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return out + ["| " + " | ".join(r) + " |" for r in rows]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                      enumerate(zip(r, widths))) for r in [head, *rows]]


def notes(results: dict) -> list[str]:
    """One line per method: what it is, or why it did not run."""
    out = []
    for name, res in results.items():
        why = res.get("unavailable") or res.get("failed")
        skipped = sorted(set(res.get("skipped", {}).values()))
        out.append(f"- `{name}`: {res['about']}" + (f" -- NOT RUN: {why}" if why else "")
                   + "".join(f" ({s})" for s in skipped))
    return out


# The rows of the PR plot (when they ran): the released model, the main enhancers, every
# trained row. All rows are in results.json.
PLOT_ROWS = ("yunet_n", "yunet_n+auto", "yunet_n+gamma", "yunet_n+clahe", "yunet_n+el",
             "yunet_s", "yunet_s+auto", "control", "zero_shot", "pl", "dual_teacher", "adapt")


def plot(path: Path, levels: Sequence[Level], stats: dict, curves: dict) -> None:
    """PR curves of ``levels`` for :data:`PLOT_ROWS`: the released YuNet_n thick, the others
    thin."""
    from evaluation.common import PRCurve, plot_pr_curves
    panels = []
    for lv in levels:
        rows = [PRCurve(name, c["precision"], c["recall"]) for name, c in curves[lv.name].items()
                if name in PLOT_ROWS]
        ours = [c for c in rows if c.label == "yunet_n"]
        panels.append((f"{lv.name}: mean luma {stats[lv.name]['mean']:.1f}, "
                       f"{stats[lv.name]['zeros']:.0f}% zeros", ours,
                       [c for c in rows if c.label != "yunet_n"]))
    plot_pr_curves(path, panels)


def evaluate_rows(ctx: Context, methods: Sequence[Method], levels: Sequence[Level]):
    """``(results, curves)``: per method its AP per level (or why it did not run); per level
    the PR curve of each method."""
    results, curves = {}, {lv.name: {} for lv in levels}
    for method in methods:
        res = results.setdefault(method.name, {"about": method.about, "ap": {}})
        for lv in levels:
            start = time.perf_counter()
            try:
                ap = score(ctx.records, run_row(ctx, method, lv), ctx.args.iou)
            except Unavailable as exc:
                res["unavailable"] = str(exc)
                break
            except Skipped as exc:
                res.setdefault("skipped", {})[lv.name] = str(exc)
                continue
            except RuntimeError as exc:          # a failed training run: report, go on
                res["failed"] = str(exc).splitlines()[0]
                print(str(exc), file=sys.stderr)
                break
            res["ap"][lv.name] = ap["ap"]
            curves[lv.name][method.name] = {"precision": ap["precision"],
                                            "recall": ap["recall"]}
            print(f"  {method.name:24s} {lv.name:6s} AP {ap['ap']:.3f} "
                  f"({time.perf_counter() - start:.1f} s)", flush=True)
    return results, curves


# ---- main --------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("night_bench"),
                   help="results, cache, trained weights, darkened photos")
    p.add_argument("--methods", default=None,
                   help="comma-separated rows (--list-methods; default: all but yunet_s+gamma); "
                        "'all' for every row")
    p.add_argument("--levels", default=",".join(lv.name for lv in LEVELS),
                   help="comma-separated levels")
    p.add_argument("--images", type=int, default=None, help="only the first N photos (smoke)")
    p.add_argument("--iou", type=float, default=IOU, help="IoU that recalls a face")
    p.add_argument("--steps", type=int, default=50, help="steps of every trained row")
    p.add_argument("--row-lr", default="pl=0.0001,dual_teacher=0.0001",
                   help="ROW=LR,...: other learning rates for some trained rows (the "
                        "pseudo-label students collapse at 0.002 here)")
    p.add_argument("--row-steps", default="zero_shot=20,pl=30,dual_teacher=30",
                   help="ROW=N,...: other steps for some trained rows (zero_shot trains a "
                        "clean and a dark copy of every image a step)")
    p.add_argument("--train-size", type=int, default=256, help="YuNet training input")
    p.add_argument("--lr", type=float, default=0.002,
                   help="learning rate of every trained row (configs/finetune_yunet.yaml's)")
    p.add_argument("--adapt-levels", default="L4,L5",
                   help="levels at which the adapt row runs (one adaptation per level)")
    p.add_argument("--el-weights", type=Path, default=None,
                   help="E(L) weights for yunet_n+el (trained on camera-model night copies)")
    p.add_argument("--adapt-args", nargs=argparse.REMAINDER, default=list(ADAPT_ARGS),
                   help="arguments of tools/adapt_to_night.py after --weights, --model, "
                        "--images, --out (last on the line; default: "
                        f"{' '.join(ADAPT_ARGS)})")
    p.add_argument("--dlib-faces", type=Path, default=SHARED / "dlib_faces")
    p.add_argument("--yunet-dir", type=Path, default=SHARED / "yunet")
    p.add_argument("--plot-levels", default=None,
                   help="levels of the PR plot (default: the two darkest selected)")
    p.add_argument("--cached-only", action="store_true",
                   help="never train: a trained row without its weights is reported as skipped")
    p.add_argument("--list-methods", action="store_true", help="print the rows and exit")
    return p.parse_args(argv)


def select_methods(spec: str) -> list[Method]:
    table = method_table()
    names = (default_methods() if spec is None else list(table) if spec == "all"
             else [n for n in spec.split(",") if n])
    bad = [n for n in names if n not in table]
    if bad:
        raise SystemExit(f"--methods: unknown row(s) {', '.join(bad)}; known: "
                         f"{', '.join(table)}")
    return [table[n] for n in names]


def write_outputs(args, levels, stats, results, curves) -> list[str]:
    """results.json, results.md and pr_curves.png under ``--out``; returns the text table."""
    dark = [lv for lv in levels if not lv.clean]
    shown = (level_by_name(args.plot_levels.split(",")) if args.plot_levels else dark[-2:])
    if shown:
        plot(args.out / "pr_curves.png", shown, stats, curves)
    command = "python bench/night_benchmark.py " + " ".join(sys.argv[1:])
    data = {"command": command, "iou": args.iou, "seed": SEED, "photos": args.photo_names,
            "levels": {lv.name: {"stops": lv.stops, "overrides": lv.overrides, "note": lv.note,
                                 "stats": stats[lv.name]} for lv in levels},
            "darkface_frame": DARKFACE_FRAME, "methods": results}
    (args.out / "results.json").write_text(json.dumps(data, indent=1))
    md = table_lines(levels, stats, results, args.iou, markdown=True)
    (args.out / "results.md").write_text("\n".join([f"`{command}`", "", *md, "",
                                                    *notes(results)]) + "\n")
    return table_lines(levels, stats, results, args.iou, markdown=False)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list_methods:
        print("\n".join(f"{m.name:24s} {m.about}" for m in method_table().values()))
        print("\n".join(f"{n:24s} not a row: {why}" for n, why in NOT_RUN.items()))
        return 0
    methods = select_methods(args.methods)
    levels = level_by_name([n for n in args.levels.split(",") if n])
    records = benchmark_records(args.dlib_faces, args.images)
    args.out.mkdir(parents=True, exist_ok=True)
    args.photo_names = [Path(r.path).name for r in records]
    print(f"night benchmark: {len(records)} photos, {sum(len(r.boxes) for r in records)} faces, "
          f"{len(levels)} levels, {len(methods)} rows -> {args.out}", flush=True)
    stats = {lv.name: image_stats(level_images(records, lv, args.out)) for lv in levels}
    ctx = Context(args, records)
    results, curves = evaluate_rows(ctx, methods, levels)
    print("\n".join(["", *write_outputs(args, levels, stats, results, curves), "",
                     *notes(results)]))
    print(f"\nDARK FACE frame: " + ", ".join(f"{k} {v:g}" for k, v in DARKFACE_FRAME.items()))
    return 1 if any("failed" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
