"""The detector interface: registry, input specs, BatchNorm-safe task batches and MoCo keys."""
import copy
import dataclasses
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from data import config as config_lib
from data.config import ConfigError, default_config
from models import registry
from models.interface import InputSpec, check_interface, pad_to_multiple
from models.dsfd.net import DSFD
from adapt.hla.trainer import HLATrainer
from models.inference import FaceDetector
from adapt.hla.moco import MoCo, _batch_shuffle_ddp, _batch_unshuffle_ddp

ROOT = Path(__file__).resolve().parents[1]


class TinyBNNet(nn.Module):
    """A two-level detector stand-in with BatchNorm, implementing the interface."""

    has_batchnorm = True
    feature_channels = [8, 8]

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8),
                                  nn.ReLU())

    def features(self, x):
        a = self.stem(x)
        return [a, self.down(a)]

    def make_key_encoder(self):
        enc = _KeyEncoder(self)
        return enc

    def forward(self, x):
        return self.features(x)


class _KeyEncoder(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.stem, self.down = copy.deepcopy(net.stem), copy.deepcopy(net.down)
        self.requires_grad_(False)

    def forward(self, x):
        a = self.stem(x)
        return [a, self.down(a)]


def test_dsfd_implements_the_interface():
    net = DSFD(width=0.125)
    check_interface(net)
    assert net.has_batchnorm is False
    assert net.feature_channels == net.source_channels
    enc = net.make_key_encoder()
    names = dict(net.named_parameters())
    assert set(n for n, _ in enc.named_parameters()) <= set(names)
    assert not any(p.requires_grad for p in enc.parameters())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(enc(x), net.features(x)):
            assert torch.equal(a, b)


def test_check_interface_names_what_is_missing():
    with pytest.raises(TypeError, match="make_key_encoder"):
        check_interface(nn.Conv2d(3, 3, 1))


def test_registry_rejects_unknown_names_naming_the_key():
    cfg = default_config()
    cfg.MODEL.NAME = "nope"
    with pytest.raises(ValueError, match="MODEL.NAME='nope'"):
        registry.build_net(cfg)


def test_dsfd_check_names_the_anchor_key():
    cfg = default_config()
    cfg.ANCHOR.STEPS = [4, 8, 16]
    with pytest.raises(ValueError, match="ANCHOR.STEPS"):
        registry.build_net(cfg)


def test_dsfd_input_spec_is_the_reference_normalisation():
    cfg = default_config()
    spec = registry.get_entry("dsfd_vgg").input_spec(cfg)
    img = torch.randint(0, 256, (1, 5, 7, 3), dtype=torch.uint8)
    x = spec.to_input(img)
    expected = img.permute(0, 3, 1, 2).float() - torch.tensor([123.0, 117.0, 104.0]).view(1, 3, 1, 1)
    assert torch.equal(x, expected)


def test_bgr_spec_flips_and_pads():
    spec = InputSpec("BGR", (1.0, 2.0, 3.0), size_divisor=32)
    img = torch.randint(0, 256, (2, 40, 33, 3), dtype=torch.uint8)
    x = spec.to_input(img)
    assert x.shape == (2, 3, 64, 64)
    assert torch.equal(x[:, 0, :40, :33], img[..., 2].float() - 1)      # B first
    assert torch.equal(x[:, 2, :40, :33], img[..., 0].float() - 3)
    assert x[:, :, 40:].abs().sum() == 0 and x[:, :, :, 33:].abs().sum() == 0
    assert pad_to_multiple(torch.zeros(1, 3, 64, 64), 32).shape[-1] == 64


def test_padded_detections_are_normalised_by_the_image():
    """A detector whose input is padded reports boxes and landmarks relative to the image."""

    class Fixed(nn.Module):
        def forward(self, x):
            return x

    def post(out, size):                      # one box at fixed padded-input pixels
        h, w = size
        row = torch.tensor([[16 / w, 8 / h, 32 / w, 24 / h, 0.9] + [16 / w, 8 / h] * 5])
        return [row for _ in range(out.shape[0])]

    det = FaceDetector(Fixed(), InputSpec("BGR", size_divisor=32), post, torch.device("cpu"),
                       num_landmarks=5)
    dets = det(np.zeros((1, 40, 50, 3), np.uint8))[0]
    assert dets.shape == (1, 15)
    assert torch.allclose(dets[0, :5], torch.tensor([16 / 50, 8 / 40, 32 / 50, 24 / 40, 0.9]))
    assert torch.allclose(dets[0, 5:7], torch.tensor([16 / 50, 8 / 40]))


def test_batchnorm_tasks_are_not_concatenated():
    """With BatchNorm in training mode, each task batch is normalised by itself only."""
    torch.manual_seed(0)
    net = TinyBNNet().train()
    trainer = HLATrainer(net, [])
    a, b = torch.randn(3, 3, 16, 16), torch.randn(5, 3, 16, 16) * 4 + 2
    feats = trainer.features([a, b])
    for x, f in zip((a, b), feats):
        ref = copy.deepcopy(net).features(x)
        for got, want in zip(f, ref):
            assert torch.allclose(got, want, atol=1e-6)
    # the concatenation would have differed (this is what the BN rule prevents)
    joint = copy.deepcopy(net).features(torch.cat([a, b]))[0][:3]
    assert not torch.allclose(joint, feats[0][0], atol=1e-3)


def test_dsfd_tasks_still_share_one_pass():
    net = DSFD(width=0.125)
    trainer = HLATrainer(net, [])
    a, b = torch.randn(2, 3, 64, 64), torch.randn(3, 3, 64, 64)
    calls = []
    orig = net.features
    net.features = lambda x: calls.append(x.shape[0]) or orig(x)
    trainer.features([a, b])
    assert calls == [5]


def test_one_process_bn_keys_do_not_depend_on_the_batch():
    """The one-process MoCo path: keys of an image are the same whatever the other images of
    the key batch are, so no batch statistic links a query to its key."""
    torch.manual_seed(0)
    net = TinyBNNet().train()
    moco = MoCo(net, net.feature_channels, dim=4, K=8, m=0.9)
    x = torch.randn(4, 3, 16, 16)
    k_all = moco.keys(x)
    k_two = moco.keys(x[:2])
    assert torch.allclose(k_all[:2], k_two, atol=1e-5)
    assert moco.encoder_k.training                 # the mode is restored


def test_bn_statistics_follow_the_query_encoder_by_momentum():
    torch.manual_seed(0)
    net = TinyBNNet().train()
    moco = MoCo(net, net.feature_channels, dim=4, K=8, m=0.9)
    net.features(torch.randn(8, 3, 16, 16) * 3 + 1)         # moves the query running stats
    q = net.stem[1].running_mean.clone()
    k0 = moco.encoder_k.stem[1].running_mean.clone()
    moco._momentum_update_key_encoder()
    k1 = moco.encoder_k.stem[1].running_mean
    assert torch.allclose(k1, 0.9 * k0 + 0.1 * q, atol=1e-6)


def _shuffle_worker(rank, world, port, queue):
    import torch.distributed as td
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    td.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(rank)          # different permutations would break the inverse
        x = torch.arange(4 * world, dtype=torch.float32).view(world, 4)[rank].view(4, 1)
        shuffled, unshuffle = _batch_shuffle_ddp(x)
        back = _batch_unshuffle_ddp(shuffled * 10, unshuffle)
        queue.put((rank, x.flatten().tolist(), shuffled.flatten().tolist(),
                   back.flatten().tolist()))
    finally:
        td.destroy_process_group()


def test_shuffling_bn_is_undone_exactly_across_ranks():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_shuffle_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    everything = sorted(v for _, _, sh, _ in results for v in sh)
    assert everything == list(map(float, range(8)))        # a permutation of all key images
    for _, x, _, back in results:
        assert back == [10 * v for v in x]                  # each rank gets its own keys back


def test_model_preset_is_applied_under_user_overrides(tmp_path, monkeypatch):
    (tmp_path / "dsfd_vgg.yaml").write_text("MODEL:\n  NAME: dsfd_vgg\nDETECT:\n"
                                            "  CONF_THRESH: 0.02\n  NMS_THRESH: 0.45\n")
    monkeypatch.setattr(config_lib, "MODEL_PRESET_DIR", tmp_path)
    cfg = config_lib.load_config(overrides=["DETECT.NMS_THRESH=0.5"])
    assert cfg.DETECT.CONF_THRESH == 0.02 and cfg.DETECT.NMS_THRESH == 0.5
    base = default_config()
    assert config_lib.load_config(base=base).DETECT.CONF_THRESH == base.DETECT.CONF_THRESH


def test_model_preset_must_name_its_model(tmp_path, monkeypatch):
    (tmp_path / "dsfd_vgg.yaml").write_text("MODEL:\n  NAME: yunet_n\n")
    monkeypatch.setattr(config_lib, "MODEL_PRESET_DIR", tmp_path)
    with pytest.raises(ConfigError, match="MODEL.NAME"):
        config_lib.load_config()


@pytest.mark.parametrize("name", sorted(registry.DETECTORS))
def test_every_registry_entry_fills_every_field_and_has_its_preset(name):
    """Adding a detector is a folder, a registry line and a preset: each entry provides every
    required field (models/interface.py REQUIRED_FIELDS) and its preset selects it."""
    from data.config import load_config
    entry = registry.get_entry(name)
    assert registry.missing_fields(entry) == []
    preset = ROOT / entry.preset
    assert preset.is_file() and preset == ROOT / "configs" / "models" / f"{name}.yaml"
    cfg = load_config([preset])
    assert cfg.MODEL.NAME == name
    entry.check(cfg)                                    # the preset fits its detector
    assert entry.onnx_decoder(cfg).num_landmarks == entry.num_landmarks
    assert entry.input_spec(cfg).channel_order in ("RGB", "BGR")


def test_missing_fields_names_an_empty_field():
    entry = registry.get_entry("dsfd_vgg")
    assert registry.missing_fields(dataclasses.replace(entry, train_dataset=None)) == [
        "train_dataset"]
