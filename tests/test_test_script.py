"""test.py: one txt per image in original pixels, empty files, weights formats, bad images."""
import numpy as np
import pytest
import torch

import test as test_script
from models.dsfd_vgg import DSFD
from tests.helpers import make_tiny_wider
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
    folder = tmp_path_factory.mktemp("w")
    atomic_save(net.state_dict(), folder / "plain.pth")                          # reference format
    atomic_save({"model": net.state_dict(), "config": {"MODEL": {"WIDTH": 0.125}}},
                folder / "ours.pth")
    return folder


def read(path):
    text = path.read_text()
    return np.array([[float(v) for v in line.split()] for line in text.splitlines()]).reshape(-1, 5)


def test_writes_one_file_per_image_in_pixels(images, weights, tmp_path):
    out = tmp_path / "out"
    assert test_script.main(["--weights", str(weights / "ours.pth"), "--images",
                             str(images / "images"), "--output", str(out), "--workers", "0"]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["000.txt", "001.txt", "002.txt"]
    dets = read(out / "000.txt")
    assert len(dets) > 0 and (dets[:, 4] > 0.05).all()
    assert (np.diff(dets[:, 4]) <= 0).all()
    # same detections as the FaceDetector on the same image, scaled to 100 x 72 pixels
    rgb = test_script.read_rgb(images / "images" / "000.jpg")
    det = test_script.build_detector_from_weights(str(weights / "ours.pth"),
                                                  test_script.config_lib.default_config(),
                                                  torch.device("cpu"))
    expected = det(rgb[None])[0].numpy() * np.array([100, 72, 100, 72, 1])
    assert dets.shape == expected.shape and np.allclose(dets, expected, atol=1e-3)


def test_batches_give_the_same_detections(images, weights, tmp_path):
    args = ["--weights", str(weights / "ours.pth"), "--images", str(images / "images"),
            "--workers", "0"]
    assert test_script.main([*args, "--output", str(tmp_path / "a")]) == 0
    assert test_script.main([*args, "--output", str(tmp_path / "b"), "--batch-size", "3"]) == 0
    for name in ("000.txt", "001.txt", "002.txt"):
        a, b = read(tmp_path / "a" / name), read(tmp_path / "b" / name)
        top = min(len(a), len(b), 20)      # batched convolutions may reorder near-ties
        assert abs(len(a) - len(b)) <= 2 and np.allclose(a[:top], b[:top], atol=1e-3)


def test_reference_state_dict_list_file_scale_and_empty_files(images, weights, tmp_path):
    out = tmp_path / "out"
    rc = test_script.main(["--weights", str(weights / "plain.pth"), "--images",
                           str(images / "list.txt"), "--root", str(images), "--output", str(out),
                           "--scale", "1.5", "--workers", "0", "MODEL.WIDTH=0.125",
                           "DETECT.CONF_THRESH=0.99999"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["000.txt", "001.txt", "002.txt"]
    assert all(p.read_text() == "" for p in out.iterdir())


def test_unreadable_image_is_skipped(images, weights, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "bad.jpg").write_bytes(b"not a jpeg")
    (folder / "good.jpg").write_bytes((images / "images" / "001.jpg").read_bytes())
    out = tmp_path / "out"
    assert test_script.main(["--weights", str(weights / "ours.pth"), "--images", str(folder),
                             "--output", str(out), "--workers", "0"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["good.txt"]


def test_missing_inputs_are_clear_errors(weights, tmp_path):
    with pytest.raises(FileNotFoundError, match="--images"):
        test_script.main(["--weights", str(weights / "ours.pth"), "--images",
                          str(tmp_path / "nope"), "--output", str(tmp_path / "o")])
    with pytest.raises(FileNotFoundError, match="--weights"):
        test_script.main(["--weights", str(tmp_path / "nope.pth"), "--images", str(tmp_path),
                          "--output", str(tmp_path / "o")])


def test_format_is_shortest_exact_float32():
    text = test_script.format_detections(np.array([[1.5, 2.25, 100.0, 7.123456789, 0.5]]))
    values = [np.float32(v) for v in text.split()]
    assert text.endswith("\n") and values[3] == np.float32(7.123456789) and "100 " in text
