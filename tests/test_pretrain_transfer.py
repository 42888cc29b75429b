"""pretrain_fast_headers.py (frozen detector, last step saved, exact resume) and
transfer_headers.py (exact head files, loadable by train.py) on tiny data."""
import shutil

import pytest
import torch

import pretrain_fast_headers as pretrain
import train
import transfer_headers
from data import config as config_lib
from models.dsfd.net import DSFD
from tests.ssl_helpers import make_ssl_data, ssl_overrides
from utils.checkpoint import atomic_save, load_file, strip_prefix

HEAD_ATTRS = {"jig_33": "jig_33_trainer", "contrg": "contrg_trainer", "tsf": "tsf_trainer"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 3-step pre-training from a saved tiny detector, checkpoints every 2 steps."""
    torch.set_num_threads(1)           # quick under contention; the resume test uses 1 too
    root = tmp_path_factory.mktemp("pretrain")
    data = make_ssl_data(root / "data")
    torch.manual_seed(1)
    detector = root / "detector.pth"
    atomic_save(DSFD(width=0.125).state_dict(), detector)
    opts = ssl_overrides(data, root / "out", **{
        "MODEL.WEIGHTS": str(detector), "SSL.PRETRAIN_ITERS": 3, "SSL.PRETRAIN_SAVE_EVERY": 2,
        "SSL.PRETRAIN_LR_HALVE_EVERY": 2, "SSL.PRETRAIN_BATCH_SIZE": 2, "RUN.NAME": "straight"})
    assert pretrain.main(opts) == 0
    return root, opts


def test_pretraining_trains_only_the_heads_and_saves_the_last_step(run):
    root, _ = run
    out = root / "out" / "straight"
    assert sorted(p.name for p in out.glob("ckpt_*.pth")) == ["ckpt_2.pth", "ckpt_3.pth"]
    ckpt = load_file(out / "ckpt_3.pth")
    assert ckpt["step"] == 3 and set(ckpt["ssl_loaders"]) == {"jig_33_src", "jig_33_trg",
                                                              "contrg", "tsf"}
    detector = load_file(root / "detector.pth")
    model = ckpt["model"]
    assert len(model) == 452
    for k, v in detector.items():                                   # loaded, then frozen
        assert torch.equal(model[f"net.{k}"], v), k
    first = load_file(out / "ckpt_2.pth")["model"]
    assert not torch.equal(first["jig_33_trainer.Head.MLP0.fc.weight"],
                           model["jig_33_trainer.Head.MLP0.fc.weight"])       # heads learn
    assert model["contrg_trainer.queue_ptr"].tolist() == [6] * 6
    # Adam at PRETRAIN_LR, halved every 2 steps
    lr = ckpt["optimizer"]["param_groups"][0]["lr"]
    assert lr == pytest.approx(1e-4 * 0.5)
    records = (out / "metrics.jsonl").read_text()
    assert all(name in records for name in ("jig_33_src", "jig_33_trg", "contrg", "tsf"))


def test_pretraining_resumes_exactly(run):
    root, opts = run
    torch.set_num_threads(1)                                    # as the straight run
    resumed = root / "out" / "resumed"
    resumed.mkdir(parents=True)
    shutil.copy(root / "out" / "straight" / "ckpt_2.pth", resumed / "ckpt_2.pth")
    assert pretrain.main(["--resume", str(resumed / "ckpt_2.pth"), "RUN.NAME=resumed"]) == 0
    a = load_file(root / "out" / "straight" / "ckpt_3.pth")
    b = load_file(resumed / "ckpt_3.pth")
    assert a["ssl_loaders"] == b["ssl_loaders"]
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k


def test_random_detector_reproduces_the_reference(run, tmp_path):
    root, opts = run
    cfg = config_lib.load_config((), [*opts, "SSL.PRETRAIN_LOAD_DETECTOR=False"])
    trainer = pretrain.build_trainer(cfg, None)
    detector = load_file(root / "detector.pth")
    assert not torch.equal(trainer.net.vgg[0].weight, detector["vgg.0.weight"])
    assert not any(p.requires_grad for p in trainer.net.parameters())
    assert pretrain.pretrain_weights(cfg)["TRANSFER_CONTRASTIVE"] == 0.05
    assert trainer.loss_weights == {"jig_33_src": 1.0, "jig_33_trg": 1.0, "contrg": 1.0,
                                    "tsf": 0.05}


def check_heads(written, model):
    assert set(written) == set(HEAD_ATTRS)
    for name, path in written.items():
        head = load_file(path)
        expected = strip_prefix(model, HEAD_ATTRS[name] + ".")
        assert len(head) == (36 if name == "jig_33" else 115)
        assert list(head) == list(expected)
        assert all(torch.equal(head[k], expected[k]) for k in head)


def test_transfer_headers_round_trip_into_train_py(run, tmp_path):
    root, opts = run
    ckpt = root / "out" / "straight" / "ckpt_3.pth"
    assert transfer_headers.main([str(ckpt), "--out-dir", str(tmp_path / "heads")]) == 0
    written = {n: tmp_path / "heads" / f"{n}_head.pth" for n in HEAD_ATTRS}
    model = load_file(ckpt)["model"]
    check_heads(written, model)
    assert load_file(written["contrg"])["queue_ptr"].dtype == torch.int64
    # train.py starts from these files (SSL.LOAD_HEADS) with the detector of MODEL.WEIGHTS
    cfg = config_lib.load_config((), [*opts, f"SSL.HEADS_DIR={tmp_path / 'heads'}",
                                      "SSL.LOAD_HEADS=True"])
    state = train.build_trainer(cfg, None).state_dict()
    for k, v in model.items():
        if not k.startswith("net."):
            assert torch.equal(state[k], v), k
    # a reference-style trainer file (a plain state dict) gives the same files
    plain = tmp_path / "trainer_fast_3.pth"
    torch.save(model, plain)
    again = transfer_headers.transfer(plain, tmp_path / "again")
    check_heads(again, model)
    with pytest.raises(KeyError, match="rot_trainer"):
        transfer_headers.transfer(plain, tmp_path / "x", names=["rot"])


def test_missing_head_file_names_the_file_and_the_key(run, tmp_path):
    _, opts = run
    cfg = config_lib.load_config((), [*opts, f"SSL.HEADS_DIR={tmp_path}", "SSL.LOAD_HEADS=True"])
    with pytest.raises(FileNotFoundError, match="jig_33_head.pth.*SSL.LOAD_HEADS=False"):
        train.build_trainer(cfg, None)
