"""HLA adaptation on YuNet, end to end on tiny data: head pre-training, transfer, joint training
(one process, two gloo processes with shuffled-BN MoCo, exact resume), test.py with E(L), and
the released weights through test.py on a real photo."""
import json
import math
import textwrap

import numpy as np
import pytest
import torch

import pretrain_fast_headers as pretrain
import test as test_script
import train
import transfer_headers
from data import config as config_lib
from lowlevel.enhancement import EnhanceNet
from models.yunet.net import YuNet
from tests.helpers import ROOT, make_tiny_wider, run_script
from tests.ssl_helpers import make_ssl_data, ssl_overrides
from utils.checkpoint import atomic_save, load_file

HEADS = {"jig_33": "jig_33_trainer", "contrg": "contrg_trainer", "tsf": "tsf_trainer"}
LEVELS, CHANNELS = 3, 64                   # YuNet's feature maps: strides 8, 16, 32, 64 each
MOCO_DIM, MOCO_K = 16, 16


def yunet_overrides(data, out, **extra):
    """ssl_overrides for YuNet_n at 128 x 128 with small MoCo queues."""
    opts = {"MODEL.NAME": "yunet_n", "YUNET.INPUT_SIZE": 128, "SSL.MOCO_DIM": MOCO_DIM,
            "SSL.MOCO_K": MOCO_K, "SOLVER.LR": 1e-3, "SOLVER.WARMUP_ITERS": 1}
    opts.update(extra)
    return ssl_overrides(data, out, **opts)


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """H, E(L) with pseudo boxes, a D(H) folder, and a saved random YuNet_n detector."""
    root = tmp_path_factory.mktemp("yunet_hla")
    make_ssl_data(root / "data")
    torch.manual_seed(0)
    net = YuNet("yunet_n")
    with torch.no_grad():                   # BatchNorm statistics that are not the defaults
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    atomic_save(net.state_dict(), root / "yunet_n.pth")
    return root


def test_the_hla_chain_on_yunet_pretrain_transfer_joint_training(data, tmp_path):
    torch.set_num_threads(1)
    detector = load_file(data / "yunet_n.pth")
    opts = yunet_overrides(data / "data", tmp_path, **{
        "MODEL.WEIGHTS": str(data / "yunet_n.pth"), "SSL.PRETRAIN_ITERS": 2,
        "SSL.PRETRAIN_BATCH_SIZE": 2, "RUN.NAME": "pre"})
    assert pretrain.main(opts) == 0
    ckpt = load_file(tmp_path / "pre" / "ckpt_2.pth")
    for k, v in detector.items():       # frozen, BatchNorm statistics included
        assert torch.equal(ckpt["model"][f"net.{k}"], v), k
    assert set(ckpt["ssl_loaders"]) == {"jig_33_src", "jig_33_trg", "contrg", "tsf"}
    assert all(math.isfinite(r["loss"]) for r in metrics(tmp_path / "pre"))

    heads = tmp_path / "heads"
    assert transfer_headers.main([str(tmp_path / "pre" / "ckpt_2.pth"),
                                  "--out-dir", str(heads)]) == 0
    jig = load_file(heads / "jig_33_head.pth")
    # the jigsaw head reads YuNet's three 64-channel maps: MLP0..2, 6 tensors each
    assert sorted({k.split(".")[1] for k in jig}) == [f"MLP{i}" for i in range(LEVELS)]
    assert len(jig) == 6 * LEVELS
    for i in range(LEVELS):
        assert jig[f"Head.MLP{i}.conv1.weight"].shape == (64, CHANNELS, 3, 3)
        assert jig[f"Head.MLP{i}.fc.weight"].shape == (30, 64)
    for name in ("contrg", "tsf"):
        moco = load_file(heads / f"{name}_head.pth")
        assert moco["queue"].shape == (LEVELS, MOCO_DIM, MOCO_K)
        assert moco["queue_ptr"].tolist() == [4] * LEVELS           # 2 steps x 2 keys
        assert len(moco["head_q.MLPs.2.conv1.weight"]) == 64
        assert {k.removeprefix("encoder_k.") for k in moco if k.startswith("encoder_k.")} == {
            k for k in detector if k.startswith(("backbone.", "neck."))}
        assert "head_q.MLPs.3.fc.weight" not in moco

    # joint training starts from these heads (SSL.LOAD_HEADS) and the detector
    joint = [*opts, f"SSL.HEADS_DIR={heads}", "SSL.LOAD_HEADS=True", "RUN.NAME=joint",
             "SOLVER.MAX_STEPS=2"]
    state = train.build_trainer(config_lib.load_config((), joint), None).state_dict()
    for name, attr in HEADS.items():
        for k, v in load_file(heads / f"{name}_head.pth").items():
            assert torch.equal(state[f"{attr}.{k}"], v), (attr, k)
    assert train.main(joint) == 0
    records = metrics(tmp_path / "joint")
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        assert {"loss_cls", "loss_obj", "loss_bbox", "loss_kps", "jig_33_src", "jig_33_trg",
                "contrg", "tsf"} <= set(r)
        assert all(math.isfinite(r[k]) for k in r if k.startswith(("loss", "jig", "con", "tsf")))
    final = load_file(tmp_path / "joint" / "model_final.pth")
    YuNet("yunet_n").load_state_dict(final, strict=True)
    assert not torch.equal(final["bbox_head.multi_level_obj.0.conv1.weight"],
                           detector["bbox_head.multi_level_obj.0.conv1.weight"])   # it learned


DDP_SCRIPT = textwrap.dedent("""
    # train.py under torchrun, each rank saving its trainer state after the run
    import os, sys, torch
    sys.path.insert(0, {root!r})
    import adapt.hla.moco as moco
    import train
    rank, calls, built = int(os.environ["RANK"]), [], {{}}
    shuffle = moco._batch_shuffle_ddp
    moco._batch_shuffle_ddp = lambda x: calls.append(len(x)) or shuffle(x)
    build = train.build_trainer
    train.build_trainer = lambda cfg, resume: built.setdefault("t", build(cfg, resume))
    rc = train.main(sys.argv[1:])
    torch.save({{"state": built["t"].state_dict(), "shuffles": calls}},
               {out!r} + f"/rank{{rank}}.pt")
    raise SystemExit(rc)
""")


def test_ddp_two_gloo_processes_with_shuffled_bn_moco(data, tmp_path):
    script = tmp_path / "ddp_yunet.py"
    script.write_text(DDP_SCRIPT.format(root=str(ROOT), out=str(tmp_path)))
    opts = yunet_overrides(data / "data", tmp_path, **{
        "MODEL.WEIGHTS": str(data / "yunet_n.pth"), "TRAIN.JIGSAW_33": False,
        "TRAIN.TRANSFER_CONTRASTIVE": False, "SOLVER.BATCH_SIZE": 4, "SSL.BATCH_SIZE": 4,
        "RUN.NAME": "ddp"})
    res = run_script(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                      str(script), *opts], timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["shuffles"] == r1["shuffles"] == [2, 2]        # MoCo's shuffled BN, each step
    a, b = r0["state"], r1["state"]
    assert a.keys() == b.keys()
    for k in a:                         # weights, BatchNorm statistics, queues, key encoder
        assert torch.equal(a[k], b[k]), k
    assert a["contrg_trainer.queue_ptr"].tolist() == [8] * LEVELS     # 2 steps x 4 keys
    assert not torch.equal(a["contrg_trainer.queue"][:, :, 0], a["contrg_trainer.queue"][:, :, 4])
    ckpt = load_file(tmp_path / "ddp" / "ckpt_2.pth")
    for k, v in ckpt["model"].items():                   # rank 0 wrote every rank's state
        assert torch.equal(v, a[k]), k
    records = metrics(tmp_path / "ddp")
    assert len(records) == 2 and all(math.isfinite(r[k]) for r in records
                                     for k in ("loss", "loss_obj", "loss_bbox", "contrg"))
    log = (tmp_path / "ddp" / "log.txt").read_text()
    assert "2 process(es)" in log and "batch 2 per process" in log


def test_resumed_yunet_run_equals_an_uninterrupted_one(data, tmp_path):
    torch.set_num_threads(1)
    common = yunet_overrides(data / "data", tmp_path, **{
        "MODEL.WEIGHTS": str(data / "yunet_n.pth"), "TRAIN.JIGSAW_33": False,
        "TRAIN.TRANSFER_CONTRASTIVE": False, "RUN.CKPT_EVERY": 2})
    assert train.main([*common, "RUN.NAME=straight", "SOLVER.MAX_STEPS=4"]) == 0
    assert train.main([*common, "RUN.NAME=resumed", "SOLVER.MAX_STEPS=2"]) == 0
    resumed = tmp_path / "resumed"
    assert train.main(["--resume", str(resumed / "ckpt_2.pth"), "SOLVER.MAX_STEPS=4"]) == 0
    a, b = load_file(tmp_path / "straight" / "ckpt_4.pth"), load_file(resumed / "ckpt_4.pth")
    assert a["step"] == b["step"] == 4 and a["ssl_loaders"] == b["ssl_loaders"]
    assert any("running_var" in k for k in a["model"])
    for k in a["model"]:                 # BatchNorm statistics and the MoCo queue included
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert a["scheduler"] == b["scheduler"]


def read_rows(path, columns=5):
    rows = [[float(v) for v in line.split()] for line in path.read_text().splitlines()]
    return np.array(rows).reshape(-1, columns)


def test_multi_scale_test_with_enhancement_on_yunet(tmp_path):
    make_tiny_wider(tmp_path / "imgs", n=2, size=(150, 210), seed=3)
    torch.manual_seed(0)
    net = YuNet("yunet_n")
    with torch.no_grad():                               # confident: boxes at every scale
        for conv in (*net.bbox_head.multi_level_cls, *net.bbox_head.multi_level_obj):
            conv.conv2.bias += 3.0
    atomic_save(net.state_dict(), tmp_path / "yunet.pth")
    torch.manual_seed(1)
    atomic_save(EnhanceNet().state_dict(), tmp_path / "enhancer.pth")

    def run(out, *extra):
        return test_script.main(["--weights", str(tmp_path / "yunet.pth"), "--images",
                                 str(tmp_path / "imgs" / "images"), "--output", str(out),
                                 "--workers", "0", *extra, "MODEL.NAME='yunet_n'"])
    assert run(tmp_path / "enhanced", "--enhancer", str(tmp_path / "enhancer.pth")) == 0
    assert run(tmp_path / "raw", "--no-enhance") == 0
    for name in ("000", "001"):
        dets = read_rows(tmp_path / "enhanced" / f"{name}.txt")
        assert len(dets) > 10 and (dets[:, 4] > 0).all() and (dets[:, 4] <= 1).all()
        assert (dets[:, 2] > dets[:, 0]).all() and (dets[:, 3] > dets[:, 1]).all()
        assert (np.diff(dets[:, 4]) <= 0).all()                     # by score
        raw = read_rows(tmp_path / "raw" / f"{name}.txt")
        assert raw.shape != dets.shape or not np.allclose(raw, dets)   # E(L) ran first


def test_released_yunet_n_through_test_py_finds_the_astronaut(shared_data, tmp_path):
    import cv2
    import skimage.data
    image = tmp_path / "astronaut.png"
    cv2.imwrite(str(image), skimage.data.astronaut()[..., ::-1])
    assert test_script.main(["--weights", str(shared_data / "yunet" / "yunet_n.pth"),
                             "--images", str(image), "--output", str(tmp_path / "out"),
                             "--mode", "single", "--no-enhance", "--landmarks", "--workers", "0",
                             "MODEL.NAME='yunet_n'"]) == 0
    rows = read_rows(tmp_path / "out" / "astronaut.txt", 15)
    x1, y1, x2, y2, score = rows[0, :5]
    assert (x1, y1, x2 - x1, y2 - y1) == pytest.approx((178, 65, 91, 111), abs=1)
    assert score == pytest.approx(0.936, abs=2e-3) and (rows[1:, 4] < 0.5).all()
    points = rows[0, 5:].reshape(5, 2)
    assert ((points > [x1, y1]) & (points < [x2, y2])).all()         # inside the face
    (lex, ley), (rex, rey), (nx, ny), (lmx, lmy), (rmx, rmy) = points
    assert lex < nx < rex and lmx < rmx and max(ley, rey) < ny < min(lmy, rmy)
