"""data/annotations.py: the registry of face-annotation formats, readers, writers, sniffing."""
import logging
import re
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from data.annotations import (FORMATS, AnnotationError, FaceRecord, detect_format,
                              has_landmarks, read_annotations, write_annotations)
from data.widerface import parse_list_file
from tests.helpers import assert_read_fails, bad_wider_lines


def where(path, line):
    """The ``file:line:`` prefix every error message starts with, as a regex."""
    return "^" + re.escape(f"{path}:{line}:")


def no_points(n):
    return np.full((n, 5, 2), -1.0)


# ---- wider ---------------------------------------------------------------------------------------

def test_wider_reads_boxes_labels_and_drops_degenerate_boxes(tmp_path, caplog):
    lst = tmp_path / "list.txt"
    lst.write_text("imgs/a.jpg 2 10 20 30 40 1 5 6 7 8 2\r\n"
                   "\r\n"
                   "  \n"
                   "/abs/b.png 1 1.5 2.5 3 4 1   \n"
                   "imgs/c.jpg 3 0 0 0 5 1 1 1 5 -1 1 2 3 4 5 1\n"
                   "imgs/d.jpg 0\n")
    with caplog.at_level(logging.INFO, logger="data.annotations"):
        records = read_annotations(lst, "wider", root=tmp_path)
    assert [r.path for r in records] == [str(tmp_path / "imgs/a.jpg"), "/abs/b.png",
                                         str(tmp_path / "imgs/c.jpg"), str(tmp_path / "imgs/d.jpg")]
    assert records[0].boxes.tolist() == [[10, 20, 40, 60], [5, 6, 12, 14]]     # x2 = x + w
    assert records[0].labels.tolist() == [1, 2] and records[0].labels.dtype == np.int64
    assert records[1].boxes.tolist() == [[1.5, 2.5, 4.5, 6.5]]
    assert records[2].boxes.tolist() == [[2, 3, 6, 8]]          # w <= 0 and h <= 0 dropped
    assert records[3].boxes.shape == (0, 4) and records[3].landmarks.shape == (0, 5, 2)
    assert "dropped 2 boxes" in caplog.text
    assert all(r.size is None and not has_landmarks(r).any() for r in records)
    assert (records[0].landmarks == -1).all() and records[0].landmarks.shape == (2, 5, 2)


def test_wider_matches_parse_list_file(tmp_path):
    lst = tmp_path / "list.txt"          # labels 1 only: parse_list_file may refuse others
    lst.write_text("a.jpg 2 1 2 3 4 1 5 5 0 3 1\nb.jpg 1 0 0 0 0 1\nc.jpg 0\n"
                   "d.jpg 2 7.25 8 9 10.5 1 1 1 1 1 1\n")
    ours = read_annotations(lst, "wider", root=tmp_path / "root")
    theirs = parse_list_file(lst, root=tmp_path / "root", keep_empty=True)
    assert [r.path for r in ours] == [r.path for r in theirs]
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.labels, b.labels)
    assert [r.path for r in ours if len(r.boxes)] == [r.path for r in parse_list_file(
        lst, root=tmp_path / "root")]


@pytest.mark.parametrize("line, what", bad_wider_lines("read_annotations"))
def test_wider_bad_line_names_file_and_line(tmp_path, line, what):
    lst = tmp_path / "bad_list.txt"
    assert_read_fails(partial(read_annotations, fmt="wider"), lst,
                      f"ok.jpg 1 1 2 3 4 1\n\n{line}\nok.jpg 1 1 2 3 4 1\n",
                      AnnotationError, where(lst, 3) + ".*" + re.escape(what))


# ---- retinaface ------------------------------------------------------------------------------

RETINA_TEXT = (
    "# 0--Parade/a.jpg\n"
    "449 330 122 149 488.906 373.643 0.0 542.089 376.442 0.0 515.031 412.83 0.0 "
    "485.174 425.893 0.0 538.357 431.491 1.0 0.82\n"
    "78 221 7 8 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 -1.0 0.2\n"
    "# 0--Parade/empty.jpg\n"
    "# 1--Handshaking/b c.jpg\n"
    "10 20 0 5\n"
    "1 2 3 4\n")


def test_retinaface_reads_boxes_landmarks_and_image_folder(tmp_path):
    label = tmp_path / "train" / "label.txt"
    label.parent.mkdir()
    label.write_text(RETINA_TEXT)
    records = read_annotations(label, "retinaface")
    images = tmp_path / "train" / "images"
    assert [r.path for r in records] == [str(images / "0--Parade/a.jpg"),
                                         str(images / "0--Parade/empty.jpg"),
                                         str(images / "1--Handshaking/b c.jpg")]
    a, empty, b = records
    assert a.boxes.tolist() == [[449, 330, 571, 479], [78, 221, 85, 229]]
    assert a.landmarks[0].tolist() == [[488.906, 373.643], [542.089, 376.442], [515.031, 412.83],
                                       [485.174, 425.893], [538.357, 431.491]]
    assert (a.landmarks[1] == -1).all() and has_landmarks(a).tolist() == [True, False]
    assert empty.boxes.shape == (0, 4) and empty.labels.shape == (0,)
    assert b.boxes.tolist() == [[1, 2, 4, 6]]                   # the w = 0 face dropped
    assert b.labels.tolist() == [1] and b.size is None and (b.landmarks == -1).all()
    other = read_annotations(label, "retinaface", root=tmp_path / "pics")
    assert other[0].path == str(tmp_path / "pics" / "0--Parade/a.jpg")


# ---- labelv2 ---------------------------------------------------------------------------------

def test_labelv2_reads_sizes_boxes_and_both_landmark_layouts(tmp_path):
    label = tmp_path / "labelv2.txt"
    label.write_text("# 0--Parade/a.jpg 1024 678\n"
                     "345 211 349 215\n"
                     "10 20 30 40 11 21 0.0 12 22 0.0 13 23 1.0 -1 -1 -1 15 25 0.0\n"
                     "# b.jpg 640 480\n"
                     "1 2 3 4 5 6 7 8 9 10 11 12 13 14\n"
                     "5 5 5 9\n")
    a, b = read_annotations(label, "labelv2")
    assert a.path == str(tmp_path / "images" / "0--Parade/a.jpg") and a.size == (1024, 678)
    assert a.boxes.tolist() == [[345, 211, 349, 215], [10, 20, 30, 40]]   # already x1 y1 x2 y2
    assert a.landmarks[1].tolist() == [[11, 21], [12, 22], [13, 23], [-1, -1], [15, 25]]
    assert has_landmarks(a).tolist() == [False, True] and (a.landmarks[0] == -1).all()
    assert b.size == (640, 480) and b.boxes.tolist() == [[1, 2, 3, 4]]   # zero width dropped
    assert b.landmarks[0].ravel().tolist() == list(range(5, 15))


# ---- bad lines of the block formats (retinaface, labelv2) ------------------------------------

@pytest.mark.parametrize("fmt, text, line, what", [
    ("retinaface", "1 2 3 4\n# a.jpg\n", 1, "face line before any '# <image path>' header"),
    ("retinaface", "# a.jpg\n1 2 3 4\n1 2 3 4 5 6 7\n", 3, "needs 4 or 20 numbers"),
    ("retinaface", "# a.jpg\n1 2 3 4\n1 2 x 4\n", 3, "'x' is not a number"),
    ("retinaface", "# a.jpg\n\n#\n1 2 3 4\n", 3, "expected '# <image path>'"),
    ("retinaface", "# a.jpg\n1 2 3 inf\n", 2, "non-finite"),
    ("labelv2", "# a.jpg 10\n1 2 3 4\n", 1, "expected '# <image path> <width> <height>'"),
    ("labelv2", "# a.jpg 10 x\n", 1, "positive integer sizes"),
    ("labelv2", "# a.jpg 10 0\n", 1, "positive integer sizes"),
    ("labelv2", "# a.jpg 10 10\n1 2 3 4\n1 2 3 4 5\n", 3, "needs 4, 14 or 19 numbers"),
    ("labelv2", "\n\n1 2 3 4\n", 3, "face line before any"),
])
def test_block_format_bad_line_names_file_and_line(tmp_path, fmt, text, line, what):
    label = tmp_path / {"retinaface": "label.txt", "labelv2": "labelv2.txt"}[fmt]
    assert_read_fails(partial(read_annotations, fmt=fmt), label, text,
                      AnnotationError, where(label, line) + ".*" + re.escape(what))


# ---- encodings and line ends -----------------------------------------------------------------

def test_bom_and_crlf_are_accepted(tmp_path):
    label = tmp_path / "labelv2.txt"
    label.write_bytes(b"\xef\xbb\xbf# a.jpg 8 8\r\n1 1 4 4   \r\n\r\n")
    assert detect_format(label) == "labelv2"
    (record,) = read_annotations(label)
    assert record.path == str(tmp_path / "images" / "a.jpg")
    assert record.boxes.tolist() == [[1, 1, 4, 4]]
    lst = tmp_path / "list.txt"
    lst.write_bytes(b"\xef\xbb\xbfa.jpg 1 1 1 2 2 1\rb.jpg 0\r")              # old-Mac CR ends
    assert [r.path for r in read_annotations(lst, "wider")] == ["a.jpg", "b.jpg"]


@pytest.mark.parametrize("fmt", ["wider", "retinaface", "labelv2"])
def test_non_utf8_bytes_name_file_and_line(tmp_path, fmt):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"# ok.jpg 4 4\r\n1 1 2 2\r\n# caf\xe9.jpg 4 4\r\n")
    with pytest.raises(AnnotationError, match=where(bad, 3) + ".*0xe9 at column 6 is not UTF-8"):
        read_annotations(bad, fmt)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_annotations(tmp_path / "nope.txt", "retinaface")


# ---- laboro ----------------------------------------------------------------------------------

def make_laboro(root):
    for split in ("train", "val", "test"):
        (root / split / "images").mkdir(parents=True)
    (root / "train" / "label.txt").write_text("# 001.jpg\n27 56 14 17\n513 311 5 7\n")
    (root / "val" / "tvval_list.txt").write_text("/101.jpg\n102.jpg\r\n\n")
    (root / "test" / "tvtest_list.txt").write_text("/201.jpg\n")
    return root


def test_laboro_splits(tmp_path):
    root = make_laboro(tmp_path / "tvface")
    (train,) = read_annotations(root, "laboro", split="train")
    assert train.path == str(root / "train" / "images" / "001.jpg")
    assert train.boxes.tolist() == [[27, 56, 41, 73], [513, 311, 518, 318]]
    val = read_annotations(root, split="val")                           # sniffed: a folder
    assert [r.path for r in val] == [str(root / "val" / "images" / n)
                                     for n in ("101.jpg", "102.jpg")]
    assert all(r.boxes.shape == (0, 4) and r.labels.shape == (0,) for r in val)
    (test,) = read_annotations(root, "laboro", split="test")
    assert test.path == str(root / "test" / "images" / "201.jpg")
    (root / "val" / "label.txt").write_text("# 101.jpg\n1 2 3 4\n")    # boxes win over the list
    assert read_annotations(root, "laboro", split="val")[0].boxes.tolist() == [[1, 2, 4, 6]]


def test_laboro_errors(tmp_path):
    root = make_laboro(tmp_path / "tvface")
    with pytest.raises(ValueError, match="unknown Laboro TV Face split 'dev'"):
        read_annotations(root, "laboro", split="dev")
    (root / "test" / "tvtest_list.txt").write_text("201.jpg\n202.jpg 1 2 3 4 1\n")
    with pytest.raises(AnnotationError, match=where(root / "test" / "tvtest_list.txt", 2)
                       + ".*one image path a line"):
        read_annotations(root, "laboro", split="test")
    (root / "val" / "images").rmdir()
    with pytest.raises(AnnotationError, match=re.escape(str(root / "val" / "images"))
                       + ".*image folder missing"):
        read_annotations(root, "laboro", split="val")
    (root / "train" / "label.txt").unlink()
    with pytest.raises(AnnotationError, match="no annotation file: expected label.txt"):
        read_annotations(root, "laboro", split="train")


# ---- sniffing ----------------------------------------------------------------------------------

def test_detect_format(tmp_path):
    files = {"wider": "a.jpg 1 1 2 3 4 1\n", "retinaface": "\n# a b.jpg\n1 2 3 4\n",
             "labelv2": "# a.jpg 640 480\n1 2 3 4\n"}
    for fmt, text in files.items():
        (tmp_path / f"{fmt}.txt").write_text(text)
        assert detect_format(tmp_path / f"{fmt}.txt") == fmt
        assert len(read_annotations(tmp_path / f"{fmt}.txt")) == 1
    assert detect_format(make_laboro(tmp_path / "tvface")) == "laboro"
    odd = tmp_path / "odd.txt"
    odd.write_text("\nhello world\n")
    with pytest.raises(AnnotationError, match=where(odd, 2) + ".*unknown annotation format.*"
                       "wider, retinaface, labelv2, laboro"):
        detect_format(odd)
    with pytest.raises(AnnotationError, match="not a Laboro TV Face root.*known formats"):
        detect_format(tmp_path / "tvface" / "train")
    with pytest.raises(ValueError, match="unknown annotation format 'coco'"):
        read_annotations(odd, "coco")
    assert set(FORMATS) == {"wider", "retinaface", "labelv2", "laboro", "dlib_xml"}


# ---- writing -----------------------------------------------------------------------------------

def sample_records(tmp_path):
    images = tmp_path / "images"
    points = np.arange(20, dtype=np.float64).reshape(2, 5, 2) + 0.5
    points[1] = -1
    return [FaceRecord(str(images / "e/a.jpg"), np.array([[1, 2, 11.5, 22], [3, 4, 5, 6]], float),
                       points, np.array([1, 1]), (64, 48)),
            FaceRecord(str(images / "e/empty.jpg"), np.zeros((0, 4)), no_points(0),
                       np.zeros(0, np.int64), (32, 32)),
            FaceRecord("/elsewhere/b.png", np.array([[0.25, 0.5, 9, 9]]), no_points(1),
                       np.array([1]), (16, 16))]


def assert_same(read, written, keep_points=True, keep_size=True):
    assert [r.path for r in read] == [r.path for r in written]
    for a, b in zip(read, written):
        np.testing.assert_allclose(a.boxes, b.boxes, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert a.boxes.dtype == np.float64 and a.labels.dtype == np.int64
        if keep_points:
            np.testing.assert_array_equal(a.landmarks, b.landmarks)
        if keep_size:
            assert a.size == b.size


@pytest.mark.parametrize("fmt", ["labelv2", "retinaface"])
def test_block_formats_round_trip(tmp_path, fmt):
    records = sample_records(tmp_path)
    out = tmp_path / f"{fmt}.txt"
    write_annotations(records, out, fmt)
    text = out.read_text()
    assert "# e/a.jpg" in text and "# /elsewhere/b.png" in text
    assert detect_format(out) == fmt
    assert_same(read_annotations(out), records, keep_size=fmt == "labelv2")
    widths = {len(line.split()) for line in text.splitlines() if not line.startswith("#")}
    assert widths == {19 if fmt == "labelv2" else 20}       # landmarks (or -1) on every face


def test_labelv2_without_landmarks_writes_boxes_only(tmp_path):
    records = [FaceRecord(str(tmp_path / "images" / "a.jpg"), np.array([[1.0, 2, 3, 4]]),
                          no_points(1), np.array([1]), (8, 8))]
    write_annotations(records, tmp_path / "v2.txt", "labelv2")
    assert (tmp_path / "v2.txt").read_text() == "# a.jpg 8 8\n1 2 3 4\n"
    records[0].size = None
    with pytest.raises(ValueError, match="labelv2 needs the image size"):
        write_annotations(records, tmp_path / "v2.txt", "labelv2")


def test_wider_round_trip(tmp_path, monkeypatch):
    lst = tmp_path / "list.txt"
    lst.write_text("./imgs/a.jpg 2 10 20 30 40 1 5 6 7 8 2\nimgs/b.jpg 0\n"
                   "/abs/c.jpg 1 0.5 1.25 2 3 1\n")
    monkeypatch.chdir(tmp_path)
    records = read_annotations(lst)
    write_annotations(records, tmp_path / "out" / "list.txt", "wider")
    assert (tmp_path / "out" / "list.txt").read_text() == (
        "imgs/a.jpg 2 10 20 30 40 1 5 6 7 8 2\nimgs/b.jpg 0\n/abs/c.jpg 1 0.5 1.25 2 3 1\n")
    assert_same(read_annotations(tmp_path / "out" / "list.txt"), records)
    converted = tmp_path / "as_v2.txt"
    for r in records:
        r.size = (100, 100)
    write_annotations(records, converted, "labelv2")   # outside images/: written absolute
    back = read_annotations(converted)
    assert [r.path for r in back] == [str(tmp_path / "imgs/a.jpg"), str(tmp_path / "imgs/b.jpg"),
                                      "/abs/c.jpg"]
    assert all(np.array_equal(a.boxes, b.boxes) for a, b in zip(back, records))
    with pytest.raises(ValueError, match="cannot write annotation format 'laboro'"):
        write_annotations(records, tmp_path / "x.txt", "laboro")
    records[0].path = "a b.jpg"
    with pytest.raises(ValueError, match="whitespace"):
        write_annotations(records, tmp_path / "x.txt", "wider")


# ---- the real files --------------------------------------------------------------------------

def test_real_labelv2_val(shared_data):
    path = shared_data / "yunet" / "labelv2_val.txt"
    raw = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    headers = [line for line in raw if line.startswith("#")]
    faces = [line.split() for line in raw if not line.startswith("#")]
    kept = [f for f in faces if float(f[2]) > float(f[0]) and float(f[3]) > float(f[1])]
    records = read_annotations(path)
    assert len(records) == len(headers) == 3226
    assert sum(len(r.boxes) for r in records) == len(kept) == len(faces) == 39697
    assert sum(len(r.boxes) == 0 for r in records) == 4
    without = [len(f) == 4 for f in kept]
    points = np.concatenate([r.landmarks for r in records])
    flags = np.concatenate([has_landmarks(r) for r in records])
    assert (flags == ~np.array(without)).all() and (points[~flags] == -1).all()
    first = raw.index(headers[1])                                  # first record by hand
    name, width, height = headers[0][1:].split()
    assert records[0].path == str(path.parent / "images" / name)
    assert records[0].size == (int(width), int(height)) == (1024, 678)
    np.testing.assert_array_equal(records[0].boxes, [[float(v) for v in line.split()]
                                                     for line in raw[1:first]])
    assert records[0].boxes[0].tolist() == [345, 211, 349, 215]


def test_real_wider_val_agrees_with_parse_list_file_and_labelv2(shared_data):
    lst = shared_data / "hla_lists" / "wider_face_val.txt"
    ours = read_annotations(lst)
    theirs = parse_list_file(lst, keep_empty=True)
    assert [r.path for r in ours] == [r.path for r in theirs] and len(ours) == 3226
    assert all(np.array_equal(a.boxes, b.boxes) and np.array_equal(a.labels, b.labels)
               for a, b in zip(ours, theirs))
    v2 = read_annotations(shared_data / "yunet" / "labelv2_val.txt")
    # The same faces in both files: x2 = x + w on one side, x2 as written on the other.
    assert [r.path.split("images/")[-1] for r in ours] == [r.path.split("images/")[-1] for r in v2]
    assert all(np.array_equal(a.boxes, b.boxes) for a, b in zip(ours, v2))


# ---- dlib_xml ----------------------------------------------------------------------------------

DLIB_XML = """<?xml version='1.0' encoding='ISO-8859-1'?>
<dataset><name>caf\xe9</name>
<images>
  <image file='a.jpg' width='64' height='48'>
    <box top='2' left='1' width='10' height='20'/>
    <box top='5' left='6' width='7' height='8' ignore='1'/>
  </image>
  <image file='sub/empty.jpg'>
  </image>
  <image file='b.jpg'>
    <box top='0' left='0' width='0' height='4'/>
    <box top='1' left='2' width='30' height='30'>
{parts}
    </box>
  </image>
</images></dataset>
"""


def dlib_file(tmp_path, text=None):
    parts = "\n".join(f"<part name='{k:02d}' x='{k}' y='{100 + k}'/>" for k in range(68))
    path = tmp_path / "faces.xml"
    path.write_bytes((text or DLIB_XML.format(parts=parts)).encode("latin-1"))
    return path


def test_dlib_xml_reads_boxes_ignore_sizes_and_five_points(tmp_path):
    path = dlib_file(tmp_path)
    assert detect_format(path) == "dlib_xml"
    records = read_annotations(path)
    assert [r.path for r in records] == [str(tmp_path / n) for n in ("a.jpg", "sub/empty.jpg",
                                                                     "b.jpg")]
    np.testing.assert_array_equal(records[0].boxes, [[1, 2, 11, 22], [6, 5, 13, 13]])
    np.testing.assert_array_equal(records[0].labels, [1, 0])          # ignore='1' -> label 0
    assert records[0].size == (64, 48) and records[1].size is None
    assert len(records[1].boxes) == 0
    np.testing.assert_array_equal(records[2].boxes, [[2, 1, 32, 31]])  # the w = 0 box dropped
    expected = [[38.5, 138.5], [44.5, 144.5], [30, 130], [48, 148], [54, 154]]
    np.testing.assert_allclose(records[2].landmarks[0], expected)
    assert not has_landmarks(records[0]).any()
    other = read_annotations(path, "dlib_xml", root=tmp_path / "img")
    assert other[0].path == str(tmp_path / "img" / "a.jpg")


@pytest.mark.parametrize("text, line, what", [
    ("<dataset><images>\n<image file='a.jpg'>\n<box top='1' left='x' width='2' height='2'/>"
     "</image></images></dataset>", 3, "left='x'.*not a number"),
    ("<dataset><images>\n<image file='a.jpg'>\n\n<box top='1' width='2' height='2'/>"
     "</image></images></dataset>", 4, "no 'left' attribute"),
    ("<dataset><images>\n<box top='1' left='1' width='2' height='2'/></images></dataset>", 2,
     "outside any <image>"),
    ("<dataset><images>\n<image file='a.jpg'>\n</images></dataset>", 3, "not well-formed"),
])
def test_dlib_xml_bad_file_names_file_and_line(tmp_path, text, line, what):
    path = dlib_file(tmp_path, text)
    with pytest.raises(AnnotationError, match=where(path, line) + ".*" + what):
        read_annotations(path, "dlib_xml")


def test_dlib_xml_without_images_is_an_error(tmp_path):
    path = dlib_file(tmp_path, "<dataset><images></images></dataset>")
    with pytest.raises(AnnotationError, match="no <image file"):
        read_annotations(path)


def test_real_dlib_faces(shared_data):
    folder = shared_data / "dlib_faces"
    records = [r for name in ("training.xml", "testing.xml")
               for r in read_annotations(folder / name)]
    assert len(records) == 9 and sum(len(r.boxes) for r in records) == 43
    assert all(Path(r.path).is_file() and (r.labels == 1).all() for r in records)
    sides = np.concatenate([r.boxes[:, 2:] - r.boxes[:, :2] for r in records])
    assert sides.min() == 37 and sides.max() == 109               # tight squares, 37-109 px
    assert np.abs(sides[:, 0] - sides[:, 1]).max() <= 1
    marked = read_annotations(folder / "testing_with_face_landmarks.xml")
    for plain, points in zip(read_annotations(folder / "testing.xml"), marked):
        np.testing.assert_array_equal(plain.boxes, points.boxes)
        inside = ((points.landmarks >= points.boxes[:, None, :2] - 10)
                  & (points.landmarks <= points.boxes[:, None, 2:] + 10))
        assert inside.all()                     # every 5-point landmark lies on its face box
