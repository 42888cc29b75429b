"""Self-supervised heads: key names, shapes, parameter counts, initialisation, the registry."""
import math

import pytest
import torch
import torch.nn.functional as F

from data.config import default_config
from models.dsfd.net import DSFD
from adapt.hla.heads import ClassificationHead, ContrastiveHead, LevelHead
from adapt.hla.trainer import HLATrainer
from adapt.hla.tasks import SSL_TASKS, build_tasks

C = [256, 512, 512, 1024, 512, 256]
SIZES_192 = [48, 24, 12, 6, 3, 2]          # the source maps of a 192-px input (measured)


def feats(channels, sizes, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, c, s, s, generator=g) for c, s in zip(channels, sizes)]


def test_jigsaw_head_keys_shapes_and_size():
    head = ClassificationHead(C, 30)
    sd = head.state_dict()
    expected = {}
    for k, c in enumerate(C):
        p = f"Head.MLP{k}."
        expected.update({p + "conv1.weight": (64, c, 3, 3), p + "conv1.bias": (64,),
                         p + "conv2.weight": (64, 64, 3, 3), p + "conv2.bias": (64,),
                         p + "fc.weight": (30, 64), p + "fc.bias": (30,)})
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected and len(sd) == 36
    assert sum(v.numel() for v in sd.values()) == 2_003_124
    logits = head.logits(feats(C, SIZES_192))
    assert [tuple(z.shape) for z in logits] == [(2, 30)] * 6


def test_contrastive_head_keys_shapes_and_size():
    head = ContrastiveHead(C, 128)
    sd = head.state_dict()
    assert len(sd) == 36 and sum(v.numel() for v in sd.values()) == 2_041_344
    assert tuple(sd["MLPs.3.conv1.weight"].shape) == (64, 1024, 3, 3)
    assert tuple(sd["MLPs.5.fc.weight"].shape) == (128, 64)
    out = head(feats(C, [64, 32, 16, 8, 4, 2]))                     # 256-px input
    assert [tuple(z.shape) for z in out] == [(2, 128)] * 6


def test_classification_loss_is_the_sum_of_per_level_cross_entropies():
    torch.manual_seed(0)
    head = ClassificationHead([8, 16, 16, 32, 16, 8], 24)
    x = feats([8, 16, 16, 32, 16, 8], SIZES_192, n=5)
    labels = torch.tensor([0, 3, 23, 7, 7])
    expected = 0.0
    for k, f in enumerate(x):                                       # written out by hand
        mlp = getattr(head.Head, f"MLP{k}")
        h = F.relu(mlp.conv2(F.relu(mlp.conv1(f)))).mean(dim=(2, 3))
        expected = expected + F.cross_entropy(mlp.fc(h), labels)
    assert torch.allclose(head(x, labels), expected, atol=1e-5)


def test_kaiming_normal_fan_in_weights_and_default_biases():
    torch.manual_seed(0)
    mlp = LevelHead(1024, 128)
    for layer, fan_in in ((mlp.conv1, 1024 * 9), (mlp.conv2, 64 * 9), (mlp.fc, 64)):
        std = math.sqrt(2.0 / fan_in)
        assert abs(layer.weight.std().item() / std - 1) < 0.1
        assert abs(layer.weight.mean().item()) < 0.1 * std
        bound = 1 / math.sqrt(fan_in)                               # PyTorch's default bias
        assert layer.bias.abs().max().item() <= bound
        assert layer.bias.abs().max().item() > 0.5 * bound


@pytest.mark.parametrize("toggle,classes", [("JIGSAW_33", 30), ("JIGSAW_22", 24),
                                            ("JIGSAW_41", 24), ("JIGSAW_14", 24),
                                            ("ROTATION", 4)])
def test_registry_classifiers(toggle, classes):
    cfg = default_config()
    for t in SSL_TASKS:
        cfg.TRAIN[t] = t == toggle
    net = DSFD(width=0.125)
    (task,) = build_tasks(cfg)
    head = task.build_module(net)
    assert task.attr == SSL_TASKS[toggle].attr and task.weight == cfg.TRAIN_WEIGHT[toggle]
    assert head.num_classes == classes
    assert SSL_TASKS[toggle].head_file == task.attr.removesuffix("_trainer") + "_head.pth"


def test_registry_defaults_and_moco_heads():
    cfg = default_config()
    tasks = build_tasks(cfg)
    assert [t.attr for t in tasks] == ["jig_33_trainer", "contrg_trainer", "tsf_trainer"]
    assert [t.streams for t in tasks] == [("jig_33_src", "jig_33_trg"), ("contrg",), ("tsf",)]
    trainer = HLATrainer(DSFD(width=0.125), tasks)
    assert trainer.loss_weights == {"jig_33_src": 0.075, "jig_33_trg": 0.075, "contrg": 0.05,
                                    "tsf": 0.05}
    for attr in ("contrg_trainer", "tsf_trainer"):
        sd = getattr(trainer, attr).state_dict()
        assert len(sd) == 115 and sd["queue_ptr"].dtype == torch.int64
        assert tuple(sd["queue"].shape) == (6, 128, 2048)
    names = [k.split(".")[0] for k in trainer.state_dict()]
    assert list(dict.fromkeys(names)) == ["net", "jig_33_trainer", "contrg_trainer",
                                          "tsf_trainer"]


def test_trainer_features_one_pass_per_size_equals_separate_passes():
    torch.manual_seed(0)
    net = DSFD(width=0.125).eval()
    trainer = HLATrainer(net)
    images = [torch.randn(2, 3, 64, 64), torch.randn(1, 3, 48, 48), torch.randn(3, 3, 64, 64)]
    calls = []
    original = net.features
    net.features = lambda x: calls.append(tuple(x.shape)) or original(x)
    grouped = trainer.features(images)
    assert sorted(calls) == [(1, 3, 48, 48), (5, 3, 64, 64)]
    for x, got in zip(images, grouped):
        for a, b in zip(original(x), got):
            assert torch.allclose(a, b, atol=1e-5)
