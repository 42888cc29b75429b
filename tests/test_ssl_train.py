"""train.py with the default self-supervised tasks on tiny data: one process, exact resume
(queues and task loaders included), and two gloo ranks equal to one process."""
import json
import math

import pytest
import torch

import train
from models.dsfd.net import DSFD
from tests.helpers import run_script
from tests.ssl_helpers import make_ssl_data, ssl_overrides
from utils.checkpoint import detector_state_dict, load_file

SSL_LOSSES = ("jig_33_src", "jig_33_trg", "contrg", "tsf")
DET_LOSSES = ("loc_pal1", "conf_pal1", "loc_pal2", "conf_pal2")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_ssl_data(tmp_path_factory.mktemp("ssl_train_data"))


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """Four steps in one go (SSL.BATCH_SIZE 2: the 6 target images make 3 batches an epoch,
    so the target loaders wrap around)."""
    torch.set_num_threads(1)          # quick under contention; the resume test uses 1 too
    out = tmp_path_factory.mktemp("ssl_train_out")
    assert train.main(ssl_overrides(data, out, **{"SOLVER.MAX_STEPS": 4, "RUN.CKPT_EVERY": 2,
                                                  "RUN.NAME": "straight"})) == 0
    return out


def test_default_tasks_train_with_finite_losses_and_hla_layout(straight):
    run = straight / "straight"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for r in records:
        for name in (*DET_LOSSES, *SSL_LOSSES, "loss"):
            assert math.isfinite(r[name]), (name, r)
    ckpt = load_file(run / "ckpt_4.pth")
    model = ckpt["model"]
    assert len(model) == 452
    assert {k.split(".")[0] for k in model} == {"net", "jig_33_trainer", "contrg_trainer",
                                                "tsf_trainer"}
    assert model["tsf_trainer.queue_ptr"].tolist() == [4 * 2] * 6          # 4 steps x 2 keys
    assert ckpt["ssl_loaders"]["jig_33_trg"] == {"epoch": 1, "batches": 1}
    # the key encoder followed the (trained) detector by momentum
    assert not torch.equal(model["contrg_trainer.encoder_k.vgg.0.weight"],
                           load_file(run / "ckpt_2.pth")["model"][
                               "contrg_trainer.encoder_k.vgg.0.weight"])
    # test.py's loader still finds the detector
    DSFD(width=0.125).load_state_dict(detector_state_dict(ckpt), strict=True)
    DSFD(width=0.125).load_state_dict(load_file(run / "model_final.pth"), strict=True)
    assert "jig_33_src" in (run / "log.txt").read_text()


def test_resume_continues_exactly_with_queues_and_task_loaders(data, straight, tmp_path):
    torch.set_num_threads(1)                                    # as the straight run
    assert train.main(ssl_overrides(data, tmp_path, **{"SOLVER.MAX_STEPS": 2,
                                                       "RUN.NAME": "resumed"})) == 0
    assert train.main(["--resume", str(tmp_path / "resumed" / "ckpt_2.pth"),
                       "SOLVER.MAX_STEPS=4"]) == 0
    a = load_file(straight / "straight" / "ckpt_4.pth")
    b = load_file(tmp_path / "resumed" / "ckpt_4.pth")
    assert a["ssl_loaders"] == b["ssl_loaders"]
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])


def test_two_gloo_ranks_equal_one_process_queues_included(data, tmp_path):
    common = {"SOLVER.BATCH_SIZE": 4, "SSL.BATCH_SIZE": 4, "SOLVER.MAX_STEPS": 2}
    res = run_script(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                      "train.py", *ssl_overrides(data, tmp_path, **{"RUN.NAME": "ddp"}, **common)],
                     timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    torch.set_num_threads(1)
    assert train.main(ssl_overrides(data, tmp_path, **{"RUN.NAME": "single"}, **common)) == 0
    ddp = load_file(tmp_path / "ddp" / "ckpt_2.pth")
    single = load_file(tmp_path / "single" / "ckpt_2.pth")
    assert ddp["model"]["contrg_trainer.queue_ptr"].tolist() == [8] * 6   # 2 steps x 4 keys
    for k, v in single["model"].items():
        assert torch.allclose(ddp["model"][k].float(), v.float(), rtol=1e-4, atol=1e-5), k
    records = [json.loads(line) for line in
               (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r[name]) for r in records for name in (*SSL_LOSSES, "loss"))
    assert "2 process(es)" in (tmp_path / "ddp" / "log.txt").read_text()


def test_every_optional_task_trains_too(data, tmp_path):
    torch.set_num_threads(1)
    toggles = {f"TRAIN.{t}": True for t in ("ROTATION", "JIGSAW_22", "JIGSAW_41", "JIGSAW_14",
                                            "CONTRASTIVE", "CONTRASTIVE_SOURCE")}
    assert train.main(ssl_overrides(data, tmp_path, **{"SOLVER.MAX_STEPS": 1}, **toggles)) == 0
    (record,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    names = (*SSL_LOSSES, "rot_src", "rot_trg", "jig_22_src", "jig_22_trg", "jig_41_src",
             "jig_41_trg", "jig_14_src", "jig_14_trg", "con_src", "con_trg", "consrc")
    assert all(math.isfinite(record[n]) for n in names), record
    model = load_file(tmp_path / "run" / "ckpt_1.pth")["model"]
    assert model["con_trainer.queue_ptr"].tolist() == [4] * 6      # source + target batches
    assert tuple(model["jig_41_trainer.Head.MLP0.fc.weight"].shape) == (24, 64)
