"""The training engine's guarantees: only finite checkpoints, pruning that keeps the newest,
nothing left behind, a clear line on a full disk, periodic evaluation with a best checkpoint,
and the four trainers on it."""
import ast
import errno
import json
import logging

import pytest
import torch

import train
from data import config as config_lib
from utils.files import TEMP_GLOB
from tests.helpers import ROOT, make_tiny_wider, poisoned_criterion, tiny_train_overrides
from engine import run as engine
from utils.checkpoint import load_file, non_finite_tensors, prune_checkpoints


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_wider")
    make_tiny_wider(folder, n=8)
    return folder


def errors(caplog):
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_blown_up_learning_rate_never_reaches_a_checkpoint(data, tmp_path, caplog):
    # step 1 at WARMUP_LR, then an lr that overflows every weight; KEEP_CKPTS=1 used to prune
    # the good checkpoint for the non-finite one
    rc = train.main(tiny_train_overrides(data, tmp_path, **{
        "SOLVER.WARMUP_LR": 1e-6, "SOLVER.LR": 1e38,
        "SOLVER.MAX_STEPS": 4, "RUN.CKPT_EVERY": 1, "RUN.KEEP_CKPTS": 1}))
    assert rc == 1
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("*.pth")) == ["ckpt_1.pth"]
    assert non_finite_tensors(load_file(run / "ckpt_1.pth")) == []
    (message,) = [r.getMessage() for r in errors(caplog)]
    assert "non-finite values at step 2 in model.net." in message
    assert "ckpt_2.pth was not written" in message
    assert f"the last good checkpoint is {run / 'ckpt_1.pth'}" in message


def test_a_non_finite_gradient_stops_before_the_step(data, tmp_path, monkeypatch, caplog):
    def poison(losses):                              # value 0, gradient 0 * inf = NaN
        losses["poison"] = torch.sqrt(losses["loc_pal1"] * 0)

    monkeypatch.setattr(train, "build_criterion", poisoned_criterion(2, poison))
    rc = train.main(tiny_train_overrides(data, tmp_path, **{"SOLVER.MAX_STEPS": 3,
                                                            "RUN.CKPT_EVERY": 1}))
    assert rc == 1
    assert sorted(p.name for p in (tmp_path / "run").glob("*.pth")) == ["ckpt_1.pth"]
    (message,) = [r.getMessage() for r in errors(caplog)]
    assert "non-finite gradient at step 2 in net." in message and "poison: 0" in message


def test_a_full_disk_gives_one_line_naming_the_file_and_the_last_checkpoint(
        data, tmp_path, monkeypatch, caplog):
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    rc = train.main(tiny_train_overrides(data, tmp_path, **{"SOLVER.MAX_STEPS": 3,
                                                            "RUN.CKPT_EVERY": 1}))
    assert rc == 1
    run = tmp_path / "run"
    (record,) = errors(caplog)
    assert record.exc_info is None                                    # no traceback
    assert record.getMessage() == (f"could not write {run / 'ckpt_2.pth'}: No space left on "
                                   f"device; the last good checkpoint is {run / 'ckpt_1.pth'}")
    assert not list(run.glob(TEMP_GLOB))                              # nothing left behind
    assert load_file(run / "ckpt_1.pth")["step"] == 1


def small_run(tmp_path, **overrides):
    opts = [f"RUN.OUTPUT_DIR={tmp_path}", "RUN.NAME=unit", "RUN.TENSORBOARD=False",
            *(f"{k}={v}" for k, v in overrides.items())]
    return tmp_path / "unit", config_lib.load_config((), opts)


def test_a_failed_sigterm_checkpoint_says_so(tmp_path, monkeypatch):
    run_dir, cfg = small_run(tmp_path)
    with engine.Run(run_dir, cfg, None, torch.device("cpu")) as run:
        state = lambda: {"model": {"w": torch.ones(2)}}      # noqa: E731
        run.save_checkpoint(engine.Progress(step=1), state)

        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(torch, "save", full)
        with pytest.raises(engine.RunWriteError, match=r"the checkpoint requested by SIGTERM "
                           r"failed: could not write .*ckpt_2\.pth: No space left on device"):
            run.save_checkpoint(engine.Progress(step=2), state, reason="SIGTERM")
        monkeypatch.undo()
        bad = lambda: {"model": {"w": torch.tensor([1.0, float("nan")])}}   # noqa: E731
        with pytest.raises(engine.NonFiniteError, match=r"in model\.w: the checkpoint "
                                                        r"requested by SIGINT was not written"):
            run.save_checkpoint(engine.Progress(step=3), bad, reason="SIGINT")
    assert sorted(p.name for p in run_dir.glob("*.pth")) == ["ckpt_1.pth"]


def test_pruning_keeps_the_newest_and_never_a_later_timeline(tmp_path):
    for step in (1, 2, 3, 4, 5, 9):
        (tmp_path / f"ckpt_{step}.pth").write_bytes(b"x")
    (tmp_path / "best.pth").write_bytes(b"x")
    prune_checkpoints(tmp_path, keep=2, newest=5)        # resumed at 4, step 9 is abandoned
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["best.pth", "ckpt_4.pth",
                                                               "ckpt_5.pth", "ckpt_9.pth"]
    prune_checkpoints(tmp_path, keep=1, newest=5)
    assert sorted(p.name for p in tmp_path.glob("ckpt_*.pth")) == ["ckpt_5.pth", "ckpt_9.pth"]
    prune_checkpoints(tmp_path, keep=0, newest=9)        # 0 keeps every checkpoint
    assert len(list(tmp_path.glob("ckpt_*.pth"))) == 2


def test_stale_temporary_files_go_at_start_and_config_is_written_atomically(tmp_path):
    run_dir, cfg = small_run(tmp_path, **{"SOLVER.LR": 0.002})
    run_dir.mkdir()
    for name in (".ckpt_7.pth.k2j4.tmp", ".config.yaml.x81q.tmp"):   # a kill -9 mid-write
        (run_dir / name).write_bytes(b"partial")
    (run_dir / "notes.tmp").write_text("a user's file, not ours")
    with engine.Run(run_dir, cfg, None, torch.device("cpu")):
        assert not list(run_dir.glob(TEMP_GLOB))
        assert (run_dir / "notes.tmp").exists()
        saved = config_lib.load_config([run_dir / "config.yaml"])
        assert saved.SOLVER.LR == 0.002 and saved.RUN.NAME == "unit"


def test_periodic_evaluation_logs_the_ap_and_keeps_the_best(data, tmp_path):
    assert train.main(tiny_train_overrides(data, tmp_path, **{
        "SOLVER.MAX_STEPS": 2, "RUN.EVAL_EVERY": 1, "RUN.EVAL_IMAGES": 3,
        "FACE.SRC_VAL_FILE": str(data / "list.txt"), "RUN.TENSORBOARD": True})) == 0
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_ap" in r]
    assert [r["step"] for r in evals] == [1, 2]
    assert all(0 <= r["val_ap"] <= 1 and r["best_val_ap"] >= r["val_ap"] for r in evals)
    best = load_file(run / "best.pth")
    assert best["eval"]["val_ap"] == max(r["val_ap"] for r in evals)
    assert best["best"]["step"] == best["step"] and "model" in best
    assert load_file(run / "ckpt_2.pth")["best"] == best["best"]       # survives a resume
    assert "eval at step 2: val_ap" in (run / "log.txt").read_text()
    assert any(p.name.startswith("events.") for p in (run / "tensorboard").iterdir())


ENTRY_POINTS = {"train", "test", "pretrain_fast_headers", "transfer_headers"}
TRAINERS = ("train.py", "pretrain_fast_headers.py", "tools/train_enhancer.py",
            "tools/train_noise.py", "bench/train_step.py")


def imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            if node.module == "tools":
                yield from (f"tools.{a.name}" for a in node.names)


def test_layering_and_one_engine():
    """utils/ imports nothing of the project (tests/test_architecture.py checks the rest of the
    layering); nothing but the demo driver imports an entry point; every trainer runs on the
    engine and keeps no copy of its plumbing."""
    project = {p.name for p in ROOT.iterdir() if p.is_dir()} | {p.stem for p in ROOT.glob("*.py")}
    for path in (ROOT / "utils").glob("*.py"):
        assert not [m for m in imports(path) if m.split(".")[0] in project - {"utils"}], path
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("tests", ".venv") or str(rel) == "tools/demo.py":
            continue
        bad = [m for m in imports(path) if m in ENTRY_POINTS or m.startswith("tools.")]
        assert not bad, (rel, bad)
    for name in TRAINERS:
        text = (ROOT / name).read_text()
        assert "from engine import run as engine" in text, name
        for copy in ("class StopRequest", "def prune_checkpoints", "atomic_save(",
                     "signal.signal"):
            assert copy not in text, (name, copy)
