"""tools/make_pseudo_labels.py with stub teachers: fusion of two teachers, flip and scales,
per-teacher inputs (raw / E(L)), resume."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adapt.pseudo.labels import read_pseudo_labels, write_pseudo_labels
from tools import make_pseudo_labels as tool

W, H = 100, 50
# normalised x1 y1 x2 y2 score of what each stub finds, in the frame of the image it is given
BOXES = {
    "A.pth": [[0.10, 0.20, 0.40, 0.60, 0.9], [0.60, 0.60, 0.80, 0.90, 0.8]],
    "B.pth": [[0.12, 0.20, 0.42, 0.60, 0.7]],
    "L.pth": [[0.10, 0.20, 0.40, 0.60, 0.9]],
}
# L has landmarks: left eye, right eye, nose, left and right mouth corners
L_POINTS = [[0.15, 0.3], [0.35, 0.3], [0.25, 0.4], [0.18, 0.5], [0.32, 0.5]]


class StubDetector:
    def __init__(self, name, cfg, calls):
        self.name, self.calls = name, calls
        self.num_landmarks = 5 if name == "L.pth" else 0
        self.model_name = cfg.MODEL.NAME

    def __call__(self, images):
        self.calls.append((self.name, images.shape, float(images.mean())))
        rows = np.array(BOXES[self.name], dtype=np.float32)
        if self.num_landmarks:
            rows = np.concatenate([rows, np.tile(np.ravel(L_POINTS), (len(rows), 1))], 1)
        return [torch.from_numpy(rows.astype(np.float32)) for _ in range(len(images))]


@pytest.fixture
def calls(monkeypatch):
    from models import inference
    seen = []

    def build(cfg, weights, device, key="--weights"):
        return StubDetector(Path(weights).name, cfg, seen)

    monkeypatch.setattr(inference, "build_face_detector", build, raising=False)
    return seen


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for name in ("a.png", "b.png", "sub/c.png"):
        Image.fromarray(np.full((H, W, 3), 20, np.uint8)).save(folder / name)
    return folder


def run(tmp_path, images, out, *extra):
    # overrides first: --scales takes every number after it
    return tool.main([f"FACE.DATA_ROOT={tmp_path}", "RUN.DEVICE=cpu", "--images", str(images),
                      "--out", str(out), "--workers", "0", *extra])


def test_two_teachers_are_fused_and_filtered(tmp_path, images, calls):
    out = tmp_path / "out"
    assert run(tmp_path, images, out, "--teacher", "A.pth", "--teacher", "B.pth") == 0
    for name in ("a", "b", "sub/c"):
        assert (out / "labels" / f"{name}.txt").is_file()
    records = read_pseudo_labels(out / "pseudo_labels.txt")
    assert [r.path for r in records] == ["./imgs/a.png", "./imgs/b.png", "./imgs/sub/c.png"]
    rec = records[0]
    assert rec.size == (W, H)
    # the shared face: score-weighted mean corners, mean score; A's other box: half its score
    x1 = (0.9 * 10 + 0.7 * 12) / 1.6
    np.testing.assert_allclose(rec.boxes, [[x1, 10, x1 + 30, 30], [60, 30, 80, 45]], rtol=1e-6)
    np.testing.assert_allclose(rec.scores, [0.8, 0.4], rtol=1e-6)
    assert (rec.landmarks == -1).all()
    assert len(calls) == 6                                     # 3 images x 2 teachers, 1 pass
    # agreement of both teachers; and a score threshold above the lone box's score
    agree = tmp_path / "agree"
    run(tmp_path, images, agree, "--teacher", "A.pth", "--teacher", "B.pth", "--min-agree", "2")
    assert [len(r.boxes) for r in read_pseudo_labels(agree / "pseudo_labels.txt")] == [1, 1, 1]
    high = tmp_path / "high"
    run(tmp_path, images, high, "--teacher", "A.pth", "--teacher", "B.pth",
        "--score-thresh", "0.5", "--list", str(tmp_path / "high.txt"))
    assert [len(r.boxes) for r in read_pseudo_labels(tmp_path / "high.txt")] == [1, 1, 1]
    # teacher weights: A three times B
    weighted = tmp_path / "weighted"
    run(tmp_path, images, weighted, "--teacher", "A.pth::3", "--teacher", "B.pth::1")
    rec = read_pseudo_labels(weighted / "pseudo_labels.txt")[0]
    x1 = (2.7 * 10 + 0.7 * 12) / 3.4
    np.testing.assert_allclose(rec.boxes[0], [x1, 10, x1 + 30, 30], rtol=1e-6)
    np.testing.assert_allclose(rec.scores, [(2.7 + 0.7) / 4, 2.4 / 4], rtol=1e-6)


def test_flip_maps_boxes_and_landmarks_back_and_scales_merge(tmp_path, images, calls):
    out = tmp_path / "flip"
    run(tmp_path, images, out, "--teacher", "L.pth", "--flip", "--fusion", "nms")
    rec = read_pseudo_labels(out / "pseudo_labels.txt")[0]
    assert len(calls) == 2 * 3
    # the flipped pass found the same place of the mirrored image: x -> W - x
    order = np.argsort(rec.boxes[:, 0])
    np.testing.assert_allclose(rec.boxes[order], [[10, 10, 40, 30], [60, 10, 90, 30]],
                               rtol=1e-6)
    pts = np.array(L_POINTS) * [W, H]
    np.testing.assert_allclose(rec.landmarks[order[0]], pts, rtol=1e-6)
    mirrored = pts[[1, 0, 2, 4, 3]] * [-1, 1] + [W, 0]         # left/right points swapped
    np.testing.assert_allclose(rec.landmarks[order[1]], mirrored, rtol=1e-6)
    # two scales of the same teacher merge into one box (WBF as one model: mean score)
    calls.clear()
    out = tmp_path / "scales"
    run(tmp_path, images, out, "--teacher", "L.pth", "--scales", "1.0", "2.0")
    rec = read_pseudo_labels(out / "pseudo_labels.txt")[0]
    np.testing.assert_allclose(rec.boxes, [[10, 10, 40, 30]], rtol=1e-6)
    np.testing.assert_allclose(rec.scores, [0.9], rtol=1e-6)
    np.testing.assert_allclose(rec.landmarks[0], pts, rtol=1e-6)
    assert sorted({c[1][1:3] for c in calls}) == [(50, 100), (100, 200)]


def test_each_teacher_sees_its_input(tmp_path, images, calls, monkeypatch):
    from lowlevel import enhancement
    monkeypatch.setattr(enhancement, "load_enhancer", lambda *a, **k: "E(L)")
    monkeypatch.setattr(enhancement, "enhance_uint8",
                        lambda net, rgb: np.clip(rgb.astype(int) + 100, 0, 255).astype(np.uint8))
    out = tmp_path / "inputs"
    run(tmp_path, images, out, "--teacher", "A.pth::1:raw", "--teacher", "B.pth::1:el")
    means = {name: mean for name, _, mean in calls}
    assert means["A.pth"] == pytest.approx(20) and means["B.pth"] == pytest.approx(120)
    calls.clear()
    run(tmp_path, images, tmp_path / "both", "--teacher", "A.pth::1:both")
    assert sorted(round(m) for _, _, m in calls) == [20, 20, 20, 120, 120, 120]
    calls.clear()
    run(tmp_path, images, tmp_path / "enh", "--teacher", "A.pth", "--enhance")
    assert {round(m) for _, _, m in calls} == {120}


def test_resume_redoes_only_missing_files_and_refuses_other_settings(tmp_path, images, calls):
    (images / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    args = ("--teacher", "A.pth", "--teacher", "B.pth")
    run(tmp_path, images, out, *args)
    assert not (out / "labels" / "broken.txt").exists()        # unreadable: skipped, retried
    assert len(read_pseudo_labels(out / "pseudo_labels.txt")) == 3
    a = out / "labels" / "a.txt"
    (old,) = read_pseudo_labels(a)
    old.scores[0] = 0.75                                        # stands for an older result
    write_pseudo_labels(a, [old])
    marker = a.read_text()
    (out / "labels" / "b.txt").unlink()
    calls.clear()
    run(tmp_path, images, out, *args)
    assert len(calls) == 2                                      # b only, once per teacher
    assert a.read_text() == marker
    records = read_pseudo_labels(out / "pseudo_labels.txt")
    assert [r.path for r in records] == ["./imgs/a.png", "./imgs/b.png", "./imgs/sub/c.png"]
    assert records[0].scores[0] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="iou"):
        run(tmp_path, images, out, *args, "--iou", "0.5")
    calls.clear()
    run(tmp_path, images, out, *args, "--iou", "0.5", "--overwrite")
    assert len(calls) == 6 and a.read_text() != marker
    calls.clear()
    run(tmp_path, images, out, *args, "--iou", "0.5")           # the new settings: all done
    assert calls == []


def test_teacher_specs():
    t = tool.parse_teacher("w.pth", "raw")
    assert (t.weights, t.name, t.weight, t.input) == ("w.pth", "", 1.0, "raw")
    t = tool.parse_teacher("w.pth:yunet_n:0.5:both", "raw")
    assert (t.name, t.weight, t.input) == ("yunet_n", 0.5, "both")
    assert tool.parse_teacher("w.pth::2", "el").input == "el"
    for bad in ("", "w.pth:a:b", "w.pth:a:1:dark", "w.pth:a:1:raw:x", "w.pth::-1"):
        with pytest.raises(ValueError, match="--teacher"):
            tool.parse_teacher(bad, "raw")
    assert [(p.scale, p.flip) for p in tool.make_plan([1.0, 0.5], True)] == \
        [(1.0, False), (0.5, False), (1.0, True), (0.5, True)]
    with pytest.raises(ValueError):
        tool.make_plan([0.0], False)


def test_the_model_name_of_a_teacher_reaches_its_config(tmp_path, images, monkeypatch):
    from models import inference
    names = []

    def build(cfg, weights, device, key="--weights"):
        names.append(cfg.MODEL.NAME)
        return StubDetector("A.pth", cfg, [])

    monkeypatch.setattr(inference, "build_face_detector", build, raising=False)
    run(tmp_path, images, tmp_path / "o", "--teacher", "x.pth:dsfd_vgg", "--teacher", "y.pth")
    assert names == ["dsfd_vgg", "dsfd_vgg"]
    with pytest.raises(ValueError, match="--min-agree"):
        run(tmp_path, images, tmp_path / "o2", "--teacher", "x.pth", "--min-agree", "2")
