"""Tiny data for the self-supervised tests: source H, target E(L) with pseudo boxes, and D(H)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers import make_tiny_wider, tiny_train_overrides


def make_ssl_data(folder: Path, n_src: int = 8, n_trg: int = 6) -> Path:
    """``folder/src`` (WIDER-like list ``src/list.txt``), ``folder/trg`` (pseudo boxes, one box
    with a negative x), ``folder/noise`` (D(H): a noisy copy of every source image). The list
    paths are relative to ``folder`` (FACE.DATA_ROOT)."""
    for name, n, seed in (("src", n_src, 0), ("trg", n_trg, 1)):
        list_file = make_tiny_wider(folder / name, n=n, seed=seed)
        lines = [f"./{name}/{line[2:]}" for line in list_file.read_text().splitlines()]
        if name == "trg":                                   # pseudo boxes may start at x < 0
            path, count, *rest = lines[0].split()
            lines[0] = " ".join([path, str(int(count) + 1), *rest, "-3 -2 9 10 1"])
        list_file.write_text("\n".join(lines) + "\n")
    noise = folder / "noise"
    noise.mkdir(exist_ok=True)
    rng = np.random.default_rng(2)
    for path in sorted((folder / "src" / "images").glob("*.jpg")):
        img = np.asarray(Image.open(path)).astype(np.float64)
        noisy = np.clip(img + rng.normal(0, 16, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(noise / path.name, quality=95)
    return folder


def ssl_overrides(data: Path, out: Path, **extra) -> list[str]:
    """tiny_train_overrides with the default self-supervised tasks on, heads from scratch."""
    opts = {"FACE.SRC_TRAIN_FILE": str(data / "src" / "list.txt"),
            "FACE.TAR_TRAIN_FILE": str(data / "trg" / "list.txt"), "FACE.DATA_ROOT": str(data),
            "SSL.NOISE_DIR": str(data / "noise"), "SSL.LOAD_HEADS": False,
            "SSL.BATCH_SIZE": 2, "SSL.NUM_WORKERS": 0, "TRAIN.JIGSAW_33": True,
            "TRAIN.CONTRASTIVE_TARGET": True, "TRAIN.TRANSFER_CONTRASTIVE": True}
    opts.update(extra)
    return tiny_train_overrides(data, out, **opts)
