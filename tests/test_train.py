"""train.py end to end on tiny data: a short run, exact resume, NaN stop, SIGTERM, DDP (gloo)."""
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

import train
from models.dsfd.net import DSFD
from tests.helpers import ROOT, make_tiny_wider, run_script, tiny_train_overrides
from utils.checkpoint import load_file


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_wider")
    make_tiny_wider(folder, n=8)
    return folder


def test_two_step_run_writes_checkpoint_metrics_and_weights(data, tmp_path):
    res = run_script(["train.py", *tiny_train_overrides(data, tmp_path)])
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "run"
    ckpt = load_file(run / "ckpt_2.pth")
    assert {"model", "optimizer", "scheduler", "scaler", "step", "epoch", "epoch_step", "config",
            "rng"} <= set(ckpt)
    assert ckpt["step"] == 2 and ckpt["config"]["SOLVER"]["MAX_STEPS"] == 2
    assert ckpt["config"]["MODEL"]["WIDTH"] == 0.125
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all({"loss", "loc_pal1", "conf_pal1", "loc_pal2", "conf_pal2", "lr"} <= set(r)
               for r in records)
    assert (run / "config.yaml").is_file() and "loss" in (run / "log.txt").read_text()
    DSFD(width=0.125).load_state_dict(load_file(run / "model_final.pth"), strict=True)


def test_resume_continues_exactly(data, tmp_path):
    common = dict(**{"SOLVER.MAX_STEPS": 6, "RUN.CKPT_EVERY": 3})
    assert train.main(tiny_train_overrides(data, tmp_path, **{"RUN.NAME": "straight"},
                                           **common)) == 0
    # interrupted after 3 steps (mid-epoch: 4 steps per epoch), then resumed to 6
    assert train.main(tiny_train_overrides(data, tmp_path, **{"RUN.NAME": "resumed",
                                                              "SOLVER.MAX_STEPS": 3})) == 0
    resumed = tmp_path / "resumed"
    assert train.main(["--resume", str(resumed / "ckpt_3.pth"), "SOLVER.MAX_STEPS=6"]) == 0
    a, b = load_file(tmp_path / "straight" / "ckpt_6.pth"), load_file(resumed / "ckpt_6.pth")
    assert (a["epoch"], a["epoch_step"]) == (b["epoch"], b["epoch_step"]) == (1, 2)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert a["scheduler"] == b["scheduler"]


def test_non_finite_loss_stops_and_keeps_last_checkpoint(data, tmp_path, monkeypatch, caplog):
    from models.dsfd.loss import ProgressiveAnchorLoss

    class PoisonedLoss(ProgressiveAnchorLoss):
        calls = 0

        def forward(self, *args, **kwargs):
            losses = super().forward(*args, **kwargs)
            PoisonedLoss.calls += 1
            if PoisonedLoss.calls == 3:
                losses["conf_pal2"] = losses["conf_pal2"] * float("nan")
            return losses

    monkeypatch.setattr(train, "build_criterion", lambda cfg: PoisonedLoss(
        cfg.ANCHOR, cfg.FACE.OVERLAP_THRESH, cfg.LOSS.NEG_POS_RATIOS))
    rc = train.main(tiny_train_overrides(data, tmp_path, **{"SOLVER.MAX_STEPS": 5,
                                                            "RUN.CKPT_EVERY": 2,
                                                            "SOLVER.OPTIMIZER": "adamw"}))
    assert rc == 1
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("ckpt_*.pth")) == ["ckpt_2.pth"]
    assert load_file(run / "ckpt_2.pth")["step"] == 2
    assert "non-finite loss at step 3" in caplog.text and "conf_pal2" in caplog.text


def test_sigterm_checkpoints_and_run_resumes(data, tmp_path):
    args = tiny_train_overrides(data, tmp_path, **{"SOLVER.MAX_STEPS": 10000})
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists()
                                      or len(metrics.read_text().splitlines()) < 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    ckpts = list((tmp_path / "run").glob("ckpt_*.pth"))
    assert len(ckpts) == 1
    step = load_file(ckpts[0])["step"]
    assert 2 <= step < 10000
    assert train.main(["--resume", "auto", *args, f"SOLVER.MAX_STEPS={step + 1}"]) == 0
    assert load_file(tmp_path / "run" / f"ckpt_{step + 1}.pth")["step"] == step + 1


def ddp_and_single(args_of, out):
    """``ckpt_2.pth`` of train.py under torchrun with two gloo processes and of the same run in
    one process; ``args_of(name)``: the overrides of the run named ``name`` (under ``out``)."""
    res = run_script(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                      "train.py", *args_of("ddp")], timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    # one thread per process in both runs, so the float reductions run in the same order
    res = run_script(["train.py", *args_of("single")])
    assert res.returncode == 0, res.stderr[-3000:]
    return load_file(out / "ddp" / "ckpt_2.pth"), load_file(out / "single" / "ckpt_2.pth")


def test_ddp_two_gloo_processes_equal_one_process(data, tmp_path):
    common = {"SOLVER.BATCH_SIZE": 4, "SOLVER.MAX_STEPS": 2}
    ddp, single = ddp_and_single(lambda name: tiny_train_overrides(
        data, tmp_path, **{"RUN.NAME": name}, **common), tmp_path)
    for k, v in single["model"].items():
        assert torch.allclose(ddp["model"][k], v, rtol=1e-4, atol=1e-6), k
    assert ddp["step"] == single["step"] == 2
    log = (tmp_path / "ddp" / "log.txt").read_text()
    assert "2 process(es)" in log and "batch 2 per process" in log


def test_config_errors_name_the_key(data, tmp_path):
    with pytest.raises(FileNotFoundError, match="FACE.SRC_TRAIN_FILE"):
        train.main(tiny_train_overrides(data, tmp_path, **{"FACE.SRC_TRAIN_FILE": "/nope.txt"}))
    with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS"):
        train.main(tiny_train_overrides(data, tmp_path, **{"MODEL.WEIGHTS": "/nope.pth"}))
    with pytest.raises(FileNotFoundError, match="jig_33_head.pth.*SSL.LOAD_HEADS"):
        train.main(tiny_train_overrides(data, tmp_path, **{"TRAIN.JIGSAW_33": True}))
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        train.main(tiny_train_overrides(data, tmp_path, **{"SOLVER.OPTIMIZER": "lbfgs"}))


def test_bf16_autocast_and_channels_last_run_on_the_cpu(data, tmp_path):
    assert train.main(tiny_train_overrides(data, tmp_path, **{"RUN.AMP": "bf16",
                                                              "RUN.CHANNELS_LAST": True})) == 0
    ckpt = load_file(tmp_path / "run" / "ckpt_2.pth")
    weights = [v for k, v in ckpt["model"].items() if k.startswith("net.")]
    assert weights and all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
               .splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
