"""test.py: result files, single and multi-scale modes, enhancement, formats, resuming."""
import cv2
import numpy as np
import pytest
import torch

import test as test_script
from data.image_folder import read_rgb
from models.inference import build_face_detector
from data.config import default_config
from models.dsfd.net import DSFD
from lowlevel.enhancement import EnhanceNet, enhance_uint8
from models.test_time import reference_passes
from tests.helpers import make_tiny_wider
from tests.reference_ports import multi_scale_detect
from utils.checkpoint import atomic_save


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    make_tiny_wider(folder, n=3, size=(72, 100))
    return folder


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    net = DSFD(width=0.125)
    with torch.no_grad():                      # a confident face class: many detections
        for conv in net.conf_pal2:
            conv.bias[1] += 1.0
    folder = tmp_path_factory.mktemp("w")
    atomic_save(net.state_dict(), folder / "plain.pth")                          # reference format
    atomic_save({"model": net.state_dict(), "config": {"MODEL": {"WIDTH": 0.125}}},
                folder / "ours.pth")
    torch.manual_seed(1)
    atomic_save(EnhanceNet().state_dict(), folder / "enhancer.pth")
    return folder


def read(path):
    text = path.read_text()
    return np.array([[float(v) for v in line.split()] for line in text.splitlines()]).reshape(-1, 5)


def detector(weights):
    return build_face_detector(default_config(), str(weights / "ours.pth"), torch.device("cpu"))


def run(weights, images, out, *extra):
    return test_script.main(["--weights", str(weights / "ours.pth"), "--images", str(images),
                             "--output", str(out), "--workers", "0", *extra])


def test_single_scale_files_are_the_detector_output_in_pixels(images, weights, tmp_path):
    assert run(weights, images / "images", tmp_path, "--mode", "single", "--no-enhance") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000.txt", "001.txt", "002.txt"]
    dets = read(tmp_path / "000.txt")
    rgb = read_rgb(images / "images" / "000.jpg")
    expected = detector(weights)(rgb[None])[0].numpy().astype(np.float64) \
        * np.array([100, 72, 100, 72, 1])
    assert len(dets) > 0 and np.array_equal(dets, expected)      # the text round-trips exactly
    assert (dets[:, 4] > 0.05).all() and (np.diff(dets[:, 4]) <= 0).all()


def test_single_scale_resizes_like_the_reference(images, weights, tmp_path):
    assert run(weights, images / "images", tmp_path, "--mode", "single", "--scale", "2",
               "--no-enhance") == 0
    rgb = read_rgb(images / "images" / "001.jpg")
    big = cv2.resize(rgb, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR)
    expected = detector(weights)(big[None])[0].numpy().astype(np.float64) \
        * np.array([100, 72, 100, 72, 1])
    assert np.array_equal(read(tmp_path / "001.txt"), expected)


def test_multi_scale_equals_a_port_of_the_reference(weights, tmp_path):
    images = tmp_path / "big"
    make_tiny_wider(images, n=2, size=(150, 210), seed=3)
    assert run(weights, images / "images", tmp_path, "--no-enhance") == 0
    det = detector(weights)

    def detect_face(img, scale):                # the reference's detect_face around ours
        x = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        d = det(x[None])[0].numpy().astype(np.float64) * np.array(
            [img.shape[1], img.shape[0], img.shape[1], img.shape[0], 1])
        return d if len(d) else np.array([[0, 0, 0, 0, 0.001]])

    for name in ("000", "001"):
        rgb = read_rgb(images / "images" / f"{name}.jpg")
        expected = multi_scale_detect(detect_face, rgb)
        ours = read(tmp_path / f"{name}.txt")
        assert ours.shape == expected.shape and len(ours) > 0
        assert np.allclose(ours, expected, rtol=1e-9, atol=1e-6)


def test_passes_too_small_for_the_network_find_nothing(images, weights, tmp_path):
    # 72 x 100 at scale 0.25 is 18 x 25 pixels: the pass returns the dummy row, then is filtered
    assert run(weights, images / "images", tmp_path, "--no-enhance") == 0
    assert len(read(tmp_path / "000.txt")) > 0


def test_reference_plan_for_a_dark_face_image():
    plan = reference_passes(720, 1080)
    assert [(p.scale, p.flip, p.keep) for p in plan] == [
        (1, False, "all"), (1, True, "all"), (0.5, False, "big"), (0.75, False, "big"),
        (2, False, "small"), (1.5, False, "small"), (3, False, "small"), (0.25, False, "big"),
        (1.25, False, "small"), (1.75, False, "small"), (2.25, False, "small")]


def test_enhancement_runs_before_detection(images, weights, tmp_path):
    assert run(weights, images / "images", tmp_path, "--mode", "single", "--enhancer",
               str(weights / "enhancer.pth")) == 0
    net = EnhanceNet()
    net.load_state_dict(torch.load(weights / "enhancer.pth"))
    rgb = read_rgb(images / "images" / "002.jpg")
    bright = enhance_uint8(net.eval(), rgb)
    expected = detector(weights)(bright[None])[0].numpy().astype(np.float64) \
        * np.array([100, 72, 100, 72, 1])
    assert np.array_equal(read(tmp_path / "002.txt"), expected)
    with pytest.raises(FileNotFoundError, match="ENHANCE.WEIGHTS"):
        run(weights, images / "images", tmp_path / "x", "ENHANCE.WEIGHTS=/nope.pth")


def test_wider_format_resume_and_overwrite(images, weights, tmp_path):
    assert run(weights, images / "images", tmp_path, "--mode", "single", "--no-enhance",
               "--format", "wider") == 0
    path = tmp_path / "images" / "000.txt"              # <event = folder name>/<stem>.txt
    lines = path.read_text().splitlines()
    assert lines[0] == "000" and int(lines[1]) == len(lines) - 2 > 0
    xywh = np.array([[float(v) for v in line.split()] for line in lines[2:]])
    single = tmp_path / "single"
    assert run(weights, images / "images", single, "--mode", "single", "--no-enhance") == 0
    corners = read(single / "000.txt")
    assert np.allclose(xywh[:, 2:4], corners[:, 2:4] - corners[:, 0:2])
    assert np.array_equal(xywh[:, [0, 1, 4]], corners[:, [0, 1, 4]])
    # existing results are kept unless --overwrite
    path.write_text("kept\n")
    assert run(weights, images / "images", tmp_path, "--mode", "single", "--no-enhance",
               "--format", "wider") == 0
    assert path.read_text() == "kept\n"
    assert run(weights, images / "images", tmp_path, "--mode", "single", "--no-enhance",
               "--format", "wider", "--overwrite") == 0
    assert path.read_text().startswith("000\n")


def test_reference_state_dict_list_file_and_empty_files(images, weights, tmp_path):
    rc = test_script.main(["--weights", str(weights / "plain.pth"), "--images",
                           str(images / "list.txt"), "--root", str(images), "--output",
                           str(tmp_path), "--mode", "single", "--no-enhance", "--workers", "0",
                           "MODEL.WIDTH=0.125", "DETECT.CONF_THRESH=0.99999"])
    assert rc == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000.txt", "001.txt", "002.txt"]
    assert all(p.read_text() == "" for p in tmp_path.iterdir())


def test_unreadable_image_is_skipped(images, weights, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "bad.jpg").write_bytes(b"not a jpeg")
    (folder / "good.jpg").write_bytes((images / "images" / "001.jpg").read_bytes())
    out = tmp_path / "out"
    assert run(weights, folder, out, "--mode", "single", "--no-enhance") == 0
    assert sorted(p.name for p in out.iterdir()) == ["good.txt"]


def test_missing_inputs_are_clear_errors(weights, tmp_path):
    with pytest.raises(FileNotFoundError, match="--images"):
        run(weights, tmp_path / "nope", tmp_path / "o", "--no-enhance")
    with pytest.raises(FileNotFoundError, match="--weights"):
        test_script.main(["--weights", str(tmp_path / "nope.pth"), "--images", str(tmp_path),
                          "--output", str(tmp_path / "o")])
