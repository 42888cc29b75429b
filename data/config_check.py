"""Start-up checks of the config's values, each error naming its key.

:func:`data.config.load_config` checks that keys exist and types fit; :func:`validate` checks
that the values make sense before anything is built: counts and cadences are positive, rates and
probabilities lie in their ranges, choices are among the known ones, vectors have their length.
Every entry point that trains calls it (through ``engine.run.resolve_run``), so a typo such as
``RUN.LOG_EVERY=0`` fails in the first second with ``ConfigError: config key RUN.LOG_EVERY=0
must be > 0`` instead of as a ZeroDivisionError hours later.

The MODEL section and the detector-specific sections are checked by their detector's entry
(``models/registry.py``); here only ``MODEL.WIDTH``.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

from data.annotations import format_choices
from data.config import ConfigError

# key -> what it must be; "> 0" / ">= 0" / "[0, 1]" / "[0, 1)" / "(0, 1]"
POSITIVE = (
    "SOLVER.BATCH_SIZE", "SOLVER.EPOCHES", "SOLVER.LR", "SOLVER.GAMMA",
    "RUN.LOG_EVERY", "RUN.CKPT_EVERY",
    "SSL.BATCH_SIZE", "SSL.MOCO_DIM", "SSL.MOCO_K", "SSL.MOCO_T", "SSL.PRETRAIN_BATCH_SIZE",
    "SSL.PRETRAIN_LR", "SSL.PRETRAIN_LR_HALVE_EVERY", "SSL.PRETRAIN_SAVE_EVERY",
    "ENHANCE.SIZE", "ENHANCE.BATCH_SIZE", "ENHANCE.LR",
    "NOISE.BATCH_SIZE", "NOISE.CROP", "NOISE.LR", "NOISE.NGF", "NOISE.NDF", "NOISE.PAD",
    "NOISE.MEDIAN",
    "AUG.resize_width", "AUG.resize_height", "AUG.expand_max_ratio",
    "LOSS.NEG_POS_RATIOS", "DARKFACE.NUM_VAL",
    "MODEL.WIDTH", "PSEUDO.BATCH_SIZE", "ZERO_SHOT.TEMPERATURE",
)
NON_NEGATIVE = (
    "SOLVER.MAX_STEPS", "SOLVER.WARMUP_LR", "SOLVER.WARMUP_ITERS", "SOLVER.WEIGHT_DECAY",
    "SOLVER.GRAD_CLIP", "RUN.NUM_WORKERS", "RUN.SEED", "RUN.KEEP_CKPTS", "RUN.EVAL_EVERY",
    "RUN.EVAL_IMAGES", "SSL.NUM_WORKERS", "SSL.PRETRAIN_ITERS", "ENHANCE.EPOCHS",
    "ENHANCE.WEIGHT_DECAY", "ENHANCE.GRAD_CLIP", "ENHANCE.W_TV", "ENHANCE.W_SPA",
    "ENHANCE.W_COL", "ENHANCE.W_EXP", "NOISE.EPOCHS", "NOISE.EPOCHS_DECAY", "NOISE.LAMBDA_L1",
    "NOISE.GAUSS_SIGMA", "AUG.hue_delta", "AUG.contrast_delta", "AUG.saturation_delta",
    "AUG.brightness_delta", "AUG.min_face_size",
    "DETECT.NMS_TOP_K", "DETECT.TOP_K",         # 0 = no cap (YuNet's released test setting)
    "PSEUDO.WEIGHT", "EMA.TAU", "EMA.REFRESH_AFTER", "ZERO_SHOT.CONSISTENCY",
)
PROBABILITIES = (            # [0, 1]
    "AUG.hue_prob", "AUG.contrast_prob", "AUG.saturation_prob", "AUG.brightness_prob",
    "AUG.expand_prob", "AUG.data_anchor_sampling_prob", "SSL.MOCO_M", "FACE.OVERLAP_THRESH",
    "DETECT.NMS_THRESH", "DETECT.CONF_THRESH", "ENHANCE.EXPOSURE", "AUG.lowlight_prob",
    "PSEUDO.HIGH", "PSEUDO.LOW", "PSEUDO.STRONG_LOWLIGHT_PROB", "EMA.DECAY",
)
BELOW_ONE = ("SOLVER.MOMENTUM", "NOISE.BETA1")          # [0, 1)
CHOICES = {
    "RUN.AMP": ("none", "bf16", "fp16"),
    "RUN.DDP_BACKEND": ("auto", "nccl", "gloo"),
    "SOLVER.OPTIMIZER": ("sgd", "adamw"),
    "FACE.SRC_FORMAT": format_choices(),
    "FACE.VAL_FORMAT": format_choices(),
    "RUN.EVAL_PROTOCOL": ("darkface", "wider", "both"),
    "RUN.EVAL_METRIC": ("val_ap", "val_ap_wider"),
    "AUG.lowlight_model": ("toy", "camera"),
}
LENGTHS = {"AUG.img_mean": 3, "ANCHOR.VARIANCE": 2, "NOISE.BILATERAL": 3}
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _get(cfg: Mapping, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _fail(key: str, value: Any, must: str) -> None:
    raise ConfigError(f"config key {key}={value!r} {must}")


def validate(cfg: Mapping) -> Mapping:
    """Raise :class:`ConfigError` naming the first key whose value is out of range; returns
    ``cfg`` unchanged."""
    for key in POSITIVE:
        if not _get(cfg, key) > 0:
            _fail(key, _get(cfg, key), "must be > 0")
    for key in NON_NEGATIVE:
        if not _get(cfg, key) >= 0:
            _fail(key, _get(cfg, key), "must be >= 0")
    for key in PROBABILITIES:
        if not 0 <= _get(cfg, key) <= 1:
            _fail(key, _get(cfg, key), "must lie in [0, 1]")
    for key in BELOW_ONE:
        if not 0 <= _get(cfg, key) < 1:
            _fail(key, _get(cfg, key), "must lie in [0, 1)")
    for key, allowed in CHOICES.items():
        if _get(cfg, key) not in allowed:
            _fail(key, _get(cfg, key), f"must be one of {', '.join(allowed)}")
    for key, n in LENGTHS.items():
        if len(_get(cfg, key)) != n:
            _fail(key, _get(cfg, key), f"must have {n} values")
    if not DEVICE.fullmatch(cfg.RUN.DEVICE):
        _fail("RUN.DEVICE", cfg.RUN.DEVICE, "must be auto, cpu, cuda or cuda:N")
    _check_details(cfg)
    return cfg


def _check_details(cfg: Mapping) -> None:
    """The checks that do not fit a table."""
    if not 0 < cfg.ENHANCE.LR_DECAY <= 1:
        _fail("ENHANCE.LR_DECAY", cfg.ENHANCE.LR_DECAY, "must lie in (0, 1]")
    if cfg.NOISE.MEDIAN % 2 == 0:
        _fail("NOISE.MEDIAN", cfg.NOISE.MEDIAN, "must be odd (a median filter's aperture)")
    reported = {"darkface": ("val_ap",), "wider": ("val_ap_wider",)}.get(
        cfg.RUN.EVAL_PROTOCOL, ("val_ap", "val_ap_wider"))
    if cfg.RUN.EVAL_METRIC not in reported:
        _fail("RUN.EVAL_METRIC", cfg.RUN.EVAL_METRIC, f"is not reported by RUN.EVAL_PROTOCOL="
                                                     f"{cfg.RUN.EVAL_PROTOCOL!r} (it reports "
                                                     f"{', '.join(reported)})")
    steps = cfg.SOLVER.LR_STEPS
    if any(s < 0 for s in steps) or list(steps) != sorted(steps):
        _fail("SOLVER.LR_STEPS", steps, "must be increasing steps >= 0")
    a = cfg.ANCHOR
    if not len(a.STEPS) == len(a.ANCHOR_SIZES1) == len(a.ANCHOR_SIZES2):
        _fail("ANCHOR.STEPS", a.STEPS, "must have as many values as ANCHOR.ANCHOR_SIZES1 and "
                                       "ANCHOR.ANCHOR_SIZES2 (one per detection level)")
    _check_student(cfg)
    for section in ("TRAIN_WEIGHT",):
        for name, weight in cfg[section].items():
            if not weight >= 0:
                _fail(f"{section}.{name}", weight, "must be >= 0")


def _check_student(cfg: Mapping) -> None:
    """PSEUDO.* / EMA.*: the score band, and what the mean teacher's refresh needs."""
    if cfg.PSEUDO.LOW > cfg.PSEUDO.HIGH:
        _fail("PSEUDO.LOW", cfg.PSEUDO.LOW, f"must be <= PSEUDO.HIGH={cfg.PSEUDO.HIGH} (scores "
                                            f"in [LOW, HIGH) are ignore regions)")
    if cfg.EMA.REFRESH and not (cfg.EMA.ENABLE and cfg.PSEUDO.ENABLE):
        _fail("EMA.REFRESH", True, "needs EMA.ENABLE=True (the teacher) and PSEUDO.ENABLE=True "
                                   "(the target images it labels)")
