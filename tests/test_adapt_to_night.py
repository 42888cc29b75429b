"""tools/adapt_to_night.py and adapt/pseudo/night*.py: a two-step self-training run of the
released YuNet_n on darkened real photos (dlib's faces), its exact resume, video input, the
errors for a missing source or weights, and the small pieces (split, matching, records)."""
import json
import logging

import cv2
import numpy as np
import pytest
import torch

from adapt.pseudo.night import (SCORE_KEY, FrameSet, collect_frames, greedy_matches,
                                holdout_metrics, split_frames)
from adapt.pseudo.night_student import (build_loaders, enhanced_records, night_records,
                                        synth_records)
from data.config import load_config
from adapt.pseudo.labels import PseudoRecord
from tools import adapt_to_night as tool
from utils.checkpoint import load_file

PHOTOS = ("2008_002470.jpg", "2008_007676.jpg", "2009_004587.jpg")
SMALL = ["YUNET.INPUT_SIZE=96", "PSEUDO.BATCH_SIZE=2", "ADAPT.SYNTH_BATCH_SIZE=2",
         "ADAPT.ROUND_STEPS=1", "ADAPT.FLIP=False", "ADAPT.HOLDOUT=0.34", "RUN.NUM_WORKERS=0",
         "RUN.DEVICE=cpu", "ADAPT.EXAMPLES=1", "PSEUDO.HIGH=0.5", "RUN.LOG_EVERY=1"]


def dusk(bgr: np.ndarray) -> np.ndarray:
    """A dusk copy: linear light at a third, 8-bit again (faces stay findable)."""
    lin = (bgr.astype(np.float64) / 255.0) ** 2.2 / 3.0
    return np.round(255.0 * lin ** (1 / 2.2)).astype(np.uint8)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the runs here are tiny, and two threads on a loaded 2-core machine
    cost far more than they save (the resume test: about 50 s with 2 threads at load 3-4, 4 s
    with one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def footage(shared_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("night")
    for name in PHOTOS:
        img = cv2.imread(str(shared_data / "dlib_faces" / name))
        img = cv2.resize(img, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / name.replace(".jpg", ".png")), dusk(img))
    return folder


def run_tool(shared_data, footage, out, *extra):
    return tool.main(["--weights", str(shared_data / "yunet" / "yunet_n.pth"), "--model",
                      "yunet_n", "--images", str(footage), "--out", str(out), "--no-progress",
                      *extra])


def test_two_steps_then_exact_resume(shared_data, footage, tmp_path):
    straight = tmp_path / "straight"
    assert run_tool(shared_data, footage, straight, *SMALL, "ADAPT.MAX_ROUNDS=2",
                    "ADAPT.PATIENCE=5") == 0
    for name in ("adapted.pth", "adapted.onnx", "report.md", "report.html", "ckpt_2.pth",
                 "examples/00.png", "labels/round_000.txt", "labels/round_001.txt"):
        assert (straight / name).is_file(), name
    ckpt = load_file(straight / "ckpt_2.pth")
    assert ckpt["step"] == 2 and len(ckpt["adapt"]["history"]) == 3   # before + 2 rounds
    before = ckpt["adapt"]["before"]
    assert before["holdout_teacher_confident"] > 0        # the teacher finds the dusk faces
    released = load_file(shared_data / "yunet" / "yunet_n.pth")["state_dict"]
    moved = [k for k, v in ckpt["model"].items() if v.is_floating_point()
             and not torch.equal(v, released[k].float())]
    assert moved                                          # the student trained
    adapted = load_file(straight / "adapted.pth")
    assert adapted["config"]["MODEL"]["NAME"] == "yunet_n"
    report = (straight / "report.md").read_text()
    assert "before" in report and "agreed confident faces" in report
    assert "behind --enhance auto" in report              # the preset's STUDENT_INPUT=enhanced
    assert SCORE_KEY in before and "holdout_confident" in before

    split = tmp_path / "split"
    assert run_tool(shared_data, footage, split, *SMALL, "ADAPT.MAX_ROUNDS=1",
                    "ADAPT.PATIENCE=5", "ADAPT.ONNX=False") == 0
    assert not (split / "ckpt_2.pth").exists()
    assert run_tool(shared_data, footage, split, *SMALL, "ADAPT.MAX_ROUNDS=2",
                    "ADAPT.PATIENCE=5", "ADAPT.ONNX=False", "--resume", "auto",
                    "--allow-config-change") == 0
    resumed = load_file(split / "ckpt_2.pth")
    for key, value in ckpt["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for key, value in ckpt["ema"]["module"].items():
        assert torch.equal(value, resumed["ema"]["module"][key]), key
    assert resumed["adapt"]["history"] == ckpt["adapt"]["history"]


def test_video_input(shared_data, tmp_path):
    img = cv2.imread(str(shared_data / "dlib_faces" / PHOTOS[0]))
    img = dusk(cv2.resize(img, (160, 112)))
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (160, 112))
    for k in range(10):                                   # one second at 10 fps
        writer.write(np.roll(img, 4 * k, axis=1))
    writer.release()
    cfg = load_config([str(tool.PRESET)], [f"ADAPT.IMAGES={path}", "ADAPT.EVERY=0.2"])
    calls = []
    frames = collect_frames(cfg, tmp_path / "frames", lambda bgr: calls.append(1) or bgr + 1,
                            progress=False)
    assert frames.names == [f"clip/clip_{i:06d}" for i in range(0, 10, 2)]
    assert len(calls) == 5 and len(frames.holdout) == 1 and len(frames.train) == 4
    raw, night = frames.read(0)
    assert raw.shape == (112, 160, 3) and np.array_equal(night, raw + 1)
    again = collect_frames(cfg, tmp_path / "frames", lambda bgr: pytest.fail("re-extracted"),
                           progress=False)
    assert again.names == frames.names
    other = load_config([str(tool.PRESET)], [f"ADAPT.IMAGES={path}", "ADAPT.EVERY=0.5"])
    with pytest.raises(ValueError, match="ADAPT.EVERY"):
        collect_frames(other, tmp_path / "frames", lambda bgr: bgr, progress=False)


def test_clear_errors(tmp_path, caplog):
    weights = tmp_path / "w.pth"
    caplog.set_level(logging.ERROR)
    assert tool.main(["--weights", str(weights), "--images", str(tmp_path), "--out",
                      str(tmp_path / "run")]) == 2
    assert f"--weights {weights}: no such file" in caplog.text
    weights.write_bytes(b"x")
    missing = tmp_path / "nowhere.mp4"
    assert tool.main(["--weights", str(weights), "--images", str(missing), "--out",
                      str(tmp_path / "run")]) == 2
    assert str(missing) in caplog.text
    assert tool.main(["--weights", str(weights), "--images", str(tmp_path), "--out",
                      str(tmp_path / "run"), "ADAPT.PATIENCE=0"]) == 2
    assert "ADAPT.PATIENCE" in caplog.text
    assert tool.main(["--weights", str(weights), "--images", str(tmp_path), "--out",
                      str(tmp_path / "run"), "ADAPT.STUDENT_INPUT='dark'"]) == 2
    assert "ADAPT.STUDENT_INPUT='dark'" in caplog.text


def test_split_and_matching():
    assert split_frames(10, 0.2) == ([0, 1, 3, 4, 5, 6, 8, 9], [2, 7])
    assert split_frames(2, 0.5) == ([0], [1])
    with pytest.raises(ValueError, match="at least 2"):
        split_frames(1, 0.2)
    with pytest.raises(ValueError, match="ADAPT.HOLDOUT"):
        split_frames(5, 0.0)
    a = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 9, 10]], float)
    b = np.array([[0, 0, 10, 10], [21, 21, 31, 31], [50, 50, 60, 60]], float)
    assert greedy_matches(a, b, 0.5) == 2                 # one-to-one: [2] finds [0] taken
    assert greedy_matches(a, b, 0.95) == 1
    assert greedy_matches(a[:0], b, 0.5) == 0


def test_records_split_by_score(tmp_path):
    dets = np.array([[0, 0, 10, 10, 0.9], [20, 20, 30, 30, 0.4], [40, 40, 50, 50, 0.1]])
    confident = PseudoRecord.from_detections("a.png", (64, 64), dets)
    unsure = PseudoRecord.from_detections("b.png", (64, 64), dets[1:])
    empty = PseudoRecord.from_detections("c.png", (64, 64), dets[2:])
    night = night_records([confident, unsure, empty], 0.6, 0.3)
    assert [r.path for r in night] == ["a.png", "b.png"]
    assert night[0].labels.tolist() == [1, -1] and night[1].labels.tolist() == [-1]
    synth = synth_records([confident, unsure, empty], {"a.png": "A.png", "b.png": "B.png"},
                          0.6, 0.3)
    assert [r.path for r in synth] == ["A.png"] and synth[0].labels.tolist() == [1, -1]
    cfg = load_config([str(tool.PRESET)], ["MODEL.NAME=yunet_n"])
    assert build_loaders(cfg, 0, {"night": [], "synth": []}, 0, 1).empty   # nothing to train
    frames = FrameSet(tmp_path, ["x", "y"], [0], [1])
    assert frames.raw(1) == tmp_path / "raw" / "000001.png"
    with pytest.raises(OSError, match="frames.json"):
        frames.read(0)
    json.dumps([r.path for r in night])


class FixedTeacher:
    """A stand-in teacher: fused labels ``t``; the plain pass ``s`` on the night-mode copy
    (the bright one), ``s_raw`` on the raw (black) frame."""

    def __init__(self, t, s, s_raw):
        self.t, self.s, self.s_raw = t, s, s_raw

    def label(self, raw, night):
        return self.t

    def plain(self, bgr):
        return self.s if bgr.any() else self.s_raw


def test_holdout_score_counts_scores_down_to_low(tmp_path):
    for sub, value in (("raw", 0), ("night", 60)):
        (tmp_path / sub).mkdir()
        for i in range(2):
            cv2.imwrite(str(tmp_path / sub / f"{i:06d}.png"), np.full((8, 8, 3), value, np.uint8))
    frames = FrameSet(tmp_path, ["a", "b"], [0], [1])
    box = lambda x, score: [x, 0, x + 10, 10, score]                      # noqa: E731
    teacher = np.array([box(0, 0.9), box(20, 0.4), box(60, 0.2)])
    student = np.array([box(0, 0.45), box(20, 0.35), box(40, 0.32)])     # all under HIGH
    cfg = load_config([str(tool.PRESET)], ["PSEUDO.HIGH=0.6", "PSEUDO.LOW=0.3"])
    fake = FixedTeacher(teacher, student, student[:0])
    m = holdout_metrics(fake, frames, cfg)
    assert list(m)[0] == SCORE_KEY and m[SCORE_KEY] == 2      # 2 faces agreed >= LOW
    assert all(type(v) is float for v in m.values())        # a checkpoint loads them safely
    assert m["holdout_agreement_low"] == pytest.approx(2 * 2 / (3 + 2))
    assert m["holdout_agreed"] == 0 and m["holdout_agreement"] == 0.0   # nothing >= HIGH
    assert m["holdout_confident"] == 0 and m["holdout_teacher_confident"] == 1
    cfg.ADAPT.STUDENT_INPUT = "raw"                          # measured on the raw frame
    assert holdout_metrics(fake, frames, cfg)[SCORE_KEY] == 0
    night = night_records([PseudoRecord.from_detections("r.png", (64, 64), teacher)], 0.6, 0.3)
    moved = enhanced_records(night, {"r.png": "n.png"})
    assert moved[0].path == "n.png" and moved[0].labels.tolist() == night[0].labels.tolist()
