"""tools/prepare_wider.py against the real WIDER val ground truth and the HLA-Face val list."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio

from tests.helpers import assert_read_fails
from tools import prepare_wider

ROOT = Path(__file__).resolve().parents[1]
HLA_PREFIX = "./dataset/WiderFace/WIDER_val/images"
ATTRIBUTES = ("blur_label_list", "expression_label_list", "illumination_label_list",
              "invalid_label_list", "occlusion_label_list", "pose_label_list")


def write_official_val_gt(mat_path: Path, out: Path, empty_as_count_zero: bool = False) -> None:
    """Rebuild ``wider_face_val_bbx_gt.txt`` from the official ``.mat`` in the official format:
    path, count, one ``x y w h blur expression illumination invalid occlusion pose `` line per
    face.

    Two known differences between the official val .txt and the .mat are reproduced: the one box
    stored with w = -2 in the .mat (39_Ice_Skating_iceskiing_39_583) reads w = 0 in the .txt, and
    the four face-less images (one all-zero row in the .mat) are written, as in the .txt, with a
    count of 1 and one line of zeros. ``empty_as_count_zero`` writes them instead the way the
    train .txt writes its face-less images: a count of 0 followed by one line of zeros.
    """
    m = sio.loadmat(str(mat_path))
    lines = []
    n_clamped = 0
    for e, event in enumerate(m["event_list"][:, 0]):
        files = m["file_list"][e, 0][:, 0]
        for f, name in enumerate(files):
            boxes = m["face_bbx_list"][e, 0][f, 0].astype(np.int64)
            n_clamped += int((boxes[:, 2:] < 0).sum())
            boxes[:, 2:] = np.maximum(boxes[:, 2:], 0)
            attrs = [m[key][e, 0][f, 0].astype(np.int64).reshape(len(boxes), -1)
                     for key in ATTRIBUTES]
            lines.append(f"{event[0]}/{name[0]}.jpg")
            if empty_as_count_zero and len(boxes) == 1 and not boxes.any():
                lines += ["0", "0 0 0 0 0 0 0 0 0 0 "]
                continue
            lines.append(str(len(boxes)))
            for k, box in enumerate(boxes):
                fields = list(box) + [int(a[k, 0]) for a in attrs]
                lines.append(" ".join(str(v) for v in fields) + " ")
    assert n_clamped == 1
    out.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def val_mat(shared_data):
    return shared_data / "widerface_val_gt" / "wider_face_val.mat"


@pytest.fixture(scope="module")
def hla_val_lines(shared_data):
    return (shared_data / "hla_lists" / "wider_face_val.txt").read_text()


def test_matches_hla_val_list_exactly(val_mat, hla_val_lines, tmp_path):
    gt = tmp_path / "wider_face_val_bbx_gt.txt"
    write_official_val_gt(val_mat, gt)
    out = tmp_path / "wider_face_val.txt"
    assert prepare_wider.main(["--gt", str(gt), "--out", str(out)]) == 0
    ours = out.read_text()
    assert ours.count("\n") == 3226
    assert sum(int(line.split()[1]) for line in ours.splitlines()) == 39708
    assert ours == hla_val_lines


def test_count_zero_images_become_zero_count_lines(val_mat, hla_val_lines, tmp_path):
    gt = tmp_path / "wider_face_val_bbx_gt.txt"
    write_official_val_gt(val_mat, gt, empty_as_count_zero=True)
    out = tmp_path / "val.txt"
    n_images, n_boxes = prepare_wider.convert(gt, out, HLA_PREFIX)
    assert (n_images, n_boxes) == (3226, 39704)
    ours = out.read_text().splitlines()
    differ = [(a, b) for a, b in zip(ours, hla_val_lines.splitlines()) if a != b]
    assert len(differ) == 4                  # the four images without a face
    for a, b in differ:
        assert a.split()[1:] == ["0"] and b.split()[1:] == ["1", "0", "0", "0", "0", "1"]


def test_zero_size_boxes_are_kept(tmp_path):
    gt = tmp_path / "wider_face_train_bbx_gt.txt"
    gt.write_text("0--Parade/a.jpg\n2\n1 2 0 5 0 0 0 1 0 0 \n10 20 30 40 1 0 0 0 0 0 \n"
                  "1--Handshaking/b.jpg\n0\n0 0 0 0 0 0 0 0 0 0 \n"
                  "1--Handshaking/c.jpg\n1\n5 6 7 8 0 0 0 0 0 0 \n")
    out = tmp_path / "list.txt"
    assert prepare_wider.main(["--gt", str(gt), "--out", str(out)]) == 0
    assert out.read_text().splitlines() == [
        "./dataset/WiderFace/WIDER_train/images/0--Parade/a.jpg 2 1 2 0 5 1 10 20 30 40 1",
        "./dataset/WiderFace/WIDER_train/images/1--Handshaking/b.jpg 0",
        "./dataset/WiderFace/WIDER_train/images/1--Handshaking/c.jpg 1 5 6 7 8 1",
    ]


def test_custom_prefix(tmp_path):
    gt = tmp_path / "gt.txt"
    gt.write_text("e/a.jpg\n1\n1 2 3 4 0 0 0 0 0 0\n")
    out = tmp_path / "list.txt"
    assert prepare_wider.main(["--gt", str(gt), "--out", str(out), "--prefix", "/data/w/"]) == 0
    assert out.read_text() == "/data/w/e/a.jpg 1 1 2 3 4 1\n"


@pytest.mark.parametrize("text, line, what", [
    pytest.param("e/a.jpg\nx\n", 2, "face count", id="count not a number"),
    pytest.param("e/a.jpg\n-1\n", 2, "face count", id="negative count"),
    pytest.param("e/a.jpg\n2\n1 2 3 4 0 0 0 0 0 0\n", 3, "ends first", id="file ends first"),
    pytest.param("e/a.jpg\n1\n1 2 3\n", 3, "x1 y1 w h", id="face line too short"),
    pytest.param("e/a.jpg\n1\n1 2 3 4 0 0 0 0 0 0\ne/b.jpg\n1\n1 two 3 4 0 0 0 0 0 0\n", 6,
                 "x1 y1 w h", id="word in a face line"),
    pytest.param("e/a.jpg\n1\n1 2 3 4 0 0 0 0 0 0\n7 8 9 10 0 0 0 0 0 0\n", 4, "image path",
                 id="one face line too many"),
])
def test_malformed_input_names_file_and_line(tmp_path, text, line, what, capsys):
    gt = tmp_path / "wider_face_val_bbx_gt.txt"
    assert_read_fails(prepare_wider.parse_official_gt, gt, text, prepare_wider.GroundTruthError,
                      rf"{gt.name}, line {line}: .*{what}")
    assert prepare_wider.main(["--gt", str(gt), "--out", str(tmp_path / "o.txt")]) == 1
    assert f"line {line}" in capsys.readouterr().err


def test_wider_root_converts_both_splits_from_the_command_line(tmp_path):
    split_dir = tmp_path / "WiderFace" / "wider_face_split"
    split_dir.mkdir(parents=True)
    (split_dir / "wider_face_train_bbx_gt.txt").write_text("e/t.jpg\n1\n1 2 3 4 0 0 0 0 0 0\n")
    (split_dir / "wider_face_val_bbx_gt.txt").write_text("e/v.jpg\n0\n0 0 0 0 0 0 0 0 0 0\n")
    out_dir = tmp_path / "lists"
    result = subprocess.run(
        [sys.executable, "tools/prepare_wider.py", "--wider-root", str(tmp_path / "WiderFace"),
         "--out-dir", str(out_dir)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    root = str(tmp_path / "WiderFace")
    assert (out_dir / "wider_face_train.txt").read_text() == \
        f"{root}/WIDER_train/images/e/t.jpg 1 1 2 3 4 1\n"
    assert (out_dir / "wider_face_val.txt").read_text() == f"{root}/WIDER_val/images/e/v.jpg 0\n"
