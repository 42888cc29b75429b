"""RetinaFace: the released checkpoints' key tables, loading, the detector interface, priors,
decoding, post-processing against a literal port of detect.py, ONNX parity, the registry entry.

The key tables live in ``../shared/docs/retinaface_keys`` (override with ``HLA_SHARED_DOCS``);
the tests that read them skip with a reason when absent, unless ``HLA_REQUIRE_SHARED_DATA=1``.
"""
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from data.config import load_config
from models.retinaface.priors import (PriorCache, decode, decode_landm, detect_faces, encode,
                                      encode_landm, nms_plus_one, prior_boxes)
from models.interface import DetectorEntry, check_interface
from models.retinaface.entry import retinaface_entry
from models.retinaface.net import RetinaFace, export_retinaface_onnx, load_retinaface_weights

ROOT = Path(__file__).resolve().parents[1]
TABLES = {"retinaface_mnet": ("mnet_keys.tsv", 300, 159, 426_608),
          "retinaface_r50": ("re50_keys.tsv", 456, 237, 27_293_600)}
MIN_SIZES, STEPS, VAR = [[16, 32], [64, 128], [256, 512]], [8, 16, 32], (0.1, 0.2)


@pytest.fixture(scope="module")
def key_tables(shared_docs) -> Path:
    return shared_docs / "retinaface_keys"


@pytest.fixture(scope="module")
def r50():
    torch.manual_seed(0)
    return RetinaFace("retinaface_r50")


def _randomise_bn(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial running statistics and affine parameters, so eval-mode tests mean something."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return net


# ---- key tables ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(TABLES))
def test_state_dict_equals_key_table(name, key_tables, r50):
    table, n_keys, n_params, params = TABLES[name]
    rows = [line.rstrip("\n").split("\t") for line in (key_tables / table).read_text().splitlines()
            if line and not line.startswith("#")]
    net = r50 if name == "retinaface_r50" else RetinaFace(name)
    mine = [[k, "x".join(map(str, v.shape)) or "-", str(v.dtype).removeprefix("torch.")]
            for k, v in net.state_dict().items()]
    assert len(rows) == n_keys
    assert [r[0] for r in mine] == [r[0] for r in rows]          # names and order
    assert mine == rows                                          # shapes and dtypes
    assert len(list(net.parameters())) == n_params
    assert sum(p.numel() for p in net.parameters()) == params


def test_reference_layer_settings(r50):
    mnet = RetinaFace("retinaface_mnet")
    for net, fpn_slope in ((mnet, 0.1), (r50, 0.0)):
        for name, m in net.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                assert (m.eps, m.momentum) == (1e-5, 0.1), name
            if isinstance(m, torch.nn.LeakyReLU) and not name.startswith("body."):
                assert m.negative_slope == fpn_slope, name
    assert {m.negative_slope for n, m in mnet.named_modules()
            if isinstance(m, torch.nn.LeakyReLU) and n.startswith("body.")} == {0.1}
    assert list(r50.body.keys()) == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2",
                                     "layer3", "layer4"]


# ---- loading -------------------------------------------------------------------------------------

def test_load_with_and_without_module_prefix_round_trip(tmp_path):
    torch.manual_seed(1)
    src = _randomise_bn(RetinaFace("retinaface_mnet")).eval()
    state = src.state_dict()
    files = {"plain": state, "module": {f"module.{k}": v for k, v in state.items()},
             "wrapped": {"state_dict": {f"module.{k}": v for k, v in state.items()}}}
    x = torch.randn(2, 3, 72, 88)
    with torch.no_grad():
        want = src(x)
    for tag, obj in files.items():
        torch.save(obj, tmp_path / f"{tag}.pth")
        dst = RetinaFace("retinaface_mnet")
        load_retinaface_weights(dst, tmp_path / f"{tag}.pth")
        with torch.no_grad():
            got = dst.eval()(x)
        for a, b in zip(got[:3], want[:3]):
            assert torch.equal(a, b), tag
    bad = {k: v for k, v in state.items() if not k.startswith("LandmarkHead.2")}
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(RuntimeError, match="LandmarkHead.2"):
        load_retinaface_weights(RetinaFace("retinaface_mnet"), tmp_path / "bad.pth")


def test_r50_round_trip(tmp_path, r50):
    torch.save({f"module.{k}": v for k, v in r50.state_dict().items()}, tmp_path / "r50.pth")
    other = RetinaFace("retinaface_r50")
    load_retinaface_weights(other, tmp_path / "r50.pth")
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        a, b = r50.eval()(x), other.eval()(x)
    assert all(torch.equal(u, v) for u, v in zip(a[:3], b[:3]))
    assert a.loc.shape == (1, prior_boxes((64, 80), MIN_SIZES, STEPS).shape[0], 4)


# ---- the detector interface ----------------------------------------------------------------------

def test_interface_features_and_key_encoder():
    torch.manual_seed(2)
    net = _randomise_bn(RetinaFace("retinaface_mnet"))
    check_interface(net)
    assert net.has_batchnorm and net.feature_channels == [64, 64, 64]
    x = torch.randn(2, 3, 75, 101)
    net.eval()
    feats = net.features(x)
    assert [tuple(f.shape) for f in feats] == [(2, 64, math.ceil(75 / s), math.ceil(101 / s))
                                               for s in STEPS]
    out = net(x)
    p = prior_boxes((75, 101), MIN_SIZES, STEPS).shape[0]
    assert (out.loc.shape, out.conf.shape, out.landms.shape) == ((2, p, 4), (2, p, 2), (2, p, 10))
    assert out.feature_sizes == [tuple(f.shape[-2:]) for f in feats]

    key = net.make_key_encoder()
    names = {n for n, _ in net.named_parameters()}
    assert {n for n, _ in key.named_parameters()} <= names
    assert not any(p.requires_grad for p in key.parameters())
    key.eval()                                     # MoCo decides the key encoder's BN mode
    for a, b in zip(key(x), feats):
        assert torch.equal(a, b)
    net.train()
    out = net(x)
    (out.loc.sum() + out.conf.sum() + out.landms.sum()).backward()
    assert all(p.grad is not None for p in net.parameters())


# ---- priors and coding ---------------------------------------------------------------------------

def _reference_priors(image_size, min_sizes, steps):
    """The reference PriorBox.forward, literally (itertools.product, Python floats)."""
    anchors = []
    for k, f in enumerate([[math.ceil(image_size[0] / s), math.ceil(image_size[1] / s)]
                           for s in steps]):
        for i, j in itertools.product(range(f[0]), range(f[1])):
            for min_size in min_sizes[k]:
                s_kx, s_ky = min_size / image_size[1], min_size / image_size[0]
                cx = [x * steps[k] / image_size[1] for x in [j + 0.5]]
                cy = [y * steps[k] / image_size[0] for y in [i + 0.5]]
                for a, b in itertools.product(cy, cx):
                    anchors += [b, a, s_kx, s_ky]
    return torch.Tensor(anchors).view(-1, 4)


def test_priors_hand_checked_small_size():
    p = prior_boxes((16, 24), MIN_SIZES, STEPS)     # grids 2x3, 1x2, 1x1: (6 + 2 + 1) x 2
    assert p.shape == (18, 4) and p.dtype == torch.float32
    expect = {0: (1 / 6, 0.25, 16 / 24, 1.0), 1: (1 / 6, 0.25, 32 / 24, 2.0),
              2: (0.5, 0.25, 16 / 24, 1.0), 6: (1 / 6, 0.75, 16 / 24, 1.0),
              11: (5 / 6, 0.75, 32 / 24, 2.0), 12: (1 / 3, 0.5, 64 / 24, 4.0),
              15: (1.0, 0.5, 128 / 24, 8.0), 16: (2 / 3, 1.0, 256 / 24, 16.0),
              17: (2 / 3, 1.0, 512 / 24, 32.0)}
    for row, values in expect.items():
        assert torch.equal(p[row], torch.tensor(values, dtype=torch.float32)), row


@pytest.mark.parametrize("size", [(16, 24), (37, 53), (480, 640)])
def test_priors_bit_identical_to_reference(size):
    ours = prior_boxes(size, MIN_SIZES, STEPS)
    assert torch.equal(ours, _reference_priors(size, MIN_SIZES, STEPS))


def test_prior_cache():
    cache = PriorCache(MIN_SIZES, STEPS)
    a = cache((40, 56))
    assert cache((40, 56)) is a and cache((56, 40)) is not a
    assert torch.equal(cache((40, 56)), prior_boxes((40, 56), MIN_SIZES, STEPS))


def test_decode_hand_made_case():
    prior = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    loc = torch.tensor([[1.0, -1.0, 0.0, math.log(2) / 0.2]])
    box = decode(loc, prior, VAR)
    assert torch.allclose(box, torch.tensor([[0.42, 0.06, 0.62, 0.86]]), atol=1e-6)
    pre = torch.tensor([[1.0, 2.0, 0.0, 0.0, -1.0, 0.5, 3.0, -2.0, 0.0, 1.0]])
    pts = decode_landm(pre, prior, VAR)
    want = [0.52, 0.58, 0.5, 0.5, 0.48, 0.52, 0.56, 0.42, 0.5, 0.54]
    assert torch.allclose(pts, torch.tensor([want]), atol=1e-6)
    assert torch.allclose(encode(box, prior, VAR), loc, atol=1e-5)
    assert torch.allclose(encode_landm(pts, prior, VAR), pre, atol=1e-5)


def test_decode_bit_identical_to_reference_formula():
    g = torch.Generator().manual_seed(3)
    priors = prior_boxes((64, 96), MIN_SIZES, STEPS)
    loc, pre = torch.randn(len(priors), 4, generator=g), torch.randn(len(priors), 10, generator=g)
    ref = torch.cat((priors[:, :2] + loc[:, :2] * VAR[0] * priors[:, 2:],
                     priors[:, 2:] * torch.exp(loc[:, 2:] * VAR[1])), 1)
    ref[:, :2] -= ref[:, 2:] / 2
    ref[:, 2:] += ref[:, :2]
    assert torch.equal(decode(loc, priors, VAR), ref)
    ref_l = torch.cat([priors[:, :2] + pre[:, 2 * k:2 * k + 2] * VAR[0] * priors[:, 2:]
                       for k in range(5)], 1)
    assert torch.equal(decode_landm(pre, priors, VAR), ref_l)


# ---- post-processing against detect.py -----------------------------------------------------------

def py_cpu_nms(dets, thresh):
    """utils/nms/py_cpu_nms.py, literally."""
    x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        w = np.maximum(0.0, xx2 - xx1 + 1)
        h = np.maximum(0.0, yy2 - yy1 + 1)
        inter = w * h
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= thresh)[0] + 1]
    return keep


def reference_detect(loc, conf, landms, priors, h, w, conf_thresh, nms_thresh, top_k, keep_top_k):
    """detect.py's post-processing of one image (pixel rows x1, y1, x2, y2, score, landmarks)."""
    scale = torch.Tensor([w, h, w, h])
    boxes = (decode(loc, priors, VAR) * scale).numpy()
    scores = torch.softmax(conf, -1).numpy()[:, 1]
    pts = (decode_landm(landms, priors, VAR) * torch.Tensor([w, h] * 5)).numpy()
    inds = np.where(scores > conf_thresh)[0]
    boxes, pts, scores = boxes[inds], pts[inds], scores[inds]
    order = scores.argsort(kind="stable")[::-1][:top_k]
    boxes, pts, scores = boxes[order], pts[order], scores[order]
    dets = np.hstack((boxes, scores[:, np.newaxis])).astype(np.float32, copy=False)
    keep = py_cpu_nms(dets, nms_thresh)
    return np.concatenate((dets[keep][:keep_top_k], pts[keep][:keep_top_k]), axis=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_postprocess_matches_reference_detect(seed):
    g = torch.Generator().manual_seed(seed)
    h, w = 96, 128
    priors = prior_boxes((h, w), MIN_SIZES, STEPS)
    B, P = 2, len(priors)
    loc = torch.randn(B, P, 4, generator=g) * 0.5
    conf = torch.randn(B, P, 2, generator=g) * 2
    landms = torch.randn(B, P, 10, generator=g)
    for top_k, keep_top_k in ((5000, 750), (60, 25)):
        got = detect_faces(loc, conf, landms, priors, (h, w), VAR, 0.3, 0.4, top_k, keep_top_k)
        for b in range(B):
            want = reference_detect(loc[b], conf[b], landms[b], priors, h, w, 0.3, 0.4, top_k,
                                    keep_top_k)
            rows = got[b] * torch.tensor([w, h, w, h, 1] + [w, h] * 5)
            assert rows.shape == want.shape and len(want) > 10
            assert np.allclose(rows.numpy(), want, rtol=1e-6, atol=1e-4)
    uncapped = detect_faces(loc, conf, landms, priors, (h, w), VAR, 0.3, 0.4, 0, 0)
    huge = detect_faces(loc, conf, landms, priors, (h, w), VAR, 0.3, 0.4, 10**8, 10**8)
    assert all(torch.equal(a, b) for a, b in zip(uncapped, huge))           # <= 0: no cap
    background = torch.tensor([5.0, -5.0]).expand(B, P, 2)                          # no face
    none = detect_faces(loc, background, landms, priors, (h, w), VAR)
    assert [tuple(r.shape) for r in none] == [(0, 15), (0, 15)]


def test_nms_plus_one_matches_py_cpu_nms_on_pixel_boxes():
    rng = np.random.default_rng(4)
    for n in (1, 30, 400):
        xy = rng.uniform(0, 200, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(0, 40, (n, 2))], 1).astype(np.float32)
        scores = np.sort(rng.random(n).astype(np.float32))[::-1].copy()
        for thresh in (0.3, 0.4, 0.6):
            want = py_cpu_nms(np.hstack([boxes, scores[:, None]]), thresh)
            got = nms_plus_one(torch.from_numpy(boxes), thresh).tolist()
            assert got == [int(i) for i in want]
    # the +1 matters: two 1-px-apart 2x2 boxes have IoU 1/3 with it, 0 without
    two = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 0.0, 3.0, 2.0]])
    assert nms_plus_one(two, 0.3).tolist() == [0]


# ---- ONNX ----------------------------------------------------------------------------------------

def test_onnx_parity_at_two_sizes(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(5)
    net = _randomise_bn(RetinaFace("retinaface_mnet")).eval()
    path = export_retinaface_onnx(net, tmp_path / "rf.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, size in ((1, (120, 160)), (2, (97, 131))):
        x = torch.randn(batch, 3, *size) * 50
        with torch.no_grad():
            out = net(x)
        loc, conf, landms = session.run(None, {"image": x.numpy()})
        assert np.allclose(loc, out.loc.numpy(), atol=1e-4)
        assert np.allclose(conf, torch.softmax(out.conf, -1).numpy(), atol=1e-5)
        assert np.allclose(landms, out.landms.numpy(), atol=1e-4)
        assert loc.shape[1] == prior_boxes(size, MIN_SIZES, STEPS).shape[0]


# ---- registry entry and presets ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["retinaface_mnet", "retinaface_r50"])
def test_entry_and_preset(name):
    entry = retinaface_entry(name)
    assert isinstance(entry, DetectorEntry) and entry.num_landmarks == 5
    cfg = load_config([ROOT / entry.preset])
    assert cfg.MODEL.NAME == name
    entry.check(cfg)
    spec = entry.input_spec(cfg)
    assert (spec.channel_order, spec.mean) == ("BGR", (104.0, 117.0, 123.0))
    rgb = torch.tensor([[[[10, 20, 30]]]], dtype=torch.uint8)
    assert spec.to_input(rgb).flatten().tolist() == [30 - 104, 20 - 117, 10 - 123]
    assert (cfg.DETECT.CONF_THRESH, cfg.DETECT.NMS_THRESH, cfg.DETECT.NMS_TOP_K,
            cfg.RETINAFACE.KEEP_TOP_K) == (0.02, 0.4, 5000, 750)
    assert cfg.RETINAFACE.IMAGE_SIZE == {"retinaface_mnet": 640, "retinaface_r50": 840}[name]
    assert cfg.SOLVER.BATCH_SIZE == {"retinaface_mnet": 32, "retinaface_r50": 24}[name]
    bad = load_config([ROOT / entry.preset], ["RETINAFACE.STEPS=[8, 16]"])
    with pytest.raises(ValueError, match="RETINAFACE.STEPS"):
        entry.check(bad)


def test_entry_postprocess_and_criterion_run():
    entry = retinaface_entry("retinaface_mnet")
    cfg = load_config([ROOT / entry.preset])
    torch.manual_seed(6)
    net = entry.build(cfg)
    x = torch.randn(2, 3, 64, 64)
    out = net(x)
    targets = [torch.tensor([[0.1, 0.1, 0.5, 0.6, 1] + [0.2, 0.3] * 5]),
               torch.tensor([[0.5, 0.4, 0.9, 0.9, 1] + [-1.0] * 10])]
    losses = entry.criterion(cfg)(out, targets, (64, 64))
    assert set(losses) == {"loss_loc", "loss_conf", "loss_landm"}
    sum(losses.values()).backward()
    dets = entry.postprocess(cfg)(net.eval()(x), (64, 64))
    assert len(dets) == 2 and all(d.shape[1] == 15 for d in dets)
