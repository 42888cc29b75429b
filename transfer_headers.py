"""Cut the self-supervised heads out of a trainer checkpoint into stand-alone head files.

    python transfer_headers.py CKPT [--out-dir pretrained_weights] [--heads jig_33 contrg ...]

CKPT is one of our pre-training checkpoints (``pretrain_fast_headers.py``), one of our training
checkpoints (``train.py``), or a reference ``trainer_<it>.pth`` / ``trainer_fast_<i>.pth``.
Every enabled head (the toggles in the checkpoint's config; for a reference file, every head it
holds; ``--heads`` picks some) is written to ``<out-dir>/<name>_head.pth`` as a plain state dict
whose keys are the attribute's sub-dict with the prefix (name and dot) stripped, the format
``train.py`` loads with SSL.LOAD_HEADS. The key set and every shape are checked against the head
that the checkpoint's config builds (36 keys for a jigsaw / rotation head, 115 for a MoCo head),
and each file is read back after writing. Unlike the reference's example script, nothing needs
editing and all heads come out in one run.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from data import config as config_lib
from utils.files import WriteError
from models.registry import build_net
from adapt.hla.trainer import trainer_state_dict
from adapt.hla.tasks import SSL_TASKS
from utils.checkpoint import atomic_save, load_file, strip_prefix

log = logging.getLogger("transfer_headers")

HEAD_NAMES = {spec.head_file.removesuffix("_head.pth"): toggle
              for toggle, spec in SSL_TASKS.items()}                 # "jig_33" -> "JIGSAW_33"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("checkpoint", help="our pretrain/train checkpoint or an HLA trainer file")
    p.add_argument("--out-dir", default="pretrained_weights", help="where the head files go")
    p.add_argument("--heads", nargs="+", choices=sorted(HEAD_NAMES), metavar="NAME",
                   help=f"only these heads (of {', '.join(sorted(HEAD_NAMES))})")
    return p.parse_args(argv)


def checkpoint_config(obj, state: dict):
    """The config the checkpoint was made with; for a reference file the defaults, with the
    width read off ``net.vgg.0.weight``."""
    if isinstance(obj.get("config"), dict):
        return config_lib.merge_saved(obj["config"]), True
    cfg = config_lib.default_config()
    if "net.vgg.0.weight" in state:
        cfg.MODEL.WIDTH = state["net.vgg.0.weight"].shape[0] / 64
    return cfg, False


def expected_shapes(toggle: str, cfg) -> dict[str, tuple]:
    """Keys and shapes of the head that ``cfg`` builds for ``toggle`` (on the meta device:
    nothing is allocated)."""
    spec = SSL_TASKS[toggle]
    with torch.device("meta"):
        net = build_net(cfg)
        module = spec.task(toggle, spec, cfg, 1.0).build_module(net)
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def select_heads(state: dict, cfg, from_config: bool, names) -> list[str]:
    present = [t for t, spec in SSL_TASKS.items() if any(k.startswith(spec.attr + ".")
                                                          for k in state)]
    if names:
        toggles = [HEAD_NAMES[n] for n in names]
    elif from_config:
        toggles = [t for t in SSL_TASKS if cfg.TRAIN[t]]
    else:
        toggles = present
    missing = [SSL_TASKS[t].attr for t in toggles if t not in present]
    if missing:
        raise KeyError(f"the checkpoint holds no {', '.join(m + '.*' for m in missing)} keys "
                       f"(it has: {', '.join(SSL_TASKS[t].attr for t in present) or 'no heads'})")
    if not toggles:
        raise KeyError("the checkpoint holds no self-supervised head")
    return toggles


def check_head(head: dict, expected: dict, what: str) -> None:
    keys, want = set(head), set(expected)
    if keys != want:
        raise AssertionError(f"{what}: unexpected keys {sorted(keys - want)[:5]}, missing keys "
                             f"{sorted(want - keys)[:5]}")
    wrong = [k for k in expected if tuple(head[k].shape) != expected[k]]
    if wrong:
        raise AssertionError(f"{what}: wrong shapes for {wrong[:5]} (e.g. {wrong[0]} is "
                             f"{tuple(head[wrong[0]].shape)}, expected {expected[wrong[0]]})")


def transfer(checkpoint: str | Path, out_dir: str | Path, names=None) -> dict[str, Path]:
    """Write the head files; returns ``{head name: path}``."""
    obj = load_file(checkpoint, "checkpoint")
    state = trainer_state_dict(obj)
    cfg, from_config = checkpoint_config(obj, state)
    written = {}
    for toggle in select_heads(state, cfg, from_config, names):
        spec = SSL_TASKS[toggle]
        head = strip_prefix(state, spec.attr + ".")
        expected = expected_shapes(toggle, cfg)
        check_head(head, expected, f"{spec.attr} in {checkpoint}")
        path = atomic_save(head, Path(out_dir) / spec.head_file)
        check_head(load_file(path, "head file"), expected, str(path))     # read back
        written[spec.head_file.removesuffix("_head.pth")] = path
        log.info("wrote %s (%d tensors, %d elements)", path, len(head),
                 sum(v.numel() for v in head.values()))
    return written


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        transfer(args.checkpoint, args.out_dir, args.heads)
    except WriteError as exc:                 # e.g. a full disk: one line, the files unchanged
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
