"""Small data made on the fly for tests, and a way to run the project's scripts."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

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
