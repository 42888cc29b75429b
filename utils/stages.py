"""Stages with wall and CPU clocks, a small scheduler that runs independent stages side by side,
and result folders keyed by the command that made them (the plumbing of tools/demo.py; imports
nothing of the project).

* **Clocks.** Every stage reports its wall time and its CPU time: the CPU seconds of the thread
  that ran it (``RUSAGE_THREAD``; the demo's torch runs one intra-op thread per job, in that
  thread) plus those of every process it started (``os.wait4``'s usage of the child, which holds
  its own waited-for children such as data-loading workers). On a shared machine the wall time
  grows with the load while the CPU time barely moves, so ``CPU / cores`` is the estimate of the
  quiet-machine wall time of work that keeps the cores busy.
* **Scheduler.** A stage names the stages it needs; :func:`run_stages` starts, in the order given,
  every stage whose needs are done while fewer than ``jobs`` run (``jobs = 1``: one after the
  other, in the order given). A failed stage stops the start of new ones and is raised once the
  running ones end.
* **Cache keys.** :func:`keyed_dir` names a result folder ``<name>-<16 hex digits>`` after the
  sha256 of everything that decides its content (the command line with the paths of the inputs,
  which are keyed folders themselves, so a change upstream renames everything downstream).
  A folder holds ``done.json`` once its step finished: a re-run with the same settings skips it,
  a re-run with other settings writes a new folder. The code itself is not in the key: after
  changing the project's code, run the demo with ``--fresh``.
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

DONE = "done.json"


# ---- clocks -----------------------------------------------------------------------------------

def _cpu(usage) -> float:
    return usage.ru_utime + usage.ru_stime


def thread_cpu() -> float:
    """CPU seconds of the calling thread (the process's on systems without RUSAGE_THREAD)."""
    who = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)
    return _cpu(resource.getrusage(who))


def process_cpu() -> float:
    """CPU seconds of this process and of all its waited-for children."""
    return _cpu(resource.getrusage(resource.RUSAGE_SELF)) + \
        _cpu(resource.getrusage(resource.RUSAGE_CHILDREN))


class StageClock:
    """Wall and CPU time of one stage; :meth:`add_child` adds a finished child's CPU time."""

    def __init__(self):
        self._lock = threading.Lock()
        self.child_cpu = 0.0
        self.wall = self.cpu = 0.0
        self._wall0 = self._cpu0 = 0.0

    def start(self) -> None:
        self._wall0, self._cpu0 = time.perf_counter(), thread_cpu()

    def stop(self) -> None:
        self.wall = time.perf_counter() - self._wall0
        self.cpu = thread_cpu() - self._cpu0 + self.child_cpu

    def add_child(self, seconds: float) -> None:
        with self._lock:
            self.child_cpu += seconds


_CLOCK = threading.local()      # the clock of the stage that the current thread runs


def run_process(argv: Sequence[str], log: Path | None = None, env: Mapping[str, str] | None = None,
                cwd: Path | None = None) -> int:
    """Run ``argv`` to its end (output appended to ``log``, else to this terminal); its CPU time
    (children included) is added to the current stage's clock and kept in ``last_cpu()``.
    Returns the exit code."""
    out = open(log, "a") if log is not None else None
    try:
        proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT if out else None,
                                env=None if env is None else {**os.environ, **env}, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if out is not None:
            out.close()
    _CLOCK.last_cpu = _cpu(usage)
    clock = getattr(_CLOCK, "clock", None)
    if clock is not None:
        clock.add_child(_cpu(usage))
    return proc.returncode


def last_cpu() -> float:
    """CPU seconds of the last process that :func:`run_process` ran in this thread."""
    return getattr(_CLOCK, "last_cpu", 0.0)


# ---- stages and the scheduler -----------------------------------------------------------------

@dataclass
class Stage:
    """One stage: ``run()`` does the work; ``needs`` names the stages that must be done first."""
    name: str
    title: str
    run: Callable[[], object]
    needs: tuple[str, ...] = ()
    clock: StageClock = field(default_factory=StageClock)
    result: object = None
    number: int = 0


def check_plan(stages: Sequence[Stage]) -> None:
    """Unique names; every need is an EARLIER stage (so the order given is a valid order)."""
    seen: set[str] = set()
    for stage in stages:
        if stage.name in seen:
            raise ValueError(f"stage {stage.name!r} appears twice")
        missing = [n for n in stage.needs if n not in seen]
        if missing:
            raise ValueError(f"stage {stage.name!r} needs {missing} before it")
        seen.add(stage.name)


def _execute(stage: Stage, report: Callable[[str], None]) -> Stage:
    _CLOCK.clock = stage.clock
    report(f"\n=== {stage.number}. {stage.title} ===")
    stage.clock.start()
    try:
        stage.result = stage.run()
    finally:
        stage.clock.stop()
        _CLOCK.clock = None
    report(f"--- {stage.number}. {stage.title}: {stage.clock.wall:.0f} s wall, "
           f"{stage.clock.cpu:.0f} s CPU")
    return stage


def run_stages(stages: Sequence[Stage], jobs: int = 1,
               report: Callable[[str], None] = lambda s: print(s, flush=True)) -> list[str]:
    """Run ``stages`` (see the module doc); returns the names in the order they started."""
    check_plan(stages)
    for k, stage in enumerate(stages, 1):
        stage.number = k
    pending, done, started = list(stages), set(), []
    running: dict[Future, Stage] = {}
    failure: BaseException | None = None
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        while pending or running:
            ready = [s for s in pending if set(s.needs) <= done] if failure is None else []
            for stage in ready[:max(1, jobs) - len(running)]:
                pending.remove(stage)
                started.append(stage.name)
                running[pool.submit(_execute, stage, report)] = stage
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                stage = running.pop(fut)
                if fut.exception() is not None:
                    failure = failure or fut.exception()
                else:
                    done.add(stage.name)
    if failure is not None:
        raise failure
    return started


def stage_table(stages: Sequence[Stage], wall_total: float, cpu_total: float, cores: int) -> str:
    """The stage times as printed at the end of the demo."""
    lines = [f"{'stage':58s} {'wall s':>7s} {'CPU s':>7s}"]
    for s in stages:
        lines.append(f"{s.number:2d}. {s.title[:54]:54s} {s.clock.wall:7.0f} {s.clock.cpu:7.0f}")
    lines.append(f"{'total':58s} {wall_total:7.0f} {cpu_total:7.0f}")
    lines.append(f"CPU / {cores} cores = {cpu_total / max(cores, 1):.0f} s: the wall time to "
                 "expect on a quiet machine that keeps these cores busy")
    return "\n".join(lines)


# ---- cache keys -------------------------------------------------------------------------------

def digest(obj) -> str:
    """sha256 (16 hex digits) of a JSON-able object (keys sorted; paths as text)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def keyed_dir(parent: Path, name: str, key) -> Path:
    """``parent/<name>-<digest(key)>``: the folder of a result made from ``key``."""
    return Path(parent) / f"{name}-{digest(key)}"


def is_done(folder: Path) -> bool:
    return (Path(folder) / DONE).is_file()


def mark_done(folder: Path, key) -> None:
    """Stamp ``folder`` as complete, with the key that made it (for the curious reader)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / DONE).write_text(json.dumps({"key": key}, indent=1, default=str) + "\n")


def python(script: Path, argv: Sequence[str]) -> list[str]:
    """The command line of one of the project's scripts, run by this interpreter."""
    return [sys.executable, str(script), *[str(a) for a in argv]]
