"""``tools/export_onnx.py --int8 --calib DIR``: a static QDQ int8 graph calibrated on a few images.

Calibrated on photos other than the astronaut (scikit-image / matplotlib samples), the int8
export of the released YuNet_n loads in onnxruntime, is made of QDQ nodes and still finds the
astronaut's face where the float graph does.
"""
import cv2
import numpy as np
import pytest
import skimage.data

from data.config import load_config
from data.real_photos import load_real_photo
from models.onnx_deploy import (ImageCalibrationReader, calibration_images, fit_image,
                                qdq_counts)
from models.onnx_runner import onnx_runner, session
from tools import export_onnx


def _calibration_folder(folder):
    folder.mkdir()
    photos = {name: load_real_photo(name) for name in ("grace_hopper", "camera", "lfw_mosaic")}
    photos["coffee"] = skimage.data.coffee()
    for name, rgb in photos.items():
        cv2.imwrite(str(folder / f"{name}.png"), rgb[..., ::-1])
    return folder


def _box_iou(a, b) -> float:
    lt, rb = np.maximum(a[:2], b[:2]), np.minimum(a[2:4], b[2:4])
    inter = np.prod(np.clip(rb - lt, 0, None))
    return float(inter / (np.prod(a[2:4] - a[:2]) + np.prod(b[2:4] - b[:2]) - inter))


def test_int8_yunet_finds_the_astronaut(shared_data, tmp_path, capsys):
    calib = _calibration_folder(tmp_path / "calib")
    out = tmp_path / "y8.onnx"
    rc = export_onnx.main(["--weights", str(shared_data / "yunet" / "yunet_n.pth"), "--out",
                           str(out), "--int8", "--calib", str(calib), "MODEL.NAME=yunet_n"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "calibrated on 4 images" in printed
    counts = qdq_counts(out)
    assert counts["QuantizeLinear"] > 50 and counts["DequantizeLinear"] > 100
    sess = session(out, threads=1)                                  # loads in onnxruntime
    assert [o.name for o in sess.get_outputs()][:3] == ["cls_8", "cls_16", "cls_32"]
    cfg = load_config(overrides=["MODEL.NAME='yunet_n'"])
    rgb = skimage.data.astronaut()
    fp32 = onnx_runner(export_onnx.fp32_path(out), cfg, threads=1)(rgb)[0].numpy()
    int8 = onnx_runner(out, cfg, threads=1)(rgb).numpy()
    assert int8[0, 4] > 0.8 and (int8[1:, 4] < 0.5).all()         # one face, as in fp32
    assert _box_iou(int8[0] * 512, fp32 * 512) > 0.85
    assert abs(int8[0, 4] - fp32[4]) < 0.05


def test_int8_retinaface_export_has_qdq_nodes(tmp_path, capsys):
    import torch

    import models.retinaface.net as rf
    from utils.checkpoint import atomic_save
    torch.manual_seed(0)
    atomic_save({"model": rf.RetinaFace("retinaface_mnet").state_dict()}, tmp_path / "r.pth")
    calib = _calibration_folder(tmp_path / "calib")
    out = tmp_path / "r8.onnx"
    rc = export_onnx.main(["--weights", str(tmp_path / "r.pth"), "--out", str(out), "--int8",
                           "--calib", str(calib), "--calib-max-side", "256",
                           "MODEL.NAME=retinaface_mnet"])
    assert rc == 0, capsys.readouterr().out
    assert qdq_counts(out)["DequantizeLinear"] > 50
    x = np.zeros((1, 3, 96, 128), np.float32)
    loc, conf, landms = session(out, threads=1).run(None, {"image": x})
    assert loc.shape[-1] == 4 and conf.shape[-1] == 2 and landms.shape[-1] == 10


def test_calibration_reader_and_flag_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="--calib"):
        calibration_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        calibration_images(tmp_path / "empty")
    with pytest.raises(SystemExit):
        export_onnx.parse_args(["--weights", "w.pth", "--int8"])        # --calib missing
    calib = _calibration_folder(tmp_path / "calib")
    seen = []
    reader = ImageCalibrationReader(calibration_images(calib), lambda rgb: seen.append(
        rgb.shape) or {"x": rgb}, size=(96, 128))
    while reader.get_next() is not None:
        pass
    assert seen == [(96, 128, 3)] * 4                   # fitted to the fixed input size
    reader.rewind()
    assert reader.get_next() is not None
    big = np.zeros((600, 900, 3), np.uint8)
    assert fit_image(big, None, 640).shape == (427, 640, 3)
    assert fit_image(big, (96, 128), None).shape == (96, 128, 3)
