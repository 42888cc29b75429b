"""Resume checks the config: the resumable keys change and are logged, any other change is an
error listing old and new values, and a forced change is really applied (param groups too)."""
import logging

import pytest
import torch

import train
from data import config as config_lib
from tests.helpers import make_tiny_wider, tiny_train_overrides
from engine import run as engine
from utils.checkpoint import load_file


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_config")
    data = make_tiny_wider(root / "data", n=4).parent
    opts = tiny_train_overrides(data, root / "out", **{"SOLVER.MAX_STEPS": 1})
    assert train.main(opts) == 0
    return root / "out" / "run", opts


def test_a_changed_weight_decay_is_refused_with_old_and_new_values(run, caplog):
    run_dir, opts = run
    assert train.main(["--resume", "auto", *opts, "SOLVER.MAX_STEPS=2",
                       "SOLVER.WEIGHT_DECAY=0.01", "AUG.hue_prob=0.2"]) == 1
    (message,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "SOLVER.WEIGHT_DECAY: 0.0005 -> 0.01" in message
    assert "AUG.hue_prob: 0.5 -> 0.2" in message and "SOLVER.MAX_STEPS" not in \
        message.split("only")[0]
    assert "--allow-config-change" in message
    assert not (run_dir / "ckpt_2.pth").exists()


def test_resumable_keys_change_and_forced_changes_are_applied(run, caplog):
    run_dir, opts = run
    caplog.set_level(logging.INFO)
    assert train.main(["--resume", "auto", "--allow-config-change", *opts,
                       "SOLVER.MAX_STEPS=2", "RUN.LOG_EVERY=5",
                       "SOLVER.WEIGHT_DECAY=0.01", "SOLVER.MOMENTUM=0.5"]) == 0
    text = caplog.text
    assert "resume: SOLVER.MAX_STEPS 1 -> 2" in text and "resume: RUN.LOG_EVERY 1 -> 5" in text
    assert "SOLVER.WEIGHT_DECAY changed 0.0005 -> 0.01 (forced" in text
    ckpt = load_file(run_dir / "ckpt_2.pth")
    group = ckpt["optimizer"]["param_groups"][0]
    assert (group["weight_decay"], group["momentum"]) == (0.01, 0.5)       # really applied
    assert ckpt["config"]["SOLVER"]["WEIGHT_DECAY"] == 0.01                # and recorded


def test_check_resume_config_ignores_keys_one_side_lacks():
    saved = config_lib.to_dict(config_lib.default_config())
    saved["ANCHOR"]["FEATURE_MAPS"] = [160, 80]          # a key removed since
    cfg = config_lib.load_config((), ["SOLVER.MAX_STEPS=5", "RUN.NAME=moved"])
    assert engine.check_resume_config(saved, cfg) == {"SOLVER.MAX_STEPS": (70000, 5),
                                                      "RUN.NAME": ("", "moved")}
    with pytest.raises(engine.ConfigChangeError, match=r"SOLVER.LR: 0.0001 -> 0.1"):
        engine.check_resume_config(saved, config_lib.load_config((), ["SOLVER.LR=0.1"]))


def adam_with(schedule: str, lr: float):
    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.Adam([p], lr=lr, weight_decay=1e-4)
    if schedule == "lambda":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** (s // 2))
    else:
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
    for _ in range(3):
        p.grad = torch.ones(2)
        opt.step()
        sched.step()
    return opt, sched


@pytest.mark.parametrize("schedule, factor", [("lambda", 0.5), ("exponential", 0.9 ** 3)])
def test_a_forced_base_rate_goes_into_the_schedule(schedule, factor):
    opt, sched = adam_with(schedule, 1e-3)
    restored, rsched = adam_with(schedule, 1e-3)
    restored.load_state_dict(opt.state_dict())
    rsched.load_state_dict(sched.state_dict())
    before = restored.param_groups[0]["lr"]
    engine.apply_optimizer_config(restored, rsched, lr=1e-3, weight_decay=1e-4)  # unchanged
    assert restored.param_groups[0]["lr"] == before                 # bit-exact: untouched
    engine.apply_optimizer_config(restored, rsched, lr=2e-3, weight_decay=0.0)
    group = restored.param_groups[0]
    assert group["lr"] == pytest.approx(2e-3 * factor) and group["weight_decay"] == 0.0
    assert rsched.base_lrs == [2e-3] and rsched.get_last_lr() == [group["lr"]]
