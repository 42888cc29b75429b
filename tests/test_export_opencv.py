"""``tools/export_onnx.py --opencv``: fixed-size graphs that OpenCV's DNN module loads.

YuNet: our export of the released ``yunet_n.pth`` in ``cv2.FaceDetectorYN`` finds the same faces
as the official ONNX file in ``cv2.FaceDetectorYN`` on real photos (dlib's faces, the
astronaut). RetinaFace (random weights: no trained RetinaFace weights exist here):
``cv2.dnn.readNet`` loads the export and gives PyTorch's outputs and boxes.
"""
import numpy as np
import onnx
import pytest
import torch

from data.image_folder import read_rgb
from models.onnx_deploy import (OPENCV_OPS, OpenCVRunner, export_opencv, face_detector_yn,
                                opencv_input_size)
from tools import export_onnx

SCORE = 0.3                       # faces and near-faces; the comparison is one-to-one


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of corner boxes a [n, 4] and b [m, 4]."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(x[:, 2:4] - x[:, :2], axis=1)        # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def _assert_same_faces(ours: np.ndarray, ref: np.ndarray, name: str) -> None:
    """One-to-one: every reference face has one of ours with IoU >= 0.9, score within 0.01."""
    assert len(ours) == len(ref), f"{name}: {len(ours)} faces, official {len(ref)}"
    if not len(ref):
        return
    iou = _iou(ref[:, :4], ours[:, :4])
    best = iou.argmax(1)
    assert len(set(best.tolist())) == len(ref), name
    assert iou.max(1).min() >= 0.9, name
    assert np.abs(ours[best, 4] - ref[:, 4]).max() <= 0.01, name


def _photos(shared_data):
    import skimage.data
    files = sorted((shared_data / "dlib_faces").glob("*.jpg"))
    return [(f.name, read_rgb(f)) for f in files] + [("astronaut", skimage.data.astronaut())]


@pytest.fixture(scope="module")
def yunet_n(shared_data):
    from models.yunet.net import YuNet, load_yunet_weights
    net = YuNet("yunet_n").eval()
    load_yunet_weights(net, shared_data / "yunet" / "yunet_n.pth")     # the safe loader
    return net


def test_graph_layout_is_the_official_fixed_files(shared_data, yunet_n, tmp_path):
    ours = onnx.load(str(export_opencv("yunet_n", yunet_n, tmp_path / "y.onnx", (320, 320))))
    official = onnx.load(str(shared_data / "yunet" / "yunet_n_320_320.onnx"))
    shapes = lambda vs: [(v.name, [d.dim_value for d in v.type.tensor_type.shape.dim])  # noqa
                         for v in vs]
    assert shapes(ours.graph.output) == shapes(official.graph.output)     # names, order, sizes
    assert shapes(ours.graph.input) == shapes(official.graph.input) == [("input", [1, 3, 320,
                                                                                    320])]
    ops = lambda m: sorted(n.op_type for n in m.graph.node)                # noqa: E731
    assert ops(ours) == ops(official)                 # 59 Conv ... no Shape, no Constant
    assert set(ops(ours)) <= OPENCV_OPS
    assert [o.version for o in ours.opset_import] == [11]
    assert len(ours.graph.value_info) == len(official.graph.value_info)   # every shape stored


def _cfg(name: str):
    from data.config import load_config
    return load_config(overrides=[f"MODEL.NAME={name}"])


def test_yunet_in_facedetectoryn_finds_the_official_faces(shared_data, yunet_n, tmp_path):
    official = shared_data / "yunet" / "yunet_n_640_640.onnx"
    found, exported = 0, {}
    for name, rgb in _photos(shared_data):
        h, w = rgb.shape[:2]
        size = opencv_input_size(_cfg("yunet_n"), w, h)
        if size not in exported:                      # one export per padded input size
            exported[size] = export_opencv("yunet_n", yunet_n,
                                           tmp_path / f"y{size[0]}x{size[1]}.onnx", size)
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        ours = face_detector_yn(exported[size], bgr, SCORE)
        ref = face_detector_yn(official, bgr, SCORE)
        _assert_same_faces(ours, ref, name)
        found += int((ref[:, 4] >= 0.5).sum())
    assert len(exported) >= 4
    assert found >= 35                 # most of the 43 labelled faces, plus the astronaut


def test_the_cli_writes_a_graph_that_facedetectoryn_loads(shared_data, tmp_path, capsys):
    out = tmp_path / "cli.onnx"
    image = shared_data / "dlib_faces" / "2008_001009.jpg"                # 360 x 480
    rc = export_onnx.main(["--weights", str(shared_data / "yunet" / "yunet_n.pth"), "--out",
                           str(out), "--opencv", "--input-size", "360", "480", "--image",
                           str(image), "MODEL.NAME=yunet_n"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "cv2.FaceDetectorYN" in printed and "(and OpenCV)" in printed
    bgr = np.ascontiguousarray(read_rgb(image)[..., ::-1])
    ours = face_detector_yn(out, bgr, SCORE)
    _assert_same_faces(ours, face_detector_yn(shared_data / "yunet" / "yunet_n_320_320.onnx",
                                              bgr, SCORE), image.name)
    assert (ours[:, 4] >= 0.5).sum() == 2         # two faces at >= 0.5 here, as the official file


def _retinaface():
    """Random weights with live features and spread scores: BatchNorm statistics from one
    batch of noise, class heads scaled down (no saturated, tied scores at the top)."""
    import models.retinaface.net as rf
    torch.manual_seed(0)
    net = rf.RetinaFace("retinaface_mnet")
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None                      # cumulative average: this batch's stats
    with torch.no_grad():
        net.train()(torch.randn(2, 3, 128, 128) * 60)
        for head in net.eval().ClassHead:
            head.conv1x1.weight.mul_(0.05)
    return net


@pytest.mark.parametrize("size", [(240, 320), (300, 400)])      # the second not a multiple of 32
def test_retinaface_in_cv2_dnn_gives_the_pytorch_outputs_and_boxes(tmp_path, size):
    import cv2

    from data.config import load_config
    from models.inference import FaceDetector
    from models.onnx_runner import onnx_decoder
    from models.retinaface.net import _TestPhase
    net = _retinaface()
    path = export_opencv("retinaface_mnet", net, tmp_path / "r.onnx", size)
    model = onnx.load(str(path))
    assert {n.op_type for n in model.graph.node} <= OPENCV_OPS      # no Shape, Gather, ...
    cfg = load_config(overrides=["MODEL.NAME='retinaface_mnet'", "DETECT.CONF_THRESH=0.3"])
    import skimage.data
    rgb = cv2.resize(skimage.data.astronaut(), size[::-1], interpolation=cv2.INTER_AREA)
    runner = OpenCVRunner(path, onnx_decoder(cfg))
    assert isinstance(runner.net, cv2.dnn.Net)
    raw = runner.raw(rgb)
    x = torch.from_numpy(runner.decoder.inputs(rgb)["image"])
    with torch.no_grad():
        ref = dict(zip(("loc", "conf", "landms"), _TestPhase(net)(x)))
    for name in ref:
        np.testing.assert_allclose(raw[name], ref[name].numpy(), rtol=1e-4, atol=1e-4,
                                   err_msg=name)
    boxes = runner(rgb)
    ref_boxes = FaceDetector.from_config(net, cfg, torch.device("cpu"))(rgb[None])[0]
    assert len(boxes) == len(ref_boxes) > 0
    torch.testing.assert_close(boxes[:50], ref_boxes[:50], atol=2e-4, rtol=0)


def test_opencv_export_refuses_other_families_and_bad_sizes(tmp_path):
    with pytest.raises(ValueError, match="MODEL.NAME='dsfd_vgg'"):
        export_opencv("dsfd_vgg", torch.nn.Identity(), tmp_path / "d.onnx", (64, 64))
    with pytest.raises(ValueError, match="--input-size"):
        opencv_input_size(_cfg("yunet_n"), 0, 320)
    assert opencv_input_size(_cfg("yunet_n"), 500, 375) == (384, 512)     # (H, W), padded to 32
    assert opencv_input_size(_cfg("retinaface_mnet"), 500, 375) == (375, 500)
