"""DSFD-VGG: the state_dict contract of ``dsfd_vgg_0.880.pth``, shapes and feature mode."""
import pytest
import torch

from models.dsfd.anchors import make_anchors, vgg_feature_sizes
from models.dsfd.net import DSFD
from utils.checkpoint import atomic_save, detector_state_dict, load_detector_weights, load_file

C = [256, 512, 512, 1024, 512, 256]


def reference_key_table():
    """The 186 keys and shapes of the released DSFD, written out independently of
    models/dsfd/net.py."""
    t = {}
    vgg = {0: (64, 3, 3), 2: (64, 64, 3), 5: (128, 64, 3), 7: (128, 128, 3), 10: (256, 128, 3),
           12: (256, 256, 3), 14: (256, 256, 3), 17: (512, 256, 3), 19: (512, 512, 3),
           21: (512, 512, 3), 24: (512, 512, 3), 26: (512, 512, 3), 28: (512, 512, 3),
           31: (1024, 512, 3), 33: (1024, 1024, 1)}
    for i, (o, c, k) in vgg.items():
        t[f"vgg.{i}.weight"], t[f"vgg.{i}.bias"] = (o, c, k, k), (o,)
    for n, c in zip(("L2Normof1", "L2Normof2", "L2Normof3"), (256, 512, 512)):
        t[f"{n}.weight"] = (c,)
    for i, (o, c, k) in enumerate([(256, 1024, 1), (512, 256, 3), (128, 512, 1), (256, 128, 3)]):
        t[f"extras.{i}.weight"], t[f"extras.{i}.bias"] = (o, c, k, k), (o,)
    for i, (o, c) in enumerate([(256, 256), (512, 256), (1024, 512), (512, 1024), (512, 512),
                                (256, 512)]):
        t[f"fpn_topdown.{i}.weight"], t[f"fpn_topdown.{i}.bias"] = (o, c, 1, 1), (o,)
    for i, c in enumerate([512, 1024, 512, 512, 256]):
        t[f"fpn_latlayer.{i}.weight"], t[f"fpn_latlayer.{i}.bias"] = (c, c, 1, 1), (c,)
    for k, (c, i, i1) in enumerate([(256, 85, 86), (512, 170, 172), (512, 170, 172),
                                    (1024, 341, 342), (512, 170, 172), (256, 85, 86)]):
        for name, (o, ci) in {"branch1": (i, c), "branch2.0": (i, c), "branch2.2": (i, i),
                              "branch3.0": (i1, c), "branch3.2": (i1, i1),
                              "branch3.4": (i1, i1)}.items():
            t[f"fpn_fem.{k}.{name}.weight"], t[f"fpn_fem.{k}.{name}.bias"] = (o, ci, 3, 3), (o,)
    for n, c in zip(("L2Normef1", "L2Normef2", "L2Normef3"), (256, 512, 512)):
        t[f"{n}.weight"] = (c,)
    for head, o in (("loc_pal1", 4), ("conf_pal1", 2), ("loc_pal2", 4), ("conf_pal2", 2)):
        for k, c in enumerate(C):
            t[f"{head}.{k}.weight"], t[f"{head}.{k}.bias"] = (o, c, 3, 3), (o,)
    return t


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return DSFD().eval()


def test_state_dict_matches_reference_table(net):
    sd = net.state_dict()
    table = reference_key_table()
    assert len(sd) == 186 == len(table)
    assert {k: tuple(v.shape) for k, v in sd.items()} == table
    assert sum(v.numel() for v in sd.values()) == 49_793_432
    assert all(v.dtype == torch.float32 for v in sd.values())
    assert list(sd)[:2] == ["vgg.0.weight", "vgg.0.bias"] and list(sd)[-1] == "conf_pal2.5.bias"
    assert not list(net.buffers())


def test_reference_state_dict_loads_strictly_and_round_trips(net, tmp_path):
    torch.manual_seed(1)
    ref = {k: torch.randn(v) * 0.05 for k, v in reference_key_table().items()}   # plain dict
    atomic_save(ref, tmp_path / "dsfd_vgg_0.880.pth")
    model = DSFD().eval()
    load_detector_weights(model, tmp_path / "dsfd_vgg_0.880.pth")
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        before = model(x)
    atomic_save(model.state_dict(), tmp_path / "again.pth")
    again = DSFD().eval()
    load_detector_weights(again, tmp_path / "again.pth")
    with torch.no_grad():
        after = again(x)
    for a, b in zip(before[:4], after[:4]):
        assert torch.equal(a, b)
    for k, v in ref.items():
        assert torch.equal(again.state_dict()[k], v)


@pytest.mark.parametrize("wrap", ["net.", "module.", "module.net."])
def test_prefixed_checkpoints_load_through_one_helper(net, tmp_path, wrap):
    sd = net.state_dict()
    extra = {"jig_33_trainer.Head.MLP0.fc.bias": torch.zeros(30)} if "net." in wrap else {}
    atomic_save({**{wrap + k: v for k, v in sd.items()}, **extra}, tmp_path / "w.pth")
    state = detector_state_dict(load_file(tmp_path / "w.pth"))
    assert list(state) == list(sd)
    DSFD().load_state_dict(state, strict=True)


def test_our_checkpoint_and_dsfd_checkpoint_formats(net):
    sd = net.state_dict()
    assert list(detector_state_dict({"model": sd, "step": 3})) == list(sd)
    assert list(detector_state_dict({"epoch": 3, "weight": sd})) == list(sd)


@pytest.mark.parametrize("hw, count", [((640, 640), 34125), ((720, 1080), 64732)])
def test_anchor_counts_match_feature_maps(hw, count):
    sizes = vgg_feature_sizes(*hw)
    assert sum(h * w for h, w in sizes) == count
    anchors = make_anchors(hw, sizes, [4, 8, 16, 32, 64, 128], [16, 32, 64, 128, 256, 512])
    assert anchors.shape == (count, 4)


def test_forward_shapes_follow_feature_size_recursion():
    net = DSFD(width=0.125).eval()
    for hw in [(640, 640), (720, 1080), (97, 131)]:
        with torch.no_grad():
            out = net(torch.zeros(1, 3, *hw))
        assert out.feature_sizes == vgg_feature_sizes(*hw)
        p = sum(h * w for h, w in out.feature_sizes)
        assert out.loc_pal1.shape == (1, p, 4) and out.conf_pal2.shape == (1, p, 2)


@pytest.mark.parametrize("size, expected", [(256, [64, 32, 16, 8, 4, 2]),
                                            (192, [48, 24, 12, 6, 3, 2])])
def test_feature_mode_returns_the_six_first_shot_sources(size, expected):
    net = DSFD(width=0.125).eval()
    feats = net.features(torch.zeros(2, 3, size, size))
    assert [f.shape[-1] for f in feats] == expected
    assert [f.shape[1] for f in feats] == net.source_channels


def test_feature_mode_equals_first_shot_inputs_and_skips_the_rest():
    torch.manual_seed(0)
    net = DSFD(width=0.125).eval()
    x = torch.randn(1, 3, 64, 64)
    feats = net.features(x)
    raw = net._backbone(x)
    for a, b in zip(feats, net._pal1_sources(raw)):
        assert torch.equal(a, b)
    calls = []
    for m in (*net.fpn_fem, *net.fpn_topdown, *net.loc_pal1, *net.conf_pal2):
        m.register_forward_hook(lambda *a: calls.append(1))
    net.features(x)
    assert not calls
    sum(f.sum() for f in net.features(x)).backward()
    assert net.fpn_fem[0].branch1.weight.grad is None and net.vgg[0].weight.grad is not None


def test_width_multiplier_keeps_key_names():
    small = DSFD(width=0.25).state_dict()
    assert list(small) == list(reference_key_table())
    assert small["vgg.31.weight"].shape == (256, 128, 3, 3)
