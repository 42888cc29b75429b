"""DARK FACE ids and the held-out split used as an offline proxy of the closed test server.

The recommended split is the 500 ids the HLA-Face authors once published as their validation
set (``mf_dsfd_dark_face_val_500.txt`` in the original repository's history): point
DARKFACE.VAL_IDS at a file with one id a line (``5701`` or ``5701.png``). Without a file, the
rule below picks DARKFACE.NUM_VAL ids. Either way, the held-out ids are removed from the
target-domain training list (FACE.TAR_TRAIN_FILE) when DARKFACE.FILTER_TRAIN is on, so the
adaptation and brightening stages never see them.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

from data.image_folder import IMAGE_EXTENSIONS


def image_id(path: str | Path) -> str:
    """``./dataset/DarkFace/images/train/5701.png`` -> ``5701``."""
    return Path(str(path)).stem


def _id_key(i: str):
    return (0, int(i), i) if i.isdigit() else (1, 0, i)


def read_ids(path: str | Path, key: str = "DARKFACE.VAL_IDS") -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"id list {path} does not exist (set by config key {key})")
    ids = [image_id(line.split()[0]) for line in path.read_text().splitlines() if line.strip()]
    if len(set(ids)) != len(ids):
        raise ValueError(f"id list {path} repeats ids")
    return ids


def every_kth(ids: Iterable[str], count: int) -> list[str]:
    """The documented rule: sort the ids numerically and take every k-th, k = len // count,
    starting with the k-th (for DARK FACE's 6,000 training ids: 12, 24, ..., 6000). It spreads
    the split over the whole capture sequence and needs no random seed."""
    ordered = sorted(set(ids), key=_id_key)
    if count <= 0 or count > len(ordered):
        raise ValueError(f"cannot pick {count} held-out ids from {len(ordered)} images "
                         f"(config key DARKFACE.NUM_VAL)")
    k = len(ordered) // count
    return ordered[k - 1::k][:count]


def available_ids(image_dir: str | Path) -> list[str]:
    folder = Path(image_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"DARK FACE image folder {folder} does not exist "
                                f"(set by config key DARKFACE.IMAGE_DIR)")
    return sorted((p.stem for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS),
                  key=_id_key)


def held_out_ids(cfg) -> list[str]:
    """The held-out split: DARKFACE.VAL_IDS if set, else the every-k-th rule over the images
    of DARKFACE.IMAGE_DIR."""
    if cfg.DARKFACE.VAL_IDS:
        return read_ids(cfg.DARKFACE.VAL_IDS)
    return every_kth(available_ids(cfg.DARKFACE.IMAGE_DIR), cfg.DARKFACE.NUM_VAL)


def drop_held_out(records: list, held_out: Iterable[str]) -> list:
    """Records (anything with a ``path``) whose image id is not held out."""
    held = set(held_out)
    return [r for r in records if image_id(r.path) not in held]


def filter_held_out(cfg, records: list, key: str, log: logging.Logger) -> list:
    """The records of the list set by config key ``key`` without the held-out ids, when
    DARKFACE.FILTER_TRAIN is on; unfiltered, with a warning on ``log``, when the split cannot be
    determined (no DARKFACE.VAL_IDS and no DARKFACE.IMAGE_DIR)."""
    if not cfg.DARKFACE.FILTER_TRAIN:
        return records
    if not cfg.DARKFACE.VAL_IDS and not Path(cfg.DARKFACE.IMAGE_DIR).is_dir():
        log.warning("DARKFACE.VAL_IDS is empty and DARKFACE.IMAGE_DIR=%s does not exist: %s is "
                    "NOT filtered against a held-out split, so do not evaluate on its images "
                    "(or set DARKFACE.FILTER_TRAIN=False to silence this)",
                    cfg.DARKFACE.IMAGE_DIR, key)
        return records
    kept = drop_held_out(records, held_out_ids(cfg))
    log.info("%s: %d of %d images kept after removing the held-out DARK FACE split", key,
             len(kept), len(records))
    return kept
