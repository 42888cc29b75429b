"""The training engine: what every trainer shares, written once (STYLE habit 14).

``train.py``, ``pretrain_fast_headers.py``, ``tools/train_enhancer.py`` and
``tools/train_noise.py`` each keep their own short loop; this module is the plumbing under them,
in the spirit of torchvision's ``references/detection/engine.py`` + ``utils.py``:

* :func:`resolve_run` -- the config of a new or resumed run. A resume compares the checkpoint's
  config with the new one: the keys of :data:`RESUME_KEYS` may change (applied and logged), any
  other change is a :class:`ConfigChangeError` listing old and new values, unless
  ``--allow-config-change`` forces it (then :func:`apply_optimizer_config` puts optimizer
  hyper-parameters into the restored param groups, so the run does what its config says).
* :class:`Run` -- the run folder, owned by one run: a lock held by the main process (a second
  run fails at once, naming the holder), no new run into a folder with checkpoints unless
  ``--overwrite``, stale temporary files removed, ``config.yaml`` written atomically. Then:
  step logging (:meth:`Run.log_step`: a line, ``metrics.jsonl``, TensorBoard), checkpoints
  written only when every tensor is finite, atomically, then pruned without ever losing the
  newest (:meth:`Run.save_checkpoint`), the optional periodic evaluation with its ``best.pth``
  (:meth:`Run.evaluate`).
* :func:`check_loss` (all ranks: non-finite loss or a stop request) and
  :func:`check_gradients` (a finite gradient norm before the optimizer step).
* :class:`Progress`, :class:`StopRequest` (SIGTERM / Ctrl-C -> checkpoint, then exit).
* :class:`RunError` -- what stops a run for a reason the user can act on; the trainers' ``main``
  turns it into one log line (plus the last good checkpoint) and exit status 1
  (:func:`report_failure`), not a traceback.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import signal
import socket
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

from data import config as config_lib
from data.config_check import validate
from utils.files import WriteError, remove_stale_temps, resolve_path
from utils import dist
from utils.checkpoint import (atomic_save, checkpoint_steps, latest_checkpoint, load_file,
                              non_finite_tensors, prune_checkpoints, rng_state, set_rng_state)
from utils.logger import MetricLogger, setup_logging

try:
    import fcntl
except ImportError:                      # not on POSIX: no lock (said once at start)
    fcntl = None

log = logging.getLogger("engine")

# Keys that may differ between a checkpoint's config and the resumed run's: how long to run,
# how often to log / save / evaluate, where and with how many workers. Anything else changes the
# optimisation and needs --allow-config-change.
RESUME_KEYS = frozenset({
    "SOLVER.MAX_STEPS", "SOLVER.EPOCHES", "SSL.PRETRAIN_ITERS", "ENHANCE.EPOCHS",
    "RUN.LOG_EVERY", "RUN.CKPT_EVERY", "SSL.PRETRAIN_SAVE_EVERY", "RUN.KEEP_CKPTS",
    "RUN.EVAL_EVERY", "RUN.EVAL_IMAGES", "FACE.SRC_VAL_FILE",
    "RUN.NUM_WORKERS", "SSL.NUM_WORKERS", "RUN.DEVICE", "RUN.DDP_BACKEND", "RUN.TENSORBOARD",
    "RUN.OUTPUT_DIR", "RUN.NAME",
})
LOCK_FILE = "run.lock"
BEST_FILE = "best.pth"


class RunError(RuntimeError):
    """A run cannot start or go on; the message says why and what to do."""
    name_last_checkpoint = False       # whether the report adds the last good checkpoint


class NonFiniteError(RunError):
    """A NaN or Inf in the loss, the gradients or a state about to be saved."""
    name_last_checkpoint = True


class RunWriteError(RunError):
    """A file of the run (checkpoint, metrics) could not be written (a full disk, ...); the
    checkpoints written before are intact."""
    name_last_checkpoint = True


class ConfigChangeError(RunError):
    """A resume would silently change keys outside :data:`RESUME_KEYS`."""


class RunFolderBusy(RunError):
    """Another process holds the run folder's lock."""


def report_failure(exc: RunError, run_dir: Path | None) -> int:
    """Log ``exc`` as one message (for a failure during training, with the run's last good
    checkpoint); returns the exit status, 1."""
    tail = ""
    if exc.name_last_checkpoint and run_dir is not None and Path(run_dir).is_dir():
        last = latest_checkpoint(run_dir)
        tail = f"; the last good checkpoint is {last}" if last else "; no checkpoint was written"
    logging.getLogger("train").error("%s%s", exc, tail)
    return 1


# ---------------------------------------------------------------------------------------------
# command line and config


def run_arguments(doc: str) -> argparse.ArgumentParser:
    """The options every trainer takes: presets, overrides, resume and its two switches."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", action="append", default=[], metavar="PRESET",
                   help="YAML/JSON preset file(s), applied in order before the overrides")
    p.add_argument("--resume", default="", metavar="CKPT|auto",
                   help="continue from a checkpoint, or 'auto' for the newest in the run folder")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in a run folder that holds checkpoints, DELETING them")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume even though keys outside the resumable set changed (the new "
                        "values are applied, optimizer hyper-parameters included)")
    p.add_argument("opts", nargs="*", metavar="KEY.SUB=VALUE", help="config overrides")
    return p


@dataclass
class Resume:
    """The checkpoint a run continues from, loaded once."""
    path: Path
    checkpoint: dict
    changes: dict                  # key -> (old, new), the config changes on this resume


def resolve_run(args, run_name: Callable[[Any], str]) -> tuple[Any, Resume | None, Path]:
    """``(config, resume or None, run folder)`` from ``args.config`` (presets), ``args.opts``
    (overrides) and ``args.resume`` (a path, or ``auto``: the newest checkpoint of the run
    folder). When resuming, the checkpoint's config is the base and the presets and overrides
    apply on top; :func:`check_resume_config` vets the difference. The result is validated
    (:func:`data.config_check.validate`)."""
    cfg = config_lib.load_config(args.config, args.opts)
    run_dir = resolve_path(cfg.RUN.OUTPUT_DIR) / run_name(cfg)
    if not args.resume:
        return validate(cfg), None, run_dir
    path = latest_checkpoint(run_dir) if args.resume == "auto" else Path(args.resume)
    if path is None:
        log.warning("--resume auto: no checkpoint in %s, starting a new run", run_dir)
        return validate(cfg), None, run_dir
    ckpt = load_file(path, "checkpoint given by --resume")
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("config"), Mapping):
        raise RunError(f"--resume {path}: not a training checkpoint of this project (no "
                       f"config in it); to start from its weights use MODEL.WEIGHTS")
    cfg = validate(config_lib.load_config(args.config, args.opts,
                                          base=config_lib.merge_saved(ckpt["config"])))
    changes = check_resume_config(ckpt["config"], cfg, args.allow_config_change)
    return cfg, Resume(path, dict(ckpt), changes), resolve_path(cfg.RUN.OUTPUT_DIR) / run_name(cfg)



def run_main(args, run_name: Callable[[Any], str],
             train: Callable[[Any, Any, Resume | None, Path], int]) -> int:
    """``train(args, cfg, resume, run_dir)`` on the config of a new or resumed run
    (:func:`resolve_run`); a :class:`RunError` becomes one log line and exit
    status 1 (:func:`report_failure`); the process group is left in any case."""
    run_dir = None
    try:
        cfg, resume, run_dir = resolve_run(args, run_name)
        return train(args, cfg, resume, run_dir)
    except RunError as exc:
        return report_failure(exc, run_dir)
    finally:
        dist.cleanup()


def _flat(tree: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resume_config(saved: Mapping, cfg: Mapping, allow: bool = False) -> dict:
    """The keys whose value differs between ``saved`` (a checkpoint's config) and ``cfg`` (the
    resumed run's), as ``{key: (old, new)}``. Keys of :data:`RESUME_KEYS` are logged; any other
    raises :class:`ConfigChangeError` listing them, unless ``allow`` (then they are logged as
    forced). Keys only one side knows (added or removed since) are not compared."""
    old, new = _flat(config_lib.to_dict(saved)), _flat(config_lib.to_dict(cfg))
    changes = {k: (old[k], new[k]) for k in new if k in old and old[k] != new[k]}
    forbidden = {k: v for k, v in changes.items() if k not in RESUME_KEYS}
    if forbidden and not allow:
        lines = "\n".join(f"  {k}: {a!r} -> {b!r}" for k, (a, b) in sorted(forbidden.items()))
        raise ConfigChangeError(
            f"resuming with a changed config:\n{lines}\nonly {', '.join(sorted(RESUME_KEYS))} "
            f"may change on resume. Drop those overrides, start a new run (another RUN.NAME), "
            f"or pass --allow-config-change to apply them")
    for k, (a, b) in sorted(changes.items()):
        if k in forbidden:
            log.warning("resume: %s changed %r -> %r (forced by --allow-config-change)", k, a, b)
        else:
            log.info("resume: %s %r -> %r", k, a, b)
    return changes


def apply_optimizer_config(optimizer: torch.optim.Optimizer, scheduler=None,
                           lr: float | None = None, **group_values) -> None:
    """After a resume, put the config's hyper-parameters into the restored param groups (the
    checkpoint's would otherwise win over the config): ``group_values`` (weight_decay, momentum,
    betas, ...) into every group, and, when ``lr`` differs from the scheduler's base rate, the new
    base rate with the current rate recomputed from the schedule. Values equal to the
    checkpoint's change nothing, so an unchanged resume stays bit-exact."""
    for group in optimizer.param_groups:
        for key, value in group_values.items():
            if key in group:
                group[key] = value
    if lr is None or scheduler is None or all(b == lr for b in scheduler.base_lrs):
        return
    scheduler.base_lrs = [lr for _ in scheduler.base_lrs]
    for group in optimizer.param_groups:
        group["initial_lr"] = lr
    # the schedule's closed form (ExponentialLR's get_lr is chained from the current rate)
    closed = getattr(scheduler, "_get_closed_form_lr", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")             # get_lr outside step() warns
        rates = closed() if closed is not None else scheduler.get_lr()
    for group, rate in zip(optimizer.param_groups, rates):
        group["lr"] = rate
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


def single_process_device(cfg) -> torch.device:
    """The device of a trainer that runs in one process (the low-level trainers)."""
    if dist.launched_by_torchrun() and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise RunError("the low-level trainers run in one process; start them with python")
    return dist.pick_device(cfg.RUN.DEVICE)


def nothing_to_do(total: int, key: str) -> bool:
    """True (and said so) when the run's length ``total`` is 0."""
    if total > 0:
        return False
    logging.getLogger("train").info("%s=0: nothing to do", key)
    return True


# ---------------------------------------------------------------------------------------------
# progress and stop requests


@dataclass
class Progress:
    step: int = 0           # optimizer steps taken
    epoch: int = 0
    epoch_step: int = 0     # batches of this rank consumed in the current epoch
    skipped: int = 0        # unreadable images met so far (this rank)

    def state(self) -> dict:
        return asdict(self)


def restore(ckpt: Mapping, **parts) -> Progress:
    """The one checkpoint restore: ``part.load_state_dict(ckpt[key])`` for every ``key=part``
    (the model, optimizer, scheduler, scaler, EMA, ... a trainer saved under those keys), then
    the RNG states; returns the checkpoint's progress. A trainer then puts the config's
    optimizer values back (:func:`apply_optimizer_config`)."""
    for key, part in parts.items():
        part.load_state_dict(ckpt[key])
    set_rng_state(ckpt["rng"])
    return Progress(ckpt["step"], ckpt.get("epoch", 0), ckpt.get("epoch_step", 0),
                    ckpt.get("skipped", 0))


class StopRequest:
    """Turns SIGTERM / SIGINT into a flag the loop checks after each step; a second Ctrl-C
    interrupts at once."""

    def __init__(self):
        self.requested = ""                         # the signal's name once one arrived
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        log.warning("received %s: finishing this step, then checkpointing and exiting",
                    self.requested)

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------------------------
# the non-finite checks


def _agree(ok: bool, device: torch.device) -> bool:
    """True when ``ok`` on every rank (one collective; a no-op without a process group)."""
    if not dist.is_distributed():
        return ok
    flag = torch.tensor([0.0 if ok else 1.0], device=device)
    return float(dist.all_reduce_sum(flag)[0]) == 0


def _terms(loss_dict: Mapping) -> str:
    return "{" + ", ".join(f"{k}: {float(v.detach()):.6g}" for k, v in loss_dict.items()) + "}"


def _names(names: list[str], limit: int = 8) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_loss(step: int, loss: torch.Tensor, loss_dict: Mapping, device: torch.device,
               stop: StopRequest | None = None) -> bool:
    """Before ``backward``, on every rank at once (one collective): raise
    :class:`NonFiniteError` with the loss terms when the loss is NaN/Inf on any rank; return
    whether a stop was requested on any rank (so all of them checkpoint the same step)."""
    flags = dist.all_reduce_sum(torch.tensor(
        [float(not bool(torch.isfinite(loss))), float(bool(stop and stop.requested))],
        device=device))
    if flags[0] > 0:
        bad = [k for k, v in loss_dict.items() if not bool(torch.isfinite(v).all())]
        where = f" ({_names(bad)} non-finite)" if bad else " (on another rank)"
        raise NonFiniteError(f"non-finite loss at step {step}{where}: loss terms "
                             f"{_terms(loss_dict)}; stopping without saving this state")
    return bool(flags[1] > 0)


def check_gradients(step: int, named_params: list, loss_dict: Mapping,
                    norm: torch.Tensor | None = None) -> None:
    """After ``backward``, before the optimizer step: raise :class:`NonFiniteError` naming the
    parameters with NaN/Inf gradients when the total gradient norm is not finite. ``norm``: the
    norm if already computed (``clip_grad_norm_`` returns it). DDP gives every rank the same
    gradients, so all ranks reach the same verdict without a collective. Not for fp16 with a
    GradScaler, whose inf gradients are expected (it skips those steps)."""
    if norm is None:
        grads = [p.grad for _, p in named_params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
    if bool(torch.isfinite(norm)):
        return
    bad = [n for n, p in named_params
           if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
    raise NonFiniteError(f"non-finite gradient at step {step} in {_names(bad)}: loss terms "
                         f"{_terms(loss_dict)}; stopping before the optimizer step")


def restore_loaders(loaders: Mapping, states: Mapping) -> None:
    """Put resumable loaders (``state_dict`` / ``load_state_dict``) back where a checkpoint
    left them; one the checkpoint does not know starts anew (logged)."""
    for name, loader in loaders.items():
        if name in states:
            loader.load_state_dict(states[name])
        else:
            log.warning("the checkpoint has no position for loader %s: starting it anew", name)


# ---------------------------------------------------------------------------------------------
# the run folder


class Run:
    """One training run's folder and the services of the engine, used as a context manager::

        with engine.Run(run_dir, cfg, resume, device, overwrite=args.overwrite) as run:
            meters = run.metrics(total_steps)
            ...the trainer's loop: engine.check_loss / check_gradients, run.log_step /
               save_checkpoint / evaluate...

    The main process (rank 0) holds ``run.lock`` from entering to leaving; only it writes.
    """

    def __init__(self, run_dir: Path, cfg, resume: Resume | None, device: torch.device,
                 overwrite: bool = False, final_files: Iterable[str] = ()):
        self.dir, self.cfg, self.device = Path(run_dir), cfg, torch.device(device)
        self.resumed, self.overwrite = resume is not None, overwrite
        self.final_files = tuple(final_files)
        self.config = config_lib.to_dict(cfg)
        self.best = dict(resume.checkpoint.get("best") or {}) if resume is not None else {}
        self.meters: MetricLogger | None = None
        self._lock_fd = None

    # -- owning the folder --

    def __enter__(self) -> "Run":
        error = None
        if dist.is_main():
            try:
                self._open()
            except (RunError, OSError) as exc:          # OSError: e.g. a read-only folder
                self._unlock()
                error = exc
        if not _agree(error is None, self.device):
            if isinstance(error, OSError):
                raise RunError(f"cannot use the run folder {self.dir}: {error}") from error
            raise error or RunError(f"rank 0 could not open the run folder {self.dir}")
        dist.barrier()
        setup_logging(self.dir)
        return self

    def __exit__(self, *exc) -> None:
        if self.meters is not None:
            self.meters.close()
        self._unlock()

    def _open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        existing = [p.name for _, p in checkpoint_steps(self.dir)]
        if (self.dir / BEST_FILE).is_file():
            existing.append(BEST_FILE)
        if existing and not self.resumed:
            if not self.overwrite:
                raise RunError(
                    f"run folder {self.dir} already holds checkpoints of an earlier run "
                    f"({_names(existing, 3)}); continue it with --resume auto, or start anew "
                    f"with another RUN.NAME (or --overwrite, which deletes them)")
            for name in (*existing, *self.final_files):
                (self.dir / name).unlink(missing_ok=True)
            log.warning("--overwrite: deleted %s from %s", _names(existing, 3), self.dir)
        removed = remove_stale_temps(self.dir, recursive=False)
        if removed:
            log.info("removed %d stale temporary file(s) from %s", removed, self.dir)
        config_lib.dump(self.cfg, self.dir / "config.yaml")

    def _lock(self) -> None:
        if fcntl is None:
            log.warning("no file locking on this platform: make sure no other run uses %s",
                        self.dir)
            return
        path = self.dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "unknown process"
            os.close(fd)
            raise RunFolderBusy(f"run folder {self.dir} is in use by another run ({holder}); "
                                f"wait for it to end, or give this run another RUN.NAME / "
                                f"RUN.OUTPUT_DIR") from None
        started = datetime.datetime.now().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}: "
                     f"{' '.join(sys.argv)}\n".encode())
        self._lock_fd = fd                          # the lock lives as long as this descriptor

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)                 # releases the flock; the file stays
            self._lock_fd = None

    # -- logging --

    def metrics(self, total_steps: int) -> MetricLogger:
        """The run's MetricLogger (a resumed run appends to ``metrics.jsonl``)."""
        self.meters = MetricLogger(self.dir, total_steps, self.cfg.RUN.TENSORBOARD,
                                   append=self.resumed)
        return self.meters

    def log_step(self, step: int, last: bool = False, **extra) -> None:
        """Every RUN.LOG_EVERY steps and at the ``last``: the interval's means over all ranks
        and ``extra`` (lr, epoch, ...) as a line, a ``metrics.jsonl`` record and TensorBoard."""
        if step % self.cfg.RUN.LOG_EVERY == 0 or last:
            values = dist.all_reduce_mean_dict(self.meters.averages(self.device))
            try:
                self.meters.write(step, {**values, **extra})
            except OSError as exc:                      # metrics.jsonl on a full disk
                raise RunWriteError(f"could not write {self.dir / 'metrics.jsonl'}: "
                                    f"{exc.strerror or exc}") from exc

    # -- checkpoints --

    def save_checkpoint(self, progress: Progress, state: Callable[[], dict],
                        reason: str = "") -> Path:
        """Write ``ckpt_<step>.pth``: ``state()`` (the trainer's modules, evaluated on rank 0
        only) plus the progress, config, RNG states and best evaluation, after checking that
        every floating-point tensor in it is finite; then prune to RUN.KEEP_CKPTS (the newest is
        never deleted). All ranks agree on the outcome; a failure raises :class:`RunError`.
        ``reason``: what asked for it (e.g. "SIGTERM"), named when it fails."""
        path = self.dir / f"ckpt_{progress.step}.pth"
        error = None
        if dist.is_main():
            try:
                full = {**state(), **progress.state(), "config": self.config,
                        "rng": rng_state(), "best": dict(self.best)}
                self._write(full, path, progress.step, reason)
                prune_checkpoints(self.dir, self.cfg.RUN.KEEP_CKPTS, newest=progress.step)
            except RunError as exc:
                error = exc
        if not _agree(error is None, self.device):
            raise error or RunWriteError(f"rank 0 could not write {path}; see its log")
        return path

    def _write(self, obj: Any, path: Path, step: int, reason: str = "") -> None:
        what = f"the checkpoint requested by {reason}" if reason else path.name
        bad = non_finite_tensors(obj) if isinstance(obj, Mapping) else []
        if bad:
            raise NonFiniteError(f"non-finite values at step {step} in {_names(bad)}: {what} "
                                 f"was not written")
        try:
            atomic_save(obj, path)
        except WriteError as exc:
            raise RunWriteError(f"{what} failed: {exc}" if reason else str(exc)) from exc
        log.info("saved %s", path)

    def save_final(self, obj: Mapping, name: str, step: int) -> Path:
        """The run's final weights file (rank 0), under the same finite check."""
        path = self.dir / name
        if dist.is_main():
            self._write(obj, path, step)
        return path

    # -- periodic evaluation --

    def evaluate(self, progress: Progress, evaluate: Callable[[], dict],
                 state: Callable[[], dict]) -> dict | None:
        """Every RUN.EVAL_EVERY steps (0: never): ``evaluate()`` on rank 0 returns metrics (the
        first is the one to maximise, e.g. ``val_ap``), logged as a line, a ``metrics.jsonl``
        record and TensorBoard scalars; a new best writes ``best.pth`` (a checkpoint like the
        others, with the metrics under ``eval``). The other ranks wait."""
        every = self.cfg.RUN.EVAL_EVERY
        if every <= 0 or progress.step % every:
            return None
        metrics, error = None, None
        if dist.is_main():
            metrics = {k: float(v) for k, v in evaluate().items()}
            key, value = next(iter(metrics.items()))
            improved = not self.best or value > self.best["value"]
            if improved:
                self.best = {"metric": key, "value": value, "step": progress.step}
            self.meters.write_values(progress.step, {**metrics, f"best_{key}":
                                                     self.best["value"]})
            if improved:
                full = {**state(), **progress.state(), "config": self.config,
                        "rng": rng_state(), "best": dict(self.best), "eval": metrics}
                try:
                    self._write(full, self.dir / BEST_FILE, progress.step)
                except RunError as exc:
                    error = exc
        if not _agree(error is None, self.device):
            raise error or RunWriteError(f"rank 0 could not write {self.dir / BEST_FILE}")
        return metrics
