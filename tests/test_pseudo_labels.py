"""The pseudo-label file format: round trips, errors naming file:line, the score split."""
import numpy as np
import pytest

from adapt.pseudo.labels import (IGNORE, MAGIC, POSITIVE, PseudoLabelError, PseudoRecord,
                                 format_pseudo_labels, merge_pseudo_labels, read_pseudo_labels,
                                 relative_image_path, to_face_record, to_targets,
                                 write_pseudo_labels)
from tests.helpers import assert_read_fails


def make_records():
    rng = np.random.default_rng(0)
    with_lm = np.concatenate([rng.uniform(0, 500, (3, 4)) * [1, 1, 0, 0] + [0, 0, 600, 600],
                              rng.uniform(0, 1, (3, 1)), rng.uniform(0, 600, (3, 10))], 1)
    with_lm[1, 5:] = -1                                       # a box without landmarks
    boxes_only = np.array([[10.25, 20.5, 30.125, 44.0, 0.25], [1e-3, 0, 7, 9, 1.0]])
    return [PseudoRecord.from_detections("./dark/a b.png", (1080, 720), with_lm),
            PseudoRecord.from_detections("./dark/2.png", (640, 480), boxes_only),
            PseudoRecord.from_detections("/abs/empty.png", (32, 16), np.zeros((0, 5)))]


def assert_same(a, b):
    assert a.path == b.path and tuple(a.size) == tuple(b.size)
    for x, y in ((a.boxes, b.boxes), (a.scores, b.scores), (a.landmarks, b.landmarks)):
        np.testing.assert_array_equal(np.float32(x), np.float32(y))


def test_round_trip_keeps_every_float32_and_rewrites_byte_identical(tmp_path):
    records = make_records()
    path = write_pseudo_labels(tmp_path / "list.txt", records)
    back = read_pseudo_labels(path)
    assert len(back) == 3
    for a, b in zip(records, back):
        assert_same(a, b)
    assert back[0].has_landmarks().sum() == 2               # one box had none
    assert len(back[2].boxes) == 0 and back[2].landmarks.shape == (0, 5, 2)
    assert [r.line for r in back] == [2, 6, 9]
    again = write_pseudo_labels(tmp_path / "again.txt", back)
    assert again.read_bytes() == path.read_bytes()


def test_format_is_the_documented_text():
    rec = PseudoRecord.from_detections("./x.png", (100, 50),
                                       np.array([[1, 2, 3, 4, 0.5], [5, 6, 7.5, 8, 0.75]]))
    assert format_pseudo_labels([rec]) == (f"{MAGIC} 1\n# ./x.png 100 50\n"
                                           "5 6 7.5 8 0.75\n1 2 3 4 0.5\n")   # best first


def test_root_joins_relative_paths_only(tmp_path):
    path = write_pseudo_labels(tmp_path / "l.txt", make_records())
    back = read_pseudo_labels(path, root=tmp_path / "data")
    assert back[0].path == str(tmp_path / "data" / "dark" / "a b.png")
    assert back[2].path == "/abs/empty.png"


def test_merge_and_cat_of_per_image_files_read_as_one_list(tmp_path):
    records = make_records()
    files = [write_pseudo_labels(tmp_path / f"{i}.txt", [r]) for i, r in enumerate(records)]
    assert merge_pseudo_labels(files, tmp_path / "merged.txt") == 3
    merged = read_pseudo_labels(tmp_path / "merged.txt")
    for a, b in zip(records, merged):
        assert_same(a, b)
    (tmp_path / "cat.txt").write_bytes(b"".join(f.read_bytes() for f in files))
    assert [r.path for r in read_pseudo_labels(tmp_path / "cat.txt")] == [r.path for r in records]


@pytest.mark.parametrize("body, line, message", [
    ("# a.png 10 10\n1 2 3 4\n", 3, "expected 5 numbers"),
    ("# a.png 10 10\n1 2 3 4 0.5 1\n", 3, "found 6"),
    ("# a.png 10 10\n1 2 3 x 0.5\n", 3, "not a number"),
    ("# a.png 10 10\n1 2 3 4 nan\n", 3, "non-finite"),
    ("# a.png 10 10\n1 2 3 4 1.5\n", 3, "outside"),
    ("1 2 3 4 0.5\n", 2, "before the first"),
    ("# a.png\n", 2, "header"),
    ("# a.png 10 -1\n", 2, "header"),
    ("\n\n# a.png 10 10\n\n1 2 3 4 0.5\n2 3 4 5\n", 7, "expected 5 numbers"),
])
def test_malformed_lines_name_file_and_line(tmp_path, body, line, message):
    path = tmp_path / "bad.txt"
    info = assert_read_fails(read_pseudo_labels, path, f"{MAGIC} 1\n{body}", PseudoLabelError,
                             message)
    assert str(info.value).startswith(f"{path}:{line}:")


def test_other_files_are_refused(tmp_path):
    wider = tmp_path / "wider.txt"
    wider.write_text("a.png 1 1 2 3 4 1\n")
    with pytest.raises(PseudoLabelError, match="not a pseudo-label file"):
        read_pseudo_labels(wider)
    future = tmp_path / "v2.txt"
    future.write_text(f"{MAGIC} 2\n")
    with pytest.raises(PseudoLabelError, match="version"):
        read_pseudo_labels(future)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(f"{MAGIC} 1\n# a.png 1 1\n".encode() + b"\xff\n")
    with pytest.raises(PseudoLabelError, match=f"{binary}:3: byte 0xff"):
        read_pseudo_labels(binary)
    with pytest.raises(FileNotFoundError):
        read_pseudo_labels(tmp_path / "missing.txt")


def test_empty_boxes_are_dropped_with_crlf_and_bom(tmp_path):
    path = tmp_path / "l.txt"
    path.write_bytes(f"\ufeff{MAGIC} 1\r\n# a.png 10 10\r\n1 2 1 4 0.5\r\n1 2 3 4 0.5\r\n"
                     .encode())
    (rec,) = read_pseudo_labels(path)
    np.testing.assert_array_equal(rec.boxes, [[1, 2, 3, 4]])


def test_to_targets_splits_positives_ignored_and_dropped():
    rec = PseudoRecord.from_detections(
        "a.png", (100, 100), np.array([[0, 0, 10, 10, 0.9], [20, 20, 30, 30, 0.5],
                                       [40, 40, 50, 50, 0.3], [60, 60, 70, 70, 0.1]]))
    t = to_targets(rec, high=0.6, low=0.3)
    assert t.labels.tolist() == [POSITIVE, IGNORE, IGNORE]
    np.testing.assert_array_equal(t.boxes[:, 0], [0, 20, 40])
    np.testing.assert_array_equal(t.scores, [0.9, 0.5, 0.3])
    assert t.landmarks.shape == (3, 5, 2)
    plain = to_targets(rec, high=0.5)                       # no ignore band
    assert plain.labels.tolist() == [POSITIVE, POSITIVE]
    with pytest.raises(ValueError, match="low <= high"):
        to_targets(rec, high=0.3, low=0.6)
    face = to_face_record(rec, 0.6, 0.3)
    assert face.labels.tolist() == [1, -1, -1] and face.size == (100, 100)
    assert face.boxes.shape == (3, 4) and face.landmarks.shape == (3, 5, 2)


def test_relative_image_path(tmp_path):
    (tmp_path / "d").mkdir()
    assert relative_image_path(tmp_path / "d" / "x.png", tmp_path) == "./d/x.png"
    assert relative_image_path("/elsewhere/x.png", tmp_path) == "/elsewhere/x.png"


# ---- the main teacher's training augmentation: AUG.lowlight_prob (data/augmentations.py) -------
# (kept here with the other dual-teacher data tests; tests/test_augmentations.py is the
# reference pipeline's)

def _face_image(w=160, h=120):
    from PIL import Image
    rgb = np.full((h, w, 3), 150, np.uint8)
    rgb[30:70, 40:80] = (220, 180, 160)
    return Image.fromarray(rgb), np.array([[40 / w, 30 / h, 80 / w, 70 / h]]), np.array([1])


def _aug(prob=None):
    from data.config import default_config
    aug = default_config().AUG
    aug.resize_width = aug.resize_height = 64
    if prob is None:
        del aug["lowlight_prob"]                  # an AUG section from before the option
    else:
        aug.lowlight_prob = prob
    return aug


def _run(aug, seed):
    from data.augmentations import train_preprocess
    img, boxes, labels = _face_image()
    rng = np.random.default_rng([0, 1, seed])
    out = train_preprocess(img, boxes, labels, aug, rng)
    return out, rng.random()                       # the generator's state after the sample


def test_lowlight_prob_0_changes_nothing():
    from data.config import default_config
    assert default_config().AUG.lowlight_prob == 0.0
    for seed in range(4):
        (x0, b0, l0), after0 = _run(_aug(0.0), seed)
        (x1, b1, l1), after1 = _run(_aug(None), seed)
        assert np.array_equal(x0, x1) and np.array_equal(b0, b1) and np.array_equal(l0, l1)
        assert after0 == after1


def test_lowlight_prob_1_darkens_with_the_same_geometry_and_draws():
    for seed in range(4):
        (x0, b0, l0), after0 = _run(_aug(0.0), seed)
        (x1, b1, l1), after1 = _run(_aug(1.0), seed)
        # the other augmentations drew the same numbers: same crops, flips, boxes
        assert np.array_equal(b0, b1) and np.array_equal(l0, l1) and after0 == after1
        mean = np.array([123, 117, 104], np.float32)[:, None, None]
        assert (x1 + mean).mean() < 0.6 * (x0 + mean).mean()
        again, _ = _run(_aug(1.0), seed)
        assert np.array_equal(again[0], x1)                      # deterministic


def test_lowlight_prob_half_darkens_some_samples_and_leaves_the_others_exact():
    dark = same = 0
    for seed in range(16):
        (x0, _, _), _ = _run(_aug(0.0), seed)
        (x1, _, _), _ = _run(_aug(0.5), seed)
        if np.array_equal(x0, x1):
            same += 1
        else:
            dark += 1
    assert dark > 0 and same > 0


def test_maybe_low_light_keeps_the_type():
    from data.augmentations import maybe_low_light
    img, _, _ = _face_image()
    arr = np.asarray(img)
    out = maybe_low_light(arr, 1.0, np.random.default_rng(0))
    assert isinstance(out, np.ndarray) and out.shape == arr.shape and out.dtype == np.uint8
    assert out.mean() < arr.mean()
    assert maybe_low_light(arr, 0.0, None) is arr                 # prob 0 draws nothing
    assert maybe_low_light(img, 1.0, np.random.default_rng(0)).size == img.size
