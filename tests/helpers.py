"""Test code shared by several test files: small data made on the fly, a way to run the
project's scripts, files that a reader must refuse, the malformed WIDER list lines both list
readers are tried on, noise images with their ``FaceRecord``s, the pieces the two official
evaluation tools share (for the brute-force references), and a poisoned loss."""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw

from data.annotations import FaceRecord

ROOT = Path(__file__).resolve().parents[1]


def make_tiny_wider(folder: Path, n: int = 8, size=(96, 128), seed: int = 0) -> Path:
    """``n`` images of textured noise with 1-3 bright ellipses ("faces") each, and their list
    file in the WIDER format (paths relative to ``folder``). Returns the list file."""
    rng = np.random.default_rng(seed)
    h, w = size
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        img = (rng.random((h, w, 3)) * 90).astype(np.uint8)
        pil = Image.fromarray(img)
        draw = ImageDraw.Draw(pil)
        boxes = []
        for _ in range(int(rng.integers(1, 4))):
            bw = int(rng.integers(14, 40))
            bh = int(bw * 1.2)
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            draw.ellipse([x, y, x + bw - 1, y + bh - 1], fill=(230, 190, 160))
            boxes.append(f"{x} {y} {bw} {bh} 1")
        name = f"images/{i:03d}.jpg"
        pil.save(folder / name, quality=95)
        lines.append(f"./{name} {len(boxes)} {' '.join(boxes)}")
    list_file = folder / "list.txt"
    list_file.write_text("\n".join(lines) + "\n")
    return list_file


def tiny_train_overrides(data_dir: Path, out_dir: Path, **extra) -> list[str]:
    """Overrides for a seconds-long CPU run of train.py on make_tiny_wider data."""
    opts = {
        "MODEL.WIDTH": 0.125, "MODEL.WEIGHTS": "''", "FACE.SRC_TRAIN_FILE": str(data_dir / "list.txt"),
        "FACE.DATA_ROOT": str(data_dir), "AUG.resize_width": 96, "AUG.resize_height": 96,
        "SOLVER.BATCH_SIZE": 2, "SOLVER.MAX_STEPS": 2, "SOLVER.WARMUP_ITERS": 1, "SOLVER.LR": 1e-3,
        "RUN.OUTPUT_DIR": str(out_dir), "RUN.NAME": "run", "RUN.NUM_WORKERS": 0,
        "RUN.LOG_EVERY": 1, "RUN.CKPT_EVERY": 1000, "RUN.TENSORBOARD": False,
        "TRAIN.JIGSAW_33": False, "TRAIN.CONTRASTIVE_TARGET": False,
        "TRAIN.TRANSFER_CONTRASTIVE": False,
    }
    opts.update(extra)
    return [f"{k}={v}" for k, v in opts.items()]


def run_script(args: list[str], timeout: int = 300, env: dict | None = None,
               **kwargs) -> subprocess.CompletedProcess:
    """Run ``python <args>`` from the repo root with one torch thread per process."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=timeout, **kwargs)


# ---- files a reader must refuse ------------------------------------------------------------------

def assert_read_fails(read, path, content, error, match):
    """Writes ``content`` to ``path`` (str as text, bytes as they are) and checks that
    ``read(path)`` raises ``error`` with a message that ``match`` finds (``re.search``, as
    ``pytest.raises``). Returns pytest's ``ExceptionInfo`` for further checks."""
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(error, match=match) as info:
        read(path)
    return info


# A malformed line of a WIDER list file -> what data.annotations.read_annotations and what
# data.widerface.parse_list_file say of it (None: that reader's test does not try the line).
BAD_WIDER_LINES = {
    "a.jpg 2 1 2 3 4 1": ("N = 2 needs 10 numbers", "needs 10 numbers"),
    "a.jpg 1 1 2 3 4 1 9": ("N = 1 needs 5 numbers", "needs 5 numbers"),
    "a.jpg 1 1 two 3 4 1": ("'two' is not a number", "non-numeric"),
    "a.jpg -1": ("N >= 0", "N >= 0"),
    "a.jpg x 1 2 3 4 1": ("face count 'x' is not an integer", "not an integer"),
    "a.jpg": ("N >= 0", "N >= 0"),
    "a.jpg 1 1 2 3 4 face": (None, "non-numeric"),
    "a.jpg 1 1 2 3 4 1.5": ("labels must be integers", "integers"),
    "a.jpg 1 1 nan 3 4 1": ("non-finite", None),
}
READERS = ("read_annotations", "parse_list_file")


def bad_wider_lines(reader):
    """``(line, what)`` pairs of :data:`BAD_WIDER_LINES` for ``reader`` (one of :data:`READERS`)."""
    said = READERS.index(reader)
    return [(line, what[said]) for line, what in BAD_WIDER_LINES.items() if what[said] is not None]


# ---- images --------------------------------------------------------------------------------------

def noise_image_records(folder, n, faces, seed, low=0, name="{}.png"):
    """``n`` 160 x 120 BGR images of uniform noise in ``[low, 255]``, written as PNGs named
    ``name.format(k)`` in ``folder``, and their ``FaceRecord``s: ``faces(rng)`` gives the
    fields after the path, drawn from the same generator right after each image."""
    rng = np.random.default_rng(seed)
    records = []
    for k in range(n):
        path = folder / name.format(k)
        cv2.imwrite(str(path), rng.integers(low, 256, (120, 160, 3), dtype=np.uint8))
        records.append(FaceRecord(str(path), *faces(rng)))
    return records


# ---- what the official WIDER FACE (MATLAB) and DARK FACE (Octave) tools share --------------------

def float32_score_range(groups):
    """norm_score.m's largest and smallest score (column 4 of each row of each group; a group may
    be None), in single precision, from its starting values realmin and realmax."""
    hi, lo = np.float32(np.finfo(np.float32).tiny), np.float32(np.finfo(np.float32).max)
    for rows in groups:
        for r in rows or []:
            hi = max(hi, np.float32(r[4]))
            lo = min(lo, np.float32(r[4]))
    return hi, lo


def last_row_at_thresholds(rows):
    """image_pr_info's sweep over the thresholds t = 1 - k / 1000, k = 1..1000: for each, the index
    of the last row (sorted by score, column 4) whose score is >= t, or None."""
    out = []
    for k in range(1, 1001):
        t = 1 - k / 1000
        last = None
        for i, r in enumerate(rows):
            if r[4] >= t:
                last = i
        out.append(last)
    return out


# ---- training ------------------------------------------------------------------------------------

def poisoned_criterion(at_call, poison):
    """A stand-in for ``train.build_criterion``: DSFD's loss, whose ``at_call``-th forward hands
    its dict of losses to ``poison`` (which edits it in place) before returning it."""
    from models.dsfd.loss import ProgressiveAnchorLoss
    calls = itertools.count(1)

    class Poisoned(ProgressiveAnchorLoss):
        def forward(self, *args, **kwargs):
            losses = super().forward(*args, **kwargs)
            if next(calls) == at_call:
                poison(losses)
            return losses

    return lambda cfg: Poisoned(cfg.ANCHOR, cfg.FACE.OVERLAP_THRESH, cfg.LOSS.NEG_POS_RATIOS)
