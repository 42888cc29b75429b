"""A run folder has one owner: a second run fails at once naming the holder, a kill -9 frees
it, and a new run never mixes its checkpoints with an earlier run's."""
import logging
import signal
import subprocess
import sys

import pytest
import torch

import train
from data import config as config_lib
from tests.helpers import ROOT, make_tiny_wider, tiny_train_overrides
from engine import run as engine
from utils.checkpoint import load_file

HOLD = """
import sys, time, torch
from pathlib import Path
sys.path.insert(0, {root!r})
from data import config as config_lib
from engine import run as engine
cfg = config_lib.load_config((), ["RUN.OUTPUT_DIR={out}", "RUN.NAME=run"])
with engine.Run(Path("{out}") / "run", cfg, None, torch.device("cpu")):
    print("holding", flush=True)
    time.sleep(120)
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_wider")
    make_tiny_wider(folder, n=4)
    return folder


def test_a_second_run_fails_at_once_naming_the_holder(data, tmp_path, caplog):
    holder = subprocess.Popen([sys.executable, "-c", HOLD.format(root=str(ROOT), out=tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    opts = tiny_train_overrides(data, tmp_path)
    try:
        assert holder.stdout.readline().strip() == "holding"
        assert train.main(opts) == 1
        (message,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert message.startswith(f"run folder {tmp_path / 'run'} is in use by another run "
                                  f"(pid {holder.pid} on ")
        assert not list((tmp_path / "run").glob("ckpt_*.pth"))
    finally:
        holder.send_signal(signal.SIGKILL)                       # kill -9 frees the lock
        holder.wait()
    cfg = config_lib.load_config((), opts)
    with engine.Run(tmp_path / "run", cfg, None, torch.device("cpu")):
        pass


def test_the_lock_is_per_folder_and_released_on_exit(tmp_path, caplog):
    cfg = config_lib.load_config((), [f"RUN.OUTPUT_DIR={tmp_path}", "RUN.TENSORBOARD=False"])
    cpu = torch.device("cpu")
    with engine.Run(tmp_path / "a", cfg, None, cpu):
        with pytest.raises(engine.RunFolderBusy, match="is in use by another run"):
            with engine.Run(tmp_path / "a", cfg, None, cpu):
                pass
        with engine.Run(tmp_path / "b", cfg, None, cpu):        # another folder: fine
            pass
    with engine.Run(tmp_path / "a", cfg, None, cpu):            # released
        pass


def test_a_new_run_into_a_folder_with_checkpoints_is_refused(data, tmp_path, caplog):
    opts = tiny_train_overrides(data, tmp_path, **{"SOLVER.MAX_STEPS": 1})
    assert train.main(opts) == 0
    first = load_file(tmp_path / "run" / "ckpt_1.pth")
    caplog.clear()
    assert train.main(opts) == 1
    (message,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "already holds checkpoints of an earlier run (ckpt_1.pth)" in message
    assert "--resume auto" in message and "another RUN.NAME" in message
    again = load_file(tmp_path / "run" / "ckpt_1.pth")
    assert all(torch.equal(again["model"][k], v) for k, v in first["model"].items())
    # the two ways out: resume it, or start anew deliberately
    assert train.main(["--resume", "auto", *opts, "SOLVER.MAX_STEPS=2"]) == 0
    assert train.main(["--overwrite", *opts]) == 0
    assert sorted(p.name for p in (tmp_path / "run").glob("ckpt_*.pth")) == ["ckpt_1.pth"]
    assert not (tmp_path / "run" / "best.pth").exists()
