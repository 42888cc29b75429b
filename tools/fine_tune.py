"""Fine-tune a detector on your own dataset in one command: the two-phase recipe.

    python tools/fine_tune.py --data DIR_OR_FILE [--format auto] [--val FILE_OR_ROOT]
        [--val-format auto] [--recipe RECIPE.yaml] [--config PRESET.yaml ...] [--name NAME]
        --epochs1 N --epochs2 M [--lr1 1e-3] [--lr2 1e-5] [--phase2-from best|last|epoch:K]
        [--lr-steps1 E,E] [--lr-steps2 E,E] [--protocol darkface|wider|both]
        [--metric val_ap|val_ap_wider] [--nproc P] [--phase1 KEY=VALUE] [--phase2 KEY=VALUE]
        [--overwrite] [--dry-run] [KEY.SUB=VALUE ...]

e.g. ``python tools/fine_tune.py --data data/tvface --format laboro MODEL.NAME=retinaface_mnet
MODEL.WEIGHTS=mobilenet0.25_Final.pth --epochs1 200 --epochs2 10 --phase2-from epoch:180``;
the whole Laboro TV recipe is ``--recipe configs/fine_tune_laboro.yaml --data data/tvface
MODEL.WEIGHTS=...`` (a recipe: ``fine_tune:`` with this tool's options, ``config:`` with config
keys; the command line wins). docs/DATASETS.md, "Fine-tuning on your own dataset", has the commands for each format.

Phase 1 trains at ``--lr1`` for N epochs from MODEL.WEIGHTS (a released file of the detector:
Pytorch_Retinaface's, with or without ``module.``; YuNet's mmdetection file; a DSFD file; or a
checkpoint of ours), with the warm-up of the detector's preset (configs/models/: its
SOLVER.WARMUP_ITERS, and SOLVER.WARMUP_LR as the same fraction of ``--lr1`` as of the preset's
lr) and no lr drop unless ``--lr-steps1`` names epochs. Phase 2 starts a new run from the
chosen checkpoint of phase 1 (``best``: its best.pth; ``last``: its final checkpoint;
``epoch:K``: the checkpoint at the end of epoch K) at ``--lr2`` for M epochs, without warm-up
(``--phase2 SOLVER.WARMUP_ITERS=S`` adds one). Both phases are ``train.py`` runs (a subprocess;
``--nproc P`` starts it under torchrun), detection loss only (configs/detection_only.yaml, under
the user's presets), in ``RUN.OUTPUT_DIR/<name>_phase1`` and ``<name>_phase2``, each with its
log lines, ``metrics.jsonl``, TensorBoard, one checkpoint and one evaluation on the validation
set per epoch (engine/validation.py: ``val_ap`` = the DARK FACE protocol, ``val_ap_wider`` =
the WIDER FACE protocol with every face kept; ``--protocol both`` by default) and its
``best.pth`` on ``--metric``. An epoch is ``ceil(ceil(images / P) / (SOLVER.BATCH_SIZE / P))``
steps, the images being those of the training file with at least one face (what the training
loader keeps).

Data: ``--data`` is a training annotation file in any format of data/annotations.py (the WIDER
list, a RetinaFace ``label.txt``, ``labelv2``) or a Laboro TV Face root (``train/label.txt``
+ ``train/images`` for training, the ``val`` split for validation unless ``--val``; the
release's ``val/tvval_list.txt`` has no boxes: put the dev ground truth there as
``val/label.txt``). ``--val`` is the validation file or root in any format.

Re-running the same command continues: a finished phase (its checkpoint of the last step
exists and its config is the same) is skipped, an interrupted one resumes exactly (``train.py
--resume auto``). ``--overwrite`` starts both phases anew (deleting their checkpoints). At the
end (and after each phase) ``RUN.OUTPUT_DIR/<name>/fine_tune_summary.json`` and ``.md`` hold
the per-epoch metrics of both phases and the best checkpoint; the summary is printed.

Set by the tool, so not accepted as overrides: SOLVER.LR, SOLVER.MAX_STEPS, SOLVER.LR_STEPS,
RUN.EVAL_EVERY, RUN.NAME, RUN.EVAL_PROTOCOL, RUN.EVAL_METRIC and the FACE data keys of
``--data`` / ``--val``. RUN.CKPT_EVERY defaults to one epoch.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from data import config as config_lib
from data.annotations import detect_format, format_choices, read_training_records
from data.config_check import validate
from utils.files import resolve_path, write_text_atomic
from engine.validation import validation_records
from utils.checkpoint import checkpoint_steps, load_file
from engine.run import BEST_FILE, RESUME_KEYS

ROOT = Path(__file__).resolve().parents[1]

log = logging.getLogger("fine_tune")

DETECTION_ONLY = ROOT / "configs" / "detection_only.yaml"
TOOL_KEYS = {
    "SOLVER.LR": "--lr1 / --lr2", "SOLVER.MAX_STEPS": "--epochs1 / --epochs2",
    "SOLVER.LR_STEPS": "--lr-steps1 / --lr-steps2", "RUN.EVAL_EVERY": "one evaluation an epoch",
    "RUN.NAME": "--name", "RUN.EVAL_PROTOCOL": "--protocol", "RUN.EVAL_METRIC": "--metric",
    "FACE.SRC_TRAIN_FILE": "--data", "FACE.SRC_FORMAT": "--format", "FACE.SRC_VAL_FILE": "--val",
    "FACE.VAL_FORMAT": "--val-format",
}
FORMATS = format_choices()
SUMMARY = "fine_tune_summary"


class FineTuneError(RuntimeError):
    """The command cannot go on; the message says why and what to do."""


# the options a recipe file (--recipe) may set, with their defaults; the command line wins
OPTIONS = {"format": "auto", "val_format": "auto", "name": "", "epochs1": None, "epochs2": None,
           "lr1": 1e-3, "lr2": 1e-5, "phase2_from": "best", "lr_steps1": "", "lr_steps2": "",
           "protocol": "both", "metric": "val_ap"}
CHOICES = {"format": FORMATS, "val_format": FORMATS, "protocol": ("darkface", "wider", "both"),
           "metric": ("val_ap", "val_ap_wider")}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="training annotation file, or a Laboro TV root")
    p.add_argument("--format", choices=FORMATS, help="format of --data (default auto)")
    p.add_argument("--val", default="", help="validation annotation file or Laboro root "
                                             "(default: the val split of a Laboro --data)")
    p.add_argument("--val-format", choices=FORMATS, help="format of --val (default auto)")
    p.add_argument("--recipe", default="", metavar="RECIPE.yaml",
                   help="a recipe: 'fine_tune:' options of this tool and 'config:' keys "
                        "(e.g. configs/fine_tune_laboro.yaml); the command line wins")
    p.add_argument("--config", action="append", default=[], metavar="PRESET",
                   help="preset file(s) for both phases, applied in order")
    p.add_argument("--name", help="run name (default: <MODEL.NAME>_finetune)")
    p.add_argument("--epochs1", type=int, help="phase 1 length in epochs (required)")
    p.add_argument("--epochs2", type=int, help="phase 2 length in epochs (required)")
    p.add_argument("--lr1", type=float, help="phase 1 lr (default 1e-3)")
    p.add_argument("--lr2", type=float, help="phase 2 lr (default 1e-5)")
    p.add_argument("--phase2-from", metavar="best|last|epoch:K", help="default best")
    p.add_argument("--lr-steps1", metavar="E,E",
                   help="epochs of phase 1 after which the lr is multiplied by SOLVER.GAMMA")
    p.add_argument("--lr-steps2", metavar="E,E", help="the same for phase 2")
    p.add_argument("--protocol", choices=CHOICES["protocol"],
                   help="RUN.EVAL_PROTOCOL of both phases (default both)")
    p.add_argument("--metric", choices=CHOICES["metric"],
                   help="the metric best.pth and the summary's best maximise (default val_ap)")
    p.add_argument("--nproc", type=int, default=1, help="processes per phase (torchrun)")
    p.add_argument("--phase1", action="append", default=[], metavar="KEY=VALUE",
                   help="an override for phase 1 only")
    p.add_argument("--phase2", action="append", default=[], metavar="KEY=VALUE",
                   help="an override for phase 2 only")
    p.add_argument("--overwrite", action="store_true",
                   help="start both phases anew, DELETING their checkpoints")
    p.add_argument("--dry-run", action="store_true",
                   help="print the schedule and the train.py commands, run nothing")
    p.add_argument("opts", nargs="*", metavar="KEY.SUB=VALUE", help="overrides for both phases")
    return p.parse_intermixed_args(argv)


def read_recipe(path: Path) -> dict:
    """A recipe file: YAML (floats as the presets read them) with ``fine_tune:`` (options of
    this tool, as in :data:`OPTIONS`) and ``config:`` (config keys, nested like a preset)."""
    import yaml
    if not path.is_file():
        raise FineTuneError(f"--recipe {path} does not exist")
    try:
        tree = yaml.load(path.read_text(), Loader=config_lib._yaml_loader()) or {}
    except yaml.YAMLError as exc:
        raise FineTuneError(f"--recipe {path} could not be parsed: {exc}") from None
    if not isinstance(tree, dict) or not isinstance(tree.get("fine_tune") or {}, dict):
        raise FineTuneError(f"--recipe {path}: expected a mapping with 'fine_tune:' and "
                            f"'config:'")
    unknown = sorted(set(tree) - {"fine_tune", "config"}) + sorted(
        f"fine_tune.{k}" for k in set(tree.get("fine_tune") or {}) - set(OPTIONS))
    if unknown:
        raise FineTuneError(f"--recipe {path}: unknown entries {', '.join(map(str, unknown))} "
                            f"(fine_tune: takes {', '.join(OPTIONS)})")
    return tree


def apply_recipe(args) -> list[str]:
    """Fill the options not given on the command line from ``--recipe`` (else the defaults);
    returns the recipe's ``config:`` keys as overrides (they come before the command line's)."""
    options, overrides = {}, []
    if args.recipe:
        tree = read_recipe(resolve_path(args.recipe))
        options = tree.get("fine_tune") or {}
        overrides = [f"{k}={v!r}" for k, v in flat(tree.get("config") or {}).items()]
    for key, default in OPTIONS.items():
        if getattr(args, key) is not None:
            continue
        value = options.get(key, default)
        if key.startswith("lr_steps") and isinstance(value, list):
            value = ",".join(str(v) for v in value)
        if value is not None and default is not None:
            value = type(default)(value)
        elif value is not None:
            value = int(value)
        if key in CHOICES and value not in CHOICES[key]:
            raise FineTuneError(f"--recipe {args.recipe}: fine_tune.{key}={value!r} must be one of "
                             f"{', '.join(CHOICES[key])}")
        setattr(args, key, value)
    for key in ("epochs1", "epochs2"):
        if getattr(args, key) is None:
            raise FineTuneError(f"--{key} is required (or fine_tune.{key} in a --recipe)")
    return overrides


# ---- the plan ------------------------------------------------------------------------------

@dataclass
class Phase:
    index: int                      # 1 or 2
    epochs: int
    overrides: list[str]            # after the common ones
    run_dir: Path = Path()
    max_steps: int = 0
    weights: str = ""               # MODEL.WEIGHTS the phase starts from
    cfg: object = None


def _key(item: str) -> str:
    if "=" not in item:
        raise FineTuneError(f"override {item!r} is not of the form KEY.SUB=VALUE")
    return item.split("=", 1)[0].strip()


def check_overrides(args) -> None:
    for flag, items in (("", args.opts), ("--phase1 ", args.phase1), ("--phase2 ", args.phase2),
                        (f"{args.recipe}: config ", args.recipe_opts)):
        for item in items:
            key = _key(item)
            if key in TOOL_KEYS:
                raise FineTuneError(f"{flag}{item}: {key} is set by the tool ({TOOL_KEYS[key]})")
    if min(args.epochs1, args.epochs2) < 1:
        raise FineTuneError("--epochs1 and --epochs2 must be >= 1")
    if args.nproc < 1:
        raise FineTuneError("--nproc must be >= 1")


def data_overrides(args) -> list[str]:
    """FACE.* keys for ``--data`` / ``--val`` (a Laboro root: its train split for training)."""
    data = resolve_path(args.data)
    if not data.exists():
        raise FineTuneError(f"--data {data} does not exist")
    fmt = args.format if args.format != "auto" else detect_format(data)
    if (fmt == "laboro") != data.is_dir():
        raise FineTuneError(f"--data {data}: format {fmt} needs "
                            f"{'a Laboro TV Face root folder' if fmt == 'laboro' else 'a file'}")
    val, val_fmt = args.val, args.val_format
    if fmt == "laboro":
        label = data / "train" / "label.txt"
        if not label.is_file():
            raise FineTuneError(f"--data {data}: the Laboro TV Face layout has train/label.txt "
                                f"(not found)")
        out = [f"FACE.SRC_TRAIN_FILE={label}", "FACE.SRC_FORMAT=retinaface",
               f"FACE.IMAGE_ROOT={data / 'train' / 'images'}"]
        if not val:
            val, val_fmt = str(data), "laboro"
    else:
        out = [f"FACE.SRC_TRAIN_FILE={data}", f"FACE.SRC_FORMAT={fmt}"]
    if not val:
        raise FineTuneError("a validation set is needed: --val FILE_OR_ROOT (the recipe keeps "
                            "the checkpoint of the best validation AP)")
    return out + [f"FACE.SRC_VAL_FILE={val}", f"FACE.VAL_FORMAT={val_fmt}"]


def training_images(cfg) -> int:
    """The images of the training file with at least one face (what the loaders keep)."""
    records = read_training_records(cfg, resolve_path(cfg.FACE.SRC_TRAIN_FILE),
                                    cfg.FACE.DATA_ROOT)
    n = sum(1 for r in records if len(r.boxes))
    if n == 0:
        raise FineTuneError(f"{cfg.FACE.SRC_TRAIN_FILE}: no image with a face to train on")
    return n


def steps_per_epoch(images: int, batch: int, world: int) -> int:
    """train.py's epoch: each of ``world`` ranks gets ``ceil(images / world)`` samples
    (data/samplers.py) in batches of ``batch / world``; no drop_last."""
    if batch % world:
        raise FineTuneError(f"SOLVER.BATCH_SIZE={batch} must be divisible by --nproc {world}")
    return math.ceil(math.ceil(images / world) / (batch // world))


def epoch_steps(text: str, spe: int, flag: str) -> list[int]:
    try:
        epochs = [int(e) for e in text.split(",") if e.strip()]
    except ValueError:
        raise FineTuneError(f"{flag} {text!r}: expected epochs such as 190,220") from None
    return [e * spe for e in epochs]


def parse_phase2_from(text: str, epochs1: int) -> tuple[str, int]:
    if text in ("best", "last"):
        return text, epochs1
    if text.startswith("epoch:"):
        try:
            k = int(text[len("epoch:"):])
        except ValueError:
            k = 0
        if 1 <= k <= epochs1:
            return "epoch", k
    raise FineTuneError(f"--phase2-from {text!r}: expected best, last or epoch:K with "
                        f"1 <= K <= --epochs1 ({epochs1})")


class Plan:
    """Both phases' configs and folders, computed before anything runs."""

    def __init__(self, args):
        args.recipe_opts = apply_recipe(args)
        check_overrides(args)
        self.args = args
        self.presets = [str(DETECTION_ONLY), *args.config]
        data = data_overrides(args)
        data += args.recipe_opts                           # under the command line's keys
        base = validate(config_lib.load_config(self.presets, data + list(args.opts)))
        self.name = args.name or f"{base.MODEL.NAME}_finetune"
        self.images = training_images(base)
        self.spe = steps_per_epoch(self.images, base.SOLVER.BATCH_SIZE, args.nproc)
        self.out_dir = resolve_path(base.RUN.OUTPUT_DIR)
        self.source, self.from_epoch = parse_phase2_from(args.phase2_from, args.epochs1)
        # a checkpoint an epoch unless the user says otherwise (their overrides come later)
        self.common = data + [f"RUN.CKPT_EVERY={self.spe}"] + list(args.opts)
        shared = [f"RUN.EVAL_EVERY={self.spe}", f"RUN.EVAL_PROTOCOL={args.protocol}",
                  f"RUN.EVAL_METRIC={args.metric}"]
        self.phases = []
        for i, (epochs, lr, steps, extra) in enumerate(
                ((args.epochs1, args.lr1, args.lr_steps1, args.phase1),
                 (args.epochs2, args.lr2, args.lr_steps2, args.phase2)), start=1):
            lr_steps = epoch_steps(steps, self.spe, f"--lr-steps{i}")
            keys = [f"RUN.NAME={self.name}_phase{i}", f"SOLVER.LR={lr}",
                    f"SOLVER.MAX_STEPS={epochs * self.spe}", f"SOLVER.LR_STEPS={lr_steps}",
                    *shared]
            if not any(_key(o) == "SOLVER.WARMUP_LR" for o in data + args.opts + extra):
                # the preset's warm-up (length, and start as a fraction of its lr) at this lr
                keys.append(f"SOLVER.WARMUP_LR={lr * base.SOLVER.WARMUP_LR / base.SOLVER.LR!r}")
            if i == 2:
                keys.append("SOLVER.WARMUP_ITERS=0")       # a trained start: no warm-up
            phase = Phase(i, epochs, keys + list(extra), self.out_dir / f"{self.name}_phase{i}",
                          epochs * self.spe)
            self.phases.append(phase)
        p1, p2 = self.phases
        p2.weights = str(self.phase2_weights())
        p2.overrides.insert(0, f"MODEL.WEIGHTS={p2.weights}")
        for phase in self.phases:
            phase.cfg = validate(config_lib.load_config(self.presets,
                                                        self.common + phase.overrides))
        p1.weights = p1.cfg.MODEL.WEIGHTS
        self.check_checkpoints(p1.cfg)
        validation_records(p1.cfg)                          # a bad val set fails now

    def phase2_weights(self) -> Path:
        run1, steps1 = self.phases[0].run_dir, self.phases[0].max_steps
        if self.source == "best":
            return run1 / BEST_FILE
        return run1 / f"ckpt_{self.from_epoch * self.spe if self.source == 'epoch' else steps1}.pth"

    def check_checkpoints(self, cfg1) -> None:
        """The checkpoint phase 2 needs must be written by phase 1 and survive its pruning."""
        if self.source != "epoch" or self.from_epoch == self.args.epochs1:
            return
        step = self.from_epoch * self.spe
        if step % cfg1.RUN.CKPT_EVERY:
            raise FineTuneError(f"--phase2-from epoch:{self.from_epoch} needs a checkpoint at "
                                f"step {step}, but RUN.CKPT_EVERY={cfg1.RUN.CKPT_EVERY} does not "
                                f"divide it (an epoch is {self.spe} steps)")
        kept = cfg1.RUN.KEEP_CKPTS
        if kept and (self.phases[0].max_steps - step) // cfg1.RUN.CKPT_EVERY >= kept:
            raise FineTuneError(f"--phase2-from epoch:{self.from_epoch}: RUN.KEEP_CKPTS={kept} "
                                f"would delete its checkpoint (ckpt_{step}.pth) before phase 2; "
                                f"use RUN.KEEP_CKPTS=0")

    def command(self, phase: Phase) -> list[str]:
        head = [sys.executable]
        if self.args.nproc > 1:
            head += ["-m", "torch.distributed.run", "--standalone",
                     f"--nproc_per_node={self.args.nproc}"]
        mode = ["--overwrite"] if self.args.overwrite else \
            ["--resume", "auto"] if last_step(phase.run_dir) else []
        presets = [a for p in self.presets for a in ("--config", p)]
        return [*head, str(ROOT / "train.py"), *mode, *presets, *self.common, *phase.overrides]


# ---- running --------------------------------------------------------------------------------

def last_step(run_dir: Path) -> int:
    steps = checkpoint_steps(run_dir) if run_dir.is_dir() else []
    return max((s for s, _ in steps), default=0)


def finished(phase: Phase) -> bool:
    """Whether the phase's newest checkpoint is at its last step. A checkpoint written with
    another config (beyond the resumable keys) belongs to another command: an error."""
    step = last_step(phase.run_dir)
    if step == 0:
        return False
    saved = load_file(phase.run_dir / f"ckpt_{step}.pth", "checkpoint")["config"]
    old, new = flat(config_lib.to_dict(saved)), flat(config_lib.to_dict(phase.cfg))
    changed = sorted(k for k in new if k in old and old[k] != new[k] and k not in RESUME_KEYS)
    if changed:
        lines = "\n".join(f"  {k}: {old[k]!r} -> {new[k]!r}" for k in changed)
        raise FineTuneError(f"phase {phase.index} in {phase.run_dir} was run with another "
                            f"config:\n{lines}\nre-run with the old settings, or start anew "
                            f"with another --name or --overwrite")
    return step >= phase.max_steps


def flat(tree, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def run_train(cmd: list[str]) -> int:
    """train.py in a child process (its output streams through). Ctrl-C reaches the child as
    well, which checkpoints and exits: wait for it rather than kill it."""
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return proc.wait()


def run_phase(plan: Plan, phase: Phase) -> bool:
    """Run (or continue) the phase unless it is finished; whether train.py ran."""
    if not plan.args.overwrite and finished(phase):
        log.info("phase %d already finished in %s: skipped", phase.index, phase.run_dir)
        return False
    if phase.index == 2 and not Path(phase.weights).is_file():
        raise FineTuneError(f"phase 2 starts from {phase.weights}, which phase 1 did not write "
                            f"(--phase2-from {plan.args.phase2_from})")
    log.info("phase %d: %s of %d steps at lr %g from %s -> %s", phase.index,
             plural(phase.epochs, "epoch"), plan.spe, phase.cfg.SOLVER.LR,
             phase.weights or "scratch", phase.run_dir)
    code = run_train(plan.command(phase))
    if code != 0:
        raise FineTuneError(f"phase {phase.index} failed (train.py exit status {code}); see "
                            f"{phase.run_dir / 'log.txt'}. Re-run the same command to continue")
    step = last_step(phase.run_dir)
    if step < phase.max_steps:
        raise FineTuneError(f"phase {phase.index} stopped at step {step} of {phase.max_steps}; "
                            f"re-run the same command to continue")
    return True


# ---- the summary ----------------------------------------------------------------------------

def epoch_rows(phase: Phase, spe: int, metric: str) -> list[dict]:
    """One row per evaluated epoch from the phase's ``metrics.jsonl`` (the last record of a
    step wins: a resumed run may evaluate a step again)."""
    path = phase.run_dir / "metrics.jsonl"
    by_step = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            record = json.loads(line) if line.strip() else {}
            if metric in record and "loss" not in record:
                by_step[int(record["step"])] = record
    return [{"epoch": step // spe, "step": step,
             **{k: v for k, v in r.items() if k in ("val_ap", "val_ap_wider")}}
            for step, r in sorted(by_step.items()) if step % spe == 0]


def summarise(plan: Plan) -> dict:
    metric = plan.args.metric
    phases, best = [], None
    for phase in plan.phases:
        rows = epoch_rows(phase, plan.spe, metric)
        # the first of equal maxima, as best.pth keeps it (a new best must be higher)
        top = max(rows, key=lambda r: r[metric], default=None)
        entry = {"phase": phase.index, "run_dir": str(phase.run_dir), "epochs": phase.epochs,
                 "steps": phase.max_steps, "lr": phase.cfg.SOLVER.LR,
                 "lr_steps": list(phase.cfg.SOLVER.LR_STEPS), "start_weights": phase.weights,
                 "finished": last_step(phase.run_dir) >= phase.max_steps, "per_epoch": rows,
                 "best": None}
        if top is not None:
            entry["best"] = {"epoch": top["epoch"], "step": top["step"], metric: top[metric],
                             "checkpoint": str(phase.run_dir / BEST_FILE)}
            if best is None or top[metric] > best[metric]:
                best = {"phase": phase.index, **entry["best"]}
        phases.append(entry)
    return {"name": plan.name, "model": plan.phases[0].cfg.MODEL.NAME,
            "train_file": plan.phases[0].cfg.FACE.SRC_TRAIN_FILE,
            "val_file": plan.phases[0].cfg.FACE.SRC_VAL_FILE, "train_images": plan.images,
            "batch": plan.phases[0].cfg.SOLVER.BATCH_SIZE, "processes": plan.args.nproc,
            "steps_per_epoch": plan.spe, "protocol": plan.args.protocol, "metric": metric,
            "phase2_from": plan.args.phase2_from, "phases": phases, "best": best}


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def summary_markdown(s: dict) -> str:
    metrics = [m for m in ("val_ap", "val_ap_wider") if any(
        m in r for p in s["phases"] for r in p["per_epoch"])]
    lines = [f"# Fine-tuning {s['name']}", "",
             f"{s['model']} on {s['train_file']} ({s['train_images']} images with faces, batch "
             f"{s['batch']} on {s['processes']} process(es): {s['steps_per_epoch']} steps an "
             f"epoch); validation on {s['val_file']} ({s['protocol']} protocol; best on "
             f"{s['metric']}). Phase 2 from phase 1's {s['phase2_from']}.", ""]
    for p in s["phases"]:
        lines += [f"## Phase {p['phase']}: {plural(p['epochs'], 'epoch')} at lr {p['lr']:g}"
                  + (f", lr steps {p['lr_steps']}" if p["lr_steps"] else ""), "",
                  f"From `{p['start_weights'] or 'scratch'}`; run folder `{p['run_dir']}`"
                  + ("" if p["finished"] else " (not finished)") + ".", "",
                  "| epoch | step | " + " | ".join(metrics) + " |",
                  "|---|---|" + "---|" * len(metrics)]
        lines += [f"| {r['epoch']} | {r['step']} | "
                  + " | ".join(f"{r[m]:.4f}" if m in r else "" for m in metrics) + " |"
                  for r in p["per_epoch"]]
        lines.append("")
    b = s["best"]
    lines.append(f"**Best**: phase {b['phase']}, epoch {b['epoch']} (step {b['step']}), "
                 f"{s['metric']} {b[s['metric']]:.4f}: `{b['checkpoint']}`" if b else
                 "**Best**: no evaluation yet")
    return "\n".join(lines) + "\n"


def write_summary(plan: Plan) -> dict:
    summary = summarise(plan)
    folder = plan.out_dir / plan.name
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps(summary, indent=2) + "\n", folder / f"{SUMMARY}.json")
    write_text_atomic(summary_markdown(summary), folder / f"{SUMMARY}.md")
    return summary


# ---- main -----------------------------------------------------------------------------------

def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                                                   "%(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    try:
        plan = Plan(args)
        log.info("%d training images with faces, batch %d on %d process(es): %d steps an epoch; "
                 "phase 1 %d steps, phase 2 %d steps from %s", plan.images,
                 plan.phases[0].cfg.SOLVER.BATCH_SIZE, args.nproc, plan.spe,
                 plan.phases[0].max_steps, plan.phases[1].max_steps, plan.phases[1].weights)
        if args.dry_run:
            for phase in plan.phases:
                print(" ".join(plan.command(phase)))
            return 0
        p1, p2 = plan.phases
        ran = run_phase(plan, p1)
        if ran and plan.source == "best" and last_step(p2.run_dir) and not args.overwrite:
            log.warning("phase 1 went on after phase 2 had started from its best.pth, which "
                        "may have changed since: phase 2 is kept as it is (delete %s to redo "
                        "it)", p2.run_dir)
        write_summary(plan)
        run_phase(plan, p2)
    except (FineTuneError, ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 1
    summary = write_summary(plan)
    print(summary_markdown(summary), end="")
    log.info("summary in %s", plan.out_dir / plan.name / f"{SUMMARY}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
