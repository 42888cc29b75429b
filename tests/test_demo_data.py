"""The demo dataset (tools/make_demo_data.py) and the low-light simulation (data/lowlight.py).

Everything is made on the fly from images that ship with scikit-image and matplotlib.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import tools.make_demo_data as demo
from data.lowlight import simulate_low_light

SEED = 3
COUNTS = {"train": 4, "val": 2, "dark_train": 3, "dark_val": 2}


def _make(out: Path, seed: int = SEED) -> Path:
    demo.main(["--out", str(out), "--seed", str(seed), "--n-train", str(COUNTS["train"]),
               "--n-val", str(COUNTS["val"]), "--n-dark-train", str(COUNTS["dark_train"]),
               "--n-dark-val", str(COUNTS["dark_val"])])
    return out


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    return _make(tmp_path_factory.mktemp("demo"))


def parse_list_file(path: Path) -> dict:
    """WIDER list: ``<image_path> <N>`` then ``x y w h label`` N times, one line per image."""
    entries = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        tokens = line.split()
        n = int(tokens[1])
        assert len(tokens) == 2 + 5 * n, f"{path}:{lineno}: {len(tokens)} tokens for {n} boxes"
        rows = np.array(tokens[2:], dtype=np.int64).reshape(n, 5)
        assert (rows[:, 4] == 1).all(), f"{path}:{lineno}: label is not 1"
        entries[tokens[0]] = [tuple(int(v) for v in r[:4]) for r in rows]
    return entries


def parse_darkface_label(path: Path) -> list:
    """DARK FACE label file: the count, then one ``x1 y1 x2 y2`` line per face."""
    lines = path.read_text().split("\n")
    n = int(lines[0])
    return [tuple(int(v) for v in line.split()) for line in lines[1:1 + n]]


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# ---------------------------------------------------------------------------------------------
# Files and formats


def test_list_files_parse_and_boxes_lie_inside(made):
    for split in ("train", "val"):
        entries = parse_list_file(made / f"wider_face_{split}.txt")
        assert len(entries) == COUNTS[split]
        for rel, boxes in entries.items():
            assert rel.startswith(f"./WIDER_{split}/images/{demo.EVENT}/") and rel.endswith(".jpg")
            img = _read(made / rel)
            hgt, wid = img.shape[:2]
            assert 1 <= len(boxes) <= 5
            for x, y, w, h in boxes:
                assert x >= 0 and y >= 0 and x + w <= wid and y + h <= hgt, (rel, (x, y, w, h))
                assert demo.FACE_SIZE[0] <= w <= demo.FACE_SIZE[1], (rel, (x, y, w, h))
                assert 0.9 * w <= h <= 1.3 * w


def test_darkface_layout_ids_and_labels(made):
    dark = made / "DarkFace"
    n_train, n_val = COUNTS["dark_train"], COUNTS["dark_val"]
    val_ids = (made / "dark_val_ids.txt").read_text().split()
    assert val_ids == [str(i) for i in range(n_train + 1, n_train + n_val + 1)]
    for split, ids in (("train", [str(i) for i in range(1, n_train + 1)]), ("val", val_ids)):
        assert sorted(p.stem for p in (dark / "images" / split).glob("*.png")) == sorted(ids)
        for image_id in ids:
            img = _read(dark / "images" / split / f"{image_id}.png")
            clean = _read(dark / "clean" / split / f"{image_id}.png")
            assert img.shape == clean.shape == (demo.DARK_SIZE[1], demo.DARK_SIZE[0], 3)
            assert img.mean() < 0.6 * clean.mean()
            assert img.mean() > 3, "the dark images must not be black"
            for x1, y1, x2, y2 in parse_darkface_label(dark / "label" / split / f"{image_id}.txt"):
                assert 0 <= x1 < x2 <= img.shape[1] and 0 <= y1 < y2 <= img.shape[0]
    readme = (made / "README.txt").read_text()
    assert f"seed: {SEED}" in readme and "exposure" in readme


def test_files_match_the_composites_they_were_made_from(made):
    """Regenerate each image in memory: same pixels, and labels that are its face boxes."""
    assets = demo.load_assets()
    entries = parse_list_file(made / "wider_face_train.txt")
    for i, (rel, boxes) in enumerate(entries.items()):
        rng = demo.image_rng(SEED, "train", i)
        img, faces = demo.compose(assets, rng, demo._clean_size(rng), demo.LFW_TRAIN_FACE_IDS)
        assert boxes == [f.box for f in faces]
        jpeg = _read(made / rel).astype(np.float32)
        assert np.abs(jpeg - img).mean() < 4.0      # JPEG at quality 92
    for i, image_id in enumerate(range(COUNTS["dark_train"] + 1,
                                       COUNTS["dark_train"] + COUNTS["dark_val"] + 1)):
        img, faces = demo.compose(assets, demo.image_rng(SEED, "dark_val", i), demo.DARK_SIZE,
                                  demo.LFW_VAL_FACE_IDS)
        np.testing.assert_array_equal(_read(made / "DarkFace/clean/val" / f"{image_id}.png"), img)
        # DARK FACE x1 y1 x2 y2 is the list format's x y (x + w) (y + h) of the same faces.
        label = parse_darkface_label(made / "DarkFace/label/val" / f"{image_id}.txt")
        assert label == [(x, y, x + w, y + h) for x, y, w, h in (f.box for f in faces)]


def test_same_seed_same_bytes_other_seed_differs(made, tmp_path):
    again = _make(tmp_path / "again")
    other = _make(tmp_path / "other", seed=SEED + 1)
    for name in ("wider_face_train.txt", "wider_face_val.txt", "dark_val_ids.txt"):
        assert (again / name).read_bytes() == (made / name).read_bytes()
    first = (made / "wider_face_train.txt").read_bytes()
    assert (other / "wider_face_train.txt").read_bytes() != first
    images = sorted(p.relative_to(made) for p in made.rglob("*") if p.suffix in (".jpg", ".png"))
    assert len(images) == sum(COUNTS.values()) + COUNTS["dark_train"] + COUNTS["dark_val"]
    for rel in images:
        np.testing.assert_array_equal(_read(again / rel), _read(made / rel), err_msg=str(rel))
    labels = sorted(p.relative_to(made) for p in (made / "DarkFace" / "label").rglob("*.txt"))
    for rel in labels:
        assert (again / rel).read_bytes() == (made / rel).read_bytes()


def test_refuses_a_foreign_non_empty_folder(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(SystemExit):
        demo.main(["--out", str(tmp_path), "--n-train", "1", "--n-val", "0",
                   "--n-dark-train", "0", "--n-dark-val", "0"])
    assert (tmp_path / "precious.txt").read_text() == "keep me"


# ---------------------------------------------------------------------------------------------
# The pasted faces are where the boxes say


def _grey(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32).mean(axis=2) if x.ndim == 3 else x.astype(np.float32)


def _middle(z: np.ndarray) -> np.ndarray:
    """The central half (per side) of a patch: LFW crops fade out towards their edges."""
    h, w = z.shape
    return z[h // 4:h - h // 4, w // 4:w - w // 4]


def _corr(p: np.ndarray, q: np.ndarray) -> float:
    p, q = p - p.mean(), q - q.mean()
    return float((p * q).sum() / np.sqrt((p * p).sum() * (q * q).sum() + 1e-9))


def _expected_face(assets, face) -> np.ndarray:
    """The source face crop, independently resized to the box and flipped as recorded."""
    src, (bx, by, bw, bh) = demo.face_source(assets, face.source, face.lfw_index)
    _, _, w, h = face.box
    interp = cv2.INTER_AREA if w < bw else cv2.INTER_LINEAR
    crop = cv2.resize(_grey(src[by:by + bh, bx:bx + bw]), (w, h), interpolation=interp)
    return crop[:, ::-1] if face.flip else crop


def test_faces_are_exactly_inside_their_boxes():
    assets = demo.load_assets()
    n_checked = 0
    for i in range(6):
        img, faces = demo.compose(assets, demo.image_rng(11, "train", i), (560, 480),
                                  demo.LFW_TRAIN_FACE_IDS)
        grey = _grey(img)
        for face in faces:
            x, y, w, h = face.box
            want = _middle(_expected_face(assets, face))
            got = _middle(grey[y:y + h, x:x + w])
            score = _corr(got, want)
            assert score > 0.9, (face, score)
            assert score > _corr(got, want[:, ::-1]) + 0.15 or w < 30, face  # the flip is recorded
            # Moving the window by a few pixels makes the match worse: the box is pixel-exact.
            dy0, dx0 = h // 4, w // 4
            shifts = {(dy, dx): _corr(grey[y + dy0 + dy:y + dy0 + dy + want.shape[0],
                                           x + dx0 + dx:x + dx0 + dx + want.shape[1]], want)
                      for dy in (-2, 0, 2) for dx in (-2, 0, 2)}
            if w >= 40:
                assert max(shifts, key=shifts.get) == (0, 0), (face, shifts)
            n_checked += 1
    assert n_checked >= 10


def test_chosen_face_boxes_agree_with_opencv_face_detector():
    """An independent check of ASTRONAUT_FACE_BOX / GRACE_HOPPER_FACE_BOX: OpenCV's Haar cascade."""
    cascade_path = os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
    cascade = cv2.CascadeClassifier(cascade_path)
    assets = demo.load_assets()
    for img, box in ((assets.astronaut, demo.ASTRONAUT_FACE_BOX),
                     (assets.grace_hopper, demo.GRACE_HOPPER_FACE_BOX)):
        grey = cv2.cvtColor(img.astype(np.uint8), cv2.COLOR_RGB2GRAY)
        found = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5)
        assert len(found) == 1
        (fx, fy, fw, fh), (x, y, w, h) = found[0], box
        inter = max(0, min(fx + fw, x + w) - max(fx, x)) * max(0, min(fy + fh, y + h) - max(fy, y))
        assert inter / (fw * fh + w * h - inter) > 0.5


def test_distractor_crops_avoid_the_faces():
    for regions, (x, y, w, h) in ((demo.ASTRONAUT_NONFACE_REGIONS, demo.ASTRONAUT_FACE_BOX),
                                  (demo.GRACE_HOPPER_NONFACE_REGIONS, demo.GRACE_HOPPER_FACE_BOX)):
        for rx, ry, rw, rh in regions:
            assert rx + rw <= x - 10 or rx >= x + w + 10 or ry + rh <= y - 10 or ry >= y + h + 10
    assert not set(demo.LFW_NONFACE_IDS) & set(demo.LFW_FACE_IDS)
    assert not set(demo.LFW_TRAIN_FACE_IDS) & set(demo.LFW_VAL_FACE_IDS)


# ---------------------------------------------------------------------------------------------
# Low-light simulation


@pytest.fixture(scope="module")
def clean_image() -> np.ndarray:
    from skimage import data
    return np.ascontiguousarray(data.coffee()[:160, :240])


def test_low_light_darkens_and_keeps_dtype_and_shape(clean_image):
    dark = simulate_low_light(clean_image, np.random.default_rng(0))
    assert dark.dtype == np.uint8 and dark.shape == clean_image.shape
    assert dark.mean() < 0.5 * clean_image.mean()
    assert dark.mean() > 5
    darker = simulate_low_light(clean_image, np.random.default_rng(0), exposure=0.01)
    assert darker.mean() < dark.mean()


def test_low_light_is_deterministic_per_rng(clean_image):
    a = simulate_low_light(clean_image, np.random.default_rng(7))
    b = simulate_low_light(clean_image, np.random.default_rng(7))
    c = simulate_low_light(clean_image, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_low_light_noise_grows_with_shot_noise(clean_image):
    fixed = dict(exposure=0.08, read_noise=0.0, color_cast=0.0)
    clean = simulate_low_light(clean_image, np.random.default_rng(0), shot_noise=0.0, **fixed)
    stds = []
    for a in (1e-4, 1e-3, 1e-2):
        noisy = simulate_low_light(clean_image, np.random.default_rng(0), shot_noise=a, **fixed)
        stds.append(float((noisy.astype(np.float64) - clean).std()))
    assert stds[0] < stds[1] < stds[2], stds
    assert stds[2] > 2 * stds[0]


def test_low_light_rejects_bad_input(clean_image):
    with pytest.raises(TypeError):
        simulate_low_light(clean_image, np.random.default_rng(0), exposure_typo=0.1)
    with pytest.raises(ValueError):
        simulate_low_light(clean_image.astype(np.float32), np.random.default_rng(0))
