"""YuNet network, released weights, ONNX export and decoding/NMS against the official pipelines.

Real photos only (no synthetic faces): ``skimage.data.astronaut()`` and ``camera()``,
matplotlib's ``grace_hopper.jpg``, a 10 x 10 mosaic of the 100 face crops of
``skimage.data.lfw_subset()`` (Labeled Faces in the Wild), the cat ``chelsea()`` and ``coffee()``
(no person), and simulated low-light copies (``data/lowlight.py``). The oracle for decoding +
NMS is ``cv2.FaceDetectorYN``: the official ONNX with OpenCV's official post-processing.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from models.yunet.postprocess import YuNetPostprocess, grid_priors, level_sizes
from models.interface import check_interface
from models.yunet.entry import yunet_entry
from models.yunet.net import (OUTPUT_NAMES, YuNet, YuNetOutput, export_yunet_onnx, fuse_batchnorm,
                              load_yunet_weights)

ROOT = Path(__file__).resolve().parents[1]
PARAMS = {"yunet_n": 75_856, "yunet_s": 54_608}
TENSORS = {"yunet_n": 208, "yunet_s": 181}
ONNX_TOL = 1e-4            # measured: <= 8e-6 (PyTorch vs onnxruntime), <= 5e-6 (ours vs official)


# ---- real photos -------------------------------------------------------------------------------

def _resize(rgb, size):
    import cv2
    return np.ascontiguousarray(cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA))


def _lfw_mosaic(tile: int = 64) -> np.ndarray:
    """The 100 LFW face crops of scikit-image, 10 x 10 tiles: a real 100-face image."""
    import cv2
    import skimage.data
    faces = skimage.data.lfw_subset()[:100]
    grid = np.zeros((10 * tile, 10 * tile), np.uint8)
    for i, face in enumerate(faces):
        r, c = divmod(i, 10)
        grid[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = cv2.resize(
            (face * 255).astype(np.uint8), (tile, tile), interpolation=cv2.INTER_CUBIC)
    return np.repeat(grid[..., None], 3, 2)


@pytest.fixture(scope="module")
def photos():
    import matplotlib.cbook
    import skimage.data
    from PIL import Image
    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as im:
        grace = np.array(im.convert("RGB"))
    return {"astronaut": skimage.data.astronaut(), "grace_hopper": grace,
            "camera": np.repeat(skimage.data.camera()[..., None], 3, 2),
            "lfw_mosaic": _lfw_mosaic(), "chelsea": skimage.data.chelsea(),
            "coffee": skimage.data.coffee()}


def _low_light(rgb: np.ndarray, seed: int) -> np.ndarray:
    from data.lowlight import simulate_low_light
    return simulate_low_light(rgb, np.random.default_rng(seed), exposure=0.12)


@pytest.fixture(scope="module")
def released(shared_data):
    nets = {}
    for v in ("yunet_n", "yunet_s"):
        net = YuNet(v)
        load_yunet_weights(net, shared_data / "yunet" / f"{v}.pth")
        nets[v] = net.eval()
    return nets


def _bgr_batch(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack([im[..., ::-1] for im in images]).astype(np.float32)
                            ).permute(0, 3, 1, 2).contiguous()


# ---- structure, no shared data needed -----------------------------------------------------------

@pytest.mark.parametrize("variant", ["yunet_n", "yunet_s"])
def test_fresh_model_matches_the_published_size(variant):
    net = YuNet(variant)
    state = net.state_dict()
    assert sum(p.numel() for p in net.parameters()) == PARAMS[variant]
    assert len(state) == TENSORS[variant]
    assert state["backbone.model0.conv1.weight"].shape == (16, 3, 3, 3)
    assert state["bbox_head.multi_level_kps.2.conv1.weight"].shape == (10, 64, 1, 1)
    shared = any(k.startswith("bbox_head.multi_level_share_convs.") for k in state)
    assert shared == (variant == "yunet_n")
    assert state["backbone.model1.conv2.conv1.weight"].shape[0] == (64 if variant == "yunet_n"
                                                                   else 32)


def test_detector_interface_and_any_input_size():
    net = YuNet("yunet_n").eval()
    check_interface(net)
    assert net.has_batchnorm and net.feature_channels == [64, 64, 64]
    x = torch.rand(2, 3, 100, 90) * 255                   # not a multiple of 32
    with torch.no_grad():
        feats = net.features(x)
        out = net(x)
        key = net.make_key_encoder()
        keys = key(x)
    assert [tuple(f.shape) for f in feats] == [(2, 64, 12, 11), (2, 64, 6, 5), (2, 64, 3, 2)]
    assert out.feature_sizes == [(12, 11), (6, 5), (3, 2)] == level_sizes((100, 90))
    for level, (h, w) in enumerate(out.feature_sizes):
        assert out.cls[level].shape == out.obj[level].shape == (2, h * w, 1)
        assert out.bbox[level].shape == (2, h * w, 4) and out.kps[level].shape == (2, h * w, 10)
    names = dict(net.named_parameters())
    assert {n for n, _ in key.named_parameters()} <= set(names)
    assert not any(p.requires_grad for p in key.parameters())
    for a, b in zip(feats, keys):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert len(net.onnx_outputs(x)) == len(OUTPUT_NAMES) == 12


def test_fused_batchnorm_is_the_same_function():
    net = YuNet("yunet_s")
    for m in net.modules():                               # non-trivial statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    net.eval()
    x = torch.rand(1, 3, 64, 96) * 255
    with torch.no_grad():
        for a, b in zip(net.onnx_outputs(x), fuse_batchnorm(net).onnx_outputs(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_export_of_a_fresh_model_matches_pytorch(tmp_path):
    """No shared data needed: the dynamic export with BatchNorm statistics set; the official
    graph (x2 upsampling, multiples of 32) and the any-size one."""
    import onnx
    net = YuNet("yunet_s")
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    net.eval()
    for any_size, shapes in ((False, [(1, 3, 96, 128), (2, 3, 64, 32)]), (True, [(2, 3, 75, 61)])):
        path = export_yunet_onnx(net, tmp_path / f"s_{any_size}.onnx", any_size=any_size)
        graph = onnx.load(str(path)).graph
        assert [o.name for o in graph.output] == list(OUTPUT_NAMES)
        ops = [n.op_type for n in graph.node]
        assert "BatchNormalization" not in ops and ops.count("Conv") == 53
        assert ops.count("Shape") == (2 if any_size else 0)
        session = _session(path)
        for shape in shapes:
            x = torch.rand(shape) * 255
            with torch.no_grad():
                expect = [t.numpy() for t in net.onnx_outputs(x)]
            assert _max_diffs(session.run(None, {"input": x.numpy()}), expect) < ONNX_TOL


def test_entry_pieces():
    from data.config import load_config
    for variant in ("yunet_n", "yunet_s"):
        cfg = load_config([ROOT / "configs" / "models" / f"{variant}.yaml"])
        entry = yunet_entry(variant)
        entry.check(cfg)
        assert entry.num_landmarks == 5 and entry.preset == f"configs/models/{variant}.yaml"
        assert isinstance(entry.build(cfg), YuNet)
        spec = entry.input_spec(cfg)
        assert (spec.channel_order, spec.size_divisor) == ("BGR", 32)
        rgb = torch.randint(0, 255, (1, 33, 40, 3), dtype=torch.uint8)
        x = spec.to_input(rgb)
        assert x.shape == (1, 3, 64, 64) and torch.equal(x[0, 0, :33, :40], rgb[0, ..., 2].float())
        post = entry.postprocess(cfg)
        assert (post.conf_thresh, post.nms_thresh) == (0.02, 0.45)
        assert post.top_k <= 0 and post.nms_pre <= 0                   # no caps (mmdet's -1)
    assert cfg.YUNET.CROP_CHOICE == [0.3, 0.45, 0.6, 0.8, 1.0]
    cfg.YUNET.STRIDES = [8, 16, 32, 64]
    with pytest.raises(ValueError, match="YUNET.STRIDES"):
        yunet_entry("yunet_s").check(cfg)


def test_decoding_of_a_hand_made_output():
    """One cell (stride 16, col 3, row 2) with known regressions, as the README's fact."""
    sizes = level_sizes((64, 96))
    assert sizes == [(8, 12), (4, 6), (2, 3)]
    priors = grid_priors(sizes, (8, 16, 32))
    P = len(priors)
    cell = 8 * 12 + 2 * 6 + 3
    assert priors[cell].tolist() == [48.0, 32.0, 16.0]
    logits = torch.full((1, P, 1), -20.0)
    out_cls, out_obj = logits.clone(), logits.clone()
    out_cls[0, cell], out_obj[0, cell] = 2.0, 1.0
    bbox = torch.zeros(1, P, 4)
    bbox[0, cell] = torch.tensor([0.5, 0.25, np.log(2.0), 0.0])
    kps = torch.zeros(1, P, 10)
    kps[0, cell] = torch.arange(10) / 10
    cut = np.cumsum([0] + [h * w for h, w in sizes])
    split = lambda t: [t[:, cut[i]:cut[i + 1]] for i in range(3)]        # noqa: E731
    out = YuNetOutput(split(out_cls), split(out_obj), split(bbox), split(kps), sizes)
    det = YuNetPostprocess(conf_thresh=0.5)(out, (64, 96))[0]
    assert det.shape == (1, 15)
    cx, cy, w, h = (3 + 0.5) * 16, (2 + 0.25) * 16, 2 * 16, 16
    score = float(np.sqrt(1 / (1 + np.exp(-2.0)) / (1 + np.exp(-1.0))))
    expect = [(cx - w / 2) / 96, (cy - h / 2) / 64, (cx + w / 2) / 96, (cy + h / 2) / 64, score]
    expect += [((3 if k % 2 == 0 else 2) + k / 10) * 16 / (96 if k % 2 == 0 else 64)
               for k in range(10)]
    torch.testing.assert_close(det[0], torch.tensor(expect), rtol=1e-5, atol=1e-6)
    product = YuNetPostprocess(conf_thresh=0.5, score="product")(out, (64, 96))[0]
    assert product[0, 4] == pytest.approx(score ** 2, rel=1e-5)


# ---- the released weights ------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["yunet_n", "yunet_s"])
def test_released_checkpoint_keys_shapes_and_strict_load(shared_data, variant):
    from utils.checkpoint import load_file
    state = load_file(shared_data / "yunet" / f"{variant}.pth", "YuNet weights")["state_dict"]
    ours = YuNet(variant).state_dict()
    assert len(state) == TENSORS[variant]
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape)
                                                          for k, v in state.items()}
    assert sum(v.numel() for k, v in state.items()
               if "running_" not in k and "num_batches" not in k) == PARAMS[variant]
    net = YuNet(variant)
    load_yunet_weights(net, shared_data / "yunet" / f"{variant}.pth")      # strict=True
    torch.testing.assert_close(net.state_dict()["neck.lateral_convs.0.bn.running_var"],
                               state["neck.lateral_convs.0.bn.running_var"].cpu())


def test_released_yunet_n_finds_the_astronaut(released):
    """The README's fact: one face at about x=178, y=65, w=91, h=111, score ~0.9."""
    import skimage.data
    x = _bgr_batch([skimage.data.astronaut()])
    with torch.no_grad():
        det = YuNetPostprocess()(released["yunet_n"](x), (512, 512))[0]
    x1, y1, x2, y2, score = (det[0, :5] * torch.tensor([512, 512, 512, 512, 1])).tolist()
    assert score > 0.9 and (det[1:, 4] < 0.5).all()
    assert (x1, y1, x2 - x1, y2 - y1) == pytest.approx((178, 65, 91, 111), abs=2)


# ---- ONNX -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(released, tmp_path_factory):
    return export_yunet_onnx(released["yunet_n"], tmp_path_factory.mktemp("onnx") / "yunet_n.onnx")


def _session(path):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _max_diffs(a, b):
    assert [x.shape for x in a] == [y.shape for y in b]
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


@pytest.mark.parametrize("variant", ["yunet_n", "yunet_s"])
def test_pytorch_equals_the_official_onnx(shared_data, released, photos, variant):
    """Real photos at multiples of 32, square and not, batch of 1 and 2."""
    import cv2
    official = _session(shared_data / "yunet" / f"{variant}_dynamic.onnx")
    assert [o.name for o in official.get_outputs()] == list(OUTPUT_NAMES)
    grace = np.ascontiguousarray(cv2.resize(photos["grace_hopper"], (352, 480)))
    for images in ([_resize(photos["astronaut"], 320), _resize(photos["camera"], 320)], [grace]):
        x = _bgr_batch(images)
        with torch.no_grad():
            ours = [t.numpy() for t in released[variant].onnx_outputs(x)]
        assert _max_diffs(ours, official.run(None, {"input": x.numpy()})) < ONNX_TOL


def test_our_onnx_export_equals_pytorch_and_the_official_files(shared_data, released, exported,
                                                               photos):
    ours = _session(exported)
    official = _session(shared_data / "yunet" / "yunet_n_dynamic.onnx")
    fixed = _session(shared_data / "yunet" / "yunet_n_640_640.onnx")
    assert [o.name for o in ours.get_outputs()] == list(OUTPUT_NAMES)
    assert [i.name for i in ours.get_inputs()] == ["input"]
    x = _bgr_batch([_resize(photos["lfw_mosaic"], 640)]).numpy()
    with torch.no_grad():
        torch_out = [t.numpy() for t in released["yunet_n"].onnx_outputs(torch.from_numpy(x))]
    mine = ours.run(None, {"input": x})
    assert _max_diffs(mine, torch_out) < ONNX_TOL
    assert _max_diffs(mine, official.run(None, {"input": x})) < ONNX_TOL
    assert _max_diffs(mine, fixed.run(None, {"input": x})) < ONNX_TOL
    x = _bgr_batch([_resize(photos["astronaut"], 320), _resize(photos["grace_hopper"], 320)])
    with torch.no_grad():
        torch_out = [t.numpy() for t in released["yunet_n"].onnx_outputs(x)]
    assert _max_diffs(ours.run(None, {"input": x.numpy()}), torch_out) < ONNX_TOL


# ---- decoding + NMS against cv2.FaceDetectorYN ---------------------------------------------

def _opencv_detections(model, bgr: np.ndarray, conf: float, nms: float) -> np.ndarray:
    """FaceDetectorYN rows -> ours: x1, y1, x2, y2, score, 10 landmark coordinates (px)."""
    import cv2
    h, w = bgr.shape[:2]
    det = cv2.FaceDetectorYN.create(str(model), "", (w, h), conf, nms, 1_000_000)
    _, faces = det.detect(np.ascontiguousarray(bgr))
    faces = np.zeros((0, 15), np.float32) if faces is None else faces
    return np.concatenate([faces[:, :2], faces[:, :2] + faces[:, 2:4], faces[:, 14:15],
                           faces[:, 4:14]], 1)


def _cases(photos):
    """(size, name, RGB image): real photos and low-light copies at the official ONNX sizes."""
    cases = [(640, n, _resize(photos[n], 640)) for n in ("astronaut", "lfw_mosaic", "coffee")]
    cases += [(640, f"{n} (low light)", _low_light(_resize(photos[n], 640), seed))
              for seed, n in enumerate(("grace_hopper", "lfw_mosaic"))]
    cases += [(320, n, _resize(photos[n], 320))
              for n in ("astronaut", "grace_hopper", "camera", "chelsea")]
    cases += [(320, "astronaut (low light)", _low_light(_resize(photos["astronaut"], 320), 7))]
    return cases


@pytest.fixture(scope="module")
def oracle_runs(shared_data, released, photos):
    """Per input size: the case names, our raw network output for the batch of them, and
    FaceDetectorYN's detections (official fixed-size ONNX, threshold 0.02, NMS 0.45)."""
    cases, runs = _cases(photos), {}
    for size in (640, 320):
        batch = [c for c in cases if c[0] == size]
        with torch.no_grad():
            out = released["yunet_n"](_bgr_batch([c[2] for c in batch]))
        model = shared_data / "yunet" / f"yunet_n_{size}_{size}.onnx"
        ref = [_opencv_detections(model, c[2][..., ::-1], 0.02, 0.45) for c in batch]
        runs[size] = ([c[1] for c in batch], out, ref)
    return runs


def _pixels(dets, size):
    return [d.numpy() * np.array([size] * 4 + [1] + [size] * 10) for d in dets]


def test_decode_and_nms_equal_opencv_facedetectoryn(oracle_runs):
    """NMS_BOXES="opencv" (the default): every detection of FaceDetectorYN, down to the 0.02
    threshold, with its box, landmarks and score; the batch decoded at once."""
    post = YuNetPostprocess(conf_thresh=0.02, nms_thresh=0.45, nms_boxes="opencv")
    found = {}
    for size, (names, out, refs) in oracle_runs.items():
        for name, ours, ref in zip(names, _pixels(post(out, (size, size)), size), refs):
            assert len(ours) == len(ref), name
            np.testing.assert_allclose(ours[:, :4], ref[:, :4], atol=2e-3, err_msg=name)
            np.testing.assert_allclose(ours[:, 5:], ref[:, 5:], atol=2e-3, err_msg=name)
            np.testing.assert_allclose(ours[:, 4], ref[:, 4], atol=1e-5, err_msg=name)
            found[(size, name)] = int((ours[:, 4] > 0.5).sum())
    assert found[(640, "astronaut")] == found[(320, "grace_hopper")] == 1
    assert found[(320, "camera")] == 1
    assert found[(640, "lfw_mosaic")] == 100
    assert found[(640, "coffee")] == 0
    assert found[(320, "chelsea")] == 0                     # a cat
    assert found[(640, "lfw_mosaic (low light)")] > 80     # darker, noisier: 91 of 100


def test_float_nms_agrees_on_confident_detections(oracle_runs):
    """NMS_BOXES="float" (mmdetection's NMS) differs from OpenCV's only where the integer
    truncation moves an IoU across the threshold: among low-score boxes."""
    post = YuNetPostprocess(conf_thresh=0.02, nms_thresh=0.45, nms_boxes="float")
    for size, (names, out, refs) in oracle_runs.items():
        for name, ours, ref in zip(names, _pixels(post(out, (size, size)), size), refs):
            ours, ref = ours[ours[:, 4] >= 0.3], ref[ref[:, 4] >= 0.3]
            assert len(ours) == len(ref), name
            np.testing.assert_allclose(ours, ref, atol=2e-3, err_msg=name)


def test_postprocess_of_onnx_outputs_equals_the_torch_path(shared_data, released, photos):
    """The deployment path (official ONNX in onnxruntime + ``from_onnx``), batch of 2."""
    images = [_resize(photos["lfw_mosaic"], 320), _resize(photos["astronaut"], 320)]
    x = _bgr_batch(images)
    post = YuNetPostprocess(top_k=50)
    outs = _session(shared_data / "yunet" / "yunet_n_dynamic.onnx").run(None, {"input": x.numpy()})
    with torch.no_grad():
        a = post(released["yunet_n"](x), (320, 320))
    b = post.from_onnx(outs, (320, 320))
    for da, db in zip(a, b):
        assert len(da) == len(db) <= 50
        torch.testing.assert_close(da, db, atol=1e-4, rtol=0)
    assert (a[0][:, 4] > 0.5).sum() == 50 and (a[1][:, 4] > 0.5).sum() == 1
    assert torch.all(a[0][1:, 4] <= a[0][:-1, 4])                        # by score


def test_onnx_runner_and_the_pytorch_detector_decode_identically(shared_data, released, photos):
    """models/onnx_runner.py decodes the official export with YuNetPostprocess.from_onnx, the
    PyTorch path's own post-processing: the same detections, padding to 32 included."""
    from data.config import load_config
    from models.inference import FaceDetector
    from models.onnx_runner import onnx_runner
    cfg = load_config(overrides=["MODEL.NAME='yunet_n'"])
    runner = onnx_runner(shared_data / "yunet" / "yunet_n_dynamic.onnx", cfg, threads=1)
    detector = FaceDetector.from_config(released["yunet_n"], cfg, torch.device("cpu"))
    for rgb in (photos["astronaut"], photos["lfw_mosaic"][:300, :410], photos["grace_hopper"]):
        rgb = np.ascontiguousarray(rgb)
        a, b = detector(rgb[None])[0], runner(rgb)
        assert a.shape[1] == b.shape[1] == 15 and (a[:, 4] > 0.5).sum() >= 1
        confident = a[:, 4] > 0.05                         # low scores may swap at 1e-6 ties
        n = int(confident.sum())
        assert (b[:n, 4] > 0.05).all() and (b[n:, 4] <= 0.05).all()
        torch.testing.assert_close(b[:n], a[:n], atol=1e-4, rtol=0)
