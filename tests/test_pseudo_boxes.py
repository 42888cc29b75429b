"""The pseudo-box list tool: selection, line format (checked against the shipped file's format),
paths, and an end-to-end run against the detector's own output."""
import re

import numpy as np
import pytest
import torch
from PIL import Image

from data.config import default_config
from data.widerface import parse_list_file
from models.dsfd.net import DSFD
from models import test_time
from models.inference import build_face_detector
from tools import make_pseudo_boxes as mpb
from utils.checkpoint import atomic_save

# one line of the WIDER list format as the shipped mf_dsfd_dark_face_train.txt writes it
LINE = re.compile(r"^\./dataset/DarkFace/images_enhanced/train/\d+\.png (\d+)"
                  r"((?: -?\d+ -?\d+ \d+ \d+ 1)*)$")


def test_selection_keeps_threshold_or_the_best_min_boxes():
    dets = np.array([[0, 0, 5, 5, 0.2], [1, 1, 9, 9, 0.9], [2, 2, 4, 4, 0.6], [3, 3, 6, 6, 0.1]])
    assert mpb.select_boxes(dets, 0.5, 1)[:, 4].tolist() == [0.9, 0.6]
    assert mpb.select_boxes(dets, 0.95, 1)[:, 4].tolist() == [0.9]
    assert mpb.select_boxes(dets, 0.95, 3)[:, 4].tolist() == [0.9, 0.6, 0.2]
    assert mpb.select_boxes(dets, 0.95, 0).shape == (0, 5)
    assert mpb.select_boxes(np.zeros((0, 5)), 0.5, 1).shape == (0, 5)


def test_line_format_integers_and_empty_images():
    dets = np.array([[10.4, -1.6, 30.5, 20.2, 0.9], [5.0, 6.0, 5.2, 6.1, 0.7]])
    line = mpb.format_line("./dataset/DarkFace/images_enhanced/train/12.png", dets)
    assert line == "./dataset/DarkFace/images_enhanced/train/12.png 2 10 -2 20 22 1 5 6 1 1 1"
    assert LINE.match(line)
    assert mpb.format_line("./x.png", np.zeros((0, 5))) == "./x.png 0"


def test_shipped_file_has_the_format_we_write(shared_data):
    lines = (shared_data / "hla_lists" / "mf_dsfd_dark_face_train.txt").read_text().splitlines()
    for line in lines[:300]:
        m = LINE.match(line)
        assert m, line[:120]
        assert int(m.group(1)) * 5 == len(m.group(2).split())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    folder = root / "dataset" / "DarkFace" / "images_enhanced" / "train"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in (1, 2, 3):
        img = rng.integers(0, 256, (72, 100, 3), dtype=np.uint8)
        Image.fromarray(img).save(folder / f"{i}.png")
    (folder / "4.png").write_bytes(b"corrupt")
    torch.manual_seed(0)
    net = DSFD(width=0.125)
    with torch.no_grad():                          # a confident face class: many detections
        for conv in net.conf_pal2:
            conv.bias[1] += 2.0
    atomic_save({"model": net.state_dict(), "config": {"MODEL": {"WIDTH": 0.125}}},
                root / "det.pth")
    return root, folder


def test_end_to_end_matches_the_detector(setup, caplog):
    root, folder = setup
    out = root / "dataset" / "mf.txt"
    assert mpb.main(["--weights", str(root / "det.pth"), "--mode", "single", "--workers", "0",
                     "--threshold", "0.5", f"ENHANCE.ENHANCED_DIR={folder}",
                     f"FACE.TAR_TRAIN_FILE={out}", f"FACE.DATA_ROOT={root}"]) == 0
    lines = out.read_text().splitlines()
    assert [line.split()[0] for line in lines] == [
        f"./dataset/DarkFace/images_enhanced/train/{i}.png" for i in (1, 2, 3)]
    assert all(LINE.match(line) for line in lines)
    assert "4.png" in caplog.text

    tester = test_time.TestTimeDetector(build_face_detector(default_config(), str(root / "det.pth"),
                                                            torch.device("cpu")),
                                        vote=False, dummy_rows=False)
    rgb = np.array(Image.open(folder / "2.png"))
    dets = tester([rgb], [test_time.Pass(1.0)])[0]
    assert len(dets) > 1 and dets[:, 4].max() >= 0.5
    assert lines[1] == mpb.format_line(lines[1].split()[0], mpb.select_boxes(dets, 0.5, 1))

    records = parse_list_file(out, root)                         # the loader reads it back
    assert [r.path for r in records] == [str(root / "dataset/DarkFace/images_enhanced/train"
                                             / f"{i}.png") for i in (1, 2, 3)]


def test_prefix_option_and_missing_inputs(setup, tmp_path):
    root, folder = setup
    out = tmp_path / "list.txt"
    assert mpb.main(["--weights", str(root / "det.pth"), "--mode", "single", "--workers", "0",
                     "--images", str(folder), "--output", str(out), "--threshold", "2",
                     "--min-boxes", "2", "--path-prefix", "./dataset/DarkFace/images_enhanced/train"
                     ]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("./dataset/DarkFace/images_enhanced/train/1.png 2 ")
    with pytest.raises(FileNotFoundError, match="ENHANCE.ENHANCED_DIR"):
        mpb.main(["--weights", str(root / "det.pth"), f"ENHANCE.ENHANCED_DIR={tmp_path / 'no'}"])
