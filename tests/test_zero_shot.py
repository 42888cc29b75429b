"""Zero-shot day-to-night fine-tuning (adapt/zero_shot.py, configs/zero_shot_night.yaml): the
feature-consistency loss, the dark view, and train.py runs on YuNet (a few steps, exact resume).
(Two gloo ranks against one process take over a minute here: checked by hand, docs/NIGHT.md.)"""
import json
import math

import pytest
import torch

import train
from adapt.zero_shot import (ZeroShot, build_zero_shot, dark_view, feature_consistency,
                             image_seeds, symmetric_kl)
from data.config import load_config
from data.lowlight_model import CameraSpec
from models.interface import InputSpec
from tests.helpers import ROOT, tiny_train_overrides
from tests.ssl_helpers import make_ssl_data
from utils.checkpoint import load_file

PRESET = str(ROOT / "configs" / "zero_shot_night.yaml")


def test_consistency_is_zero_for_identical_views_and_has_gradients():
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(2, 8, 5, 5, generator=g), torch.randn(2, 8, 3, 3, generator=g)]
    same = feature_consistency(feats, [f.clone() for f in feats], 4.0)
    assert abs(float(same)) < 1e-6
    clean = [f.clone().requires_grad_(True) for f in feats]
    dark = [(f * 0.3 + torch.randn(f.shape, generator=g)).requires_grad_(True) for f in feats]
    loss = feature_consistency(clean, dark, 4.0)
    assert float(loss.detach()) > 1e-4
    loss.backward()
    for t in clean + dark:                                   # both views get a gradient
        assert t.grad is not None and t.grad.abs().sum() > 0
    # symmetric, and T^2 KL: a hand computation for one pair of channel vectors
    a, b = torch.tensor([[1.0, 2.0, 0.0]]), torch.tensor([[0.0, 1.0, 3.0]])
    pa, pb = torch.softmax(a / 2, 1), torch.softmax(b / 2, 1)
    ref = 4 * ((pa * (pa / pb).log()).sum() + (pb * (pb / pa).log()).sum())
    assert torch.allclose(symmetric_kl(a, b, 2.0), ref) and torch.allclose(
        symmetric_kl(b, a, 2.0), ref)
    with pytest.raises(ValueError, match="equally long"):
        feature_consistency(feats, feats[:1], 4.0)


def _batch(spec):
    g = torch.Generator().manual_seed(1)
    pixels = 60 + 150 * torch.rand(3, 3, 40, 48, generator=g)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    return pixels - mean, pixels


def test_dark_view_darkens_deterministically_in_the_detector_normalisation():
    camera = CameraSpec("darkface")
    rgb_spec, bgr_spec = InputSpec("RGB", (123.0, 117.0, 104.0)), InputSpec("BGR")
    x, pixels = _batch(rgb_spec)
    seeds = image_seeds(0, 5, 0, 3)
    dark = dark_view(x, rgb_spec, camera, seeds)
    assert dark.shape == x.shape and dark.dtype == x.dtype
    dark_pixels = dark + torch.tensor(rgb_spec.mean).view(1, 3, 1, 1)
    assert dark_pixels.mean() < 0.1 * pixels.mean()
    assert torch.equal(dark, dark_view(x, rgb_spec, camera, seeds))
    assert not torch.equal(dark, dark_view(x, rgb_spec, camera, image_seeds(0, 6, 0, 3)))
    # a BGR detector gets the same picture with its channels in its order
    bgr = dark_view(pixels.flip(1), bgr_spec, camera, seeds)
    assert torch.allclose(bgr.flip(1), dark_pixels, atol=1e-3)
    # image i of the global batch draws the same on every rank: rank 1 of 2 = positions 3..5
    assert image_seeds(0, 5, 3, 3) == image_seeds(0, 5, 0, 6)[3:]


def test_views_keep_the_targets_and_the_switches():
    spec = InputSpec("BGR")
    x, _ = _batch(spec)
    targets = [torch.tensor([[0.1, 0.1, 0.5, 0.5, 1.0]])] * 3
    zs = ZeroShot(0, spec, CameraSpec("darkface"), clean=True, weight=0.1)
    both, tgt, n = zs.views(x, targets, step=0, rank=0)
    assert both.shape[0] == 6 and n == 3 and torch.equal(both[:3], x) and len(tgt) == 6
    assert all(torch.equal(a, b) for a, b in zip(tgt[:3], tgt[3:]))
    dark_only = ZeroShot(0, spec, CameraSpec("darkface"), clean=False)
    d, tgt, n = dark_only.views(x, targets, step=0, rank=0)
    assert n == 0 and torch.equal(d, both[3:]) and len(tgt) == 3
    assert dark_only.losses(None, d, 0) == {}
    cfg = load_config([PRESET])
    cfg.ZERO_SHOT.CLEAN = False
    with pytest.raises(ValueError, match="ZERO_SHOT.CONSISTENCY"):
        build_zero_shot(cfg, spec)
    assert build_zero_shot(load_config(), spec) is None


def test_consistency_pass_leaves_batchnorm_statistics_alone():
    from models.yunet.net import build_yunet
    net = build_yunet("yunet_n").train()
    spec = InputSpec("BGR")
    x, _ = _batch(spec)
    x = torch.nn.functional.pad(x, (0, 16, 0, 24))[:2]                    # 64 x 64
    zs = ZeroShot(0, spec, CameraSpec("darkface"), weight=0.5)
    both, _, n = zs.views(x, [torch.zeros(0, 15)] * 2, 0, 0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    loss = zs.losses(net, both, n)["zs_consistency"]
    loss.backward()
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zero_shot_data")
    make_ssl_data(folder, n_src=6, n_trg=1)
    return folder


def _overrides(data, out, **extra):
    opts = {"MODEL.NAME": "yunet_n", "YUNET.INPUT_SIZE": 64, "SOLVER.LR": 1e-3,
            "FACE.SRC_TRAIN_FILE": str(data / "src" / "list.txt"), "FACE.DATA_ROOT": str(data)}
    opts.update(extra)
    return ["--config", PRESET, *tiny_train_overrides(data, out, **opts)]


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_yunet_zero_shot_runs_and_resumes_exactly(data, tmp_path):
    torch.set_num_threads(1)
    common = {"SOLVER.MAX_STEPS": 3, "RUN.CKPT_EVERY": 2}
    assert train.main(_overrides(data, tmp_path, **common, **{"RUN.NAME": "straight"})) == 0
    rows = _metrics(tmp_path / "straight")
    assert len(rows) == 3
    for r in rows:
        assert math.isfinite(r["loss"]) and r["zs_consistency"] > 0, r
    assert (tmp_path / "straight" / "model_final.pth").is_file()
    assert train.main(_overrides(data, tmp_path, **{**common, "SOLVER.MAX_STEPS": 2,
                                                    "RUN.NAME": "resumed"})) == 0
    assert train.main(["--resume", str(tmp_path / "resumed" / "ckpt_2.pth"),
                       "SOLVER.MAX_STEPS=3"]) == 0
    a = load_file(tmp_path / "straight" / "ckpt_3.pth")["model"]
    b = load_file(tmp_path / "resumed" / "ckpt_3.pth")["model"]
    for k, v in a.items():
        assert torch.equal(v, b[k]), k
    assert [r["loss"] for r in rows] == [r["loss"] for r in _metrics(tmp_path / "resumed")]



@pytest.mark.parametrize("name", ["retinaface_mnet", "dsfd_vgg"])
def test_the_preset_trains_the_other_families(name, data, tmp_path):
    torch.set_num_threads(1)
    size = {"retinaface_mnet": {"RETINAFACE.IMAGE_SIZE": 64}, "dsfd_vgg": {}}[name]
    assert train.main(_overrides(data, tmp_path, **{"MODEL.NAME": name, "SOLVER.MAX_STEPS": 1,
                                                    "SOLVER.LR": 1e-4}, **size)) == 0
    row = _metrics(tmp_path / "run")[0]
    assert math.isfinite(row["loss"]) and row["zs_consistency"] > 0, row
