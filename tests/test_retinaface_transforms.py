"""RetinaFace augmentation: the square crop against a literal port of the reference's ``_crop``
loop (fed the same trials), boxes and landmarks following the pixels through the whole
pipeline (a marked point on a synthetic image), the mirror's landmark swap, the pad path, and
the dataset (determinism, unreadable images, the annotation front door)."""
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from data.annotations import FaceRecord, write_annotations
from data.config import default_config
from models.retinaface.transforms import (CROP_SCALES, Faces, RetinaFaceDataset,
                                          build_retinaface_dataset, draw_crop_trials, mirror,
                                          pad_to_square, preproc, square_crop)
from tests.helpers import noise_image_records

MEAN = (104.0, 117.0, 123.0)


def ref_matrix_iof(a, b):
    lt = np.maximum(a[:, np.newaxis, :2], b[:, :2])
    rb = np.minimum(a[:, np.newaxis, 2:], b[:, 2:])
    area_i = np.prod(rb - lt, axis=2) * (lt < rb).all(axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    return area_i / np.maximum(area_a[:, np.newaxis], 1)


def ref_crop(image, boxes, labels, landm, img_dim, trials):
    """data_augment._crop with its random draws replaced by ``trials`` (side, left, top)."""
    for w, l, t in zip(*trials):
        h = w
        roi = np.array((l, t, l + w, t + h))
        if not (ref_matrix_iof(boxes, roi[np.newaxis]) >= 1).any():
            continue
        centers = (boxes[:, :2] + boxes[:, 2:]) / 2
        mask_a = np.logical_and(roi[:2] < centers, centers < roi[2:]).all(axis=1)
        boxes_t = boxes[mask_a].copy()
        labels_t = labels[mask_a].copy()
        landms_t = landm[mask_a].copy().reshape([-1, 5, 2])
        if boxes_t.shape[0] == 0:
            continue
        image_t = image[roi[1]:roi[3], roi[0]:roi[2]]
        boxes_t[:, :2] = np.maximum(boxes_t[:, :2], roi[:2])
        boxes_t[:, :2] -= roi[:2]
        boxes_t[:, 2:] = np.minimum(boxes_t[:, 2:], roi[2:])
        boxes_t[:, 2:] -= roi[:2]
        landms_t[:, :, :2] = landms_t[:, :, :2] - roi[:2]
        landms_t[:, :, :2] = np.maximum(landms_t[:, :, :2], np.array([0, 0]))
        landms_t[:, :, :2] = np.minimum(landms_t[:, :, :2], roi[2:] - roi[:2])
        landms_t = landms_t.reshape([-1, 10])
        b_w_t = (boxes_t[:, 2] - boxes_t[:, 0] + 1) / w * img_dim
        b_h_t = (boxes_t[:, 3] - boxes_t[:, 1] + 1) / h * img_dim
        mask_b = np.minimum(b_w_t, b_h_t) > 0.0
        boxes_t, labels_t, landms_t = boxes_t[mask_b], labels_t[mask_b], landms_t[mask_b]
        if boxes_t.shape[0] == 0:
            continue
        return image_t, boxes_t, labels_t, landms_t, False
    return image, boxes, labels, landm, True


def random_faces(rng, n, width, height, big=False):
    low, high = (0.8, 0.85) if big else (2 / min(width, height), 0.6)
    wh = rng.uniform(low, high, (n, 1)) * min(width, height) * np.array([[1.0, 1.2]])
    xy = rng.uniform(0, 1, (n, 2)) * (np.array([width, height]) - wh * 0.5)
    boxes = np.concatenate([xy, xy + wh], 1)
    landms = xy[:, None, :] + rng.uniform(-0.1, 1.1, (n, 5, 2)) * wh[:, None, :]
    has = rng.random(n) > 0.3
    landms[~has] = -1.0
    return Faces(boxes, landms, has, np.ones(n, dtype=np.int64))


@pytest.mark.parametrize("seed", range(8))
def test_square_crop_equals_reference_loop(seed):
    rng = np.random.default_rng(seed)
    width, height = int(rng.integers(80, 400)), int(rng.integers(80, 400))
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    big = seed >= 6                     # faces no square crop holds wholly: the pad path
    faces = random_faces(rng, 1 if big else int(rng.integers(1, 15)), width, height, big)
    trials = draw_crop_trials(rng, width, height, trials=40 if seed % 2 else 250)
    labels = np.where(faces.has_landm, 1.0, -1.0)
    want = ref_crop(image, faces.boxes, labels, faces.landms.reshape(-1, 10), 640, trials)
    got_image, got, pad = square_crop(image, faces, 640, trials)
    assert pad == want[4] == big
    assert got_image.shape == want[0].shape and np.array_equal(got_image, want[0])
    assert np.array_equal(got.boxes, want[1])
    assert np.array_equal(np.where(got.has_landm, 1.0, -1.0), want[2])
    assert np.array_equal(got.landms.reshape(-1, 10), want[3])


def test_crop_trial_draws():
    rng = np.random.default_rng(0)
    t = draw_crop_trials(rng, 300, 200)
    sides = {int(s * 200) for s in CROP_SCALES}
    assert set(t.side.tolist()) == sides
    assert ((t.left >= 0) & (t.left < np.maximum(300 - t.side, 1))).all()
    assert ((t.top >= 0) & ((t.top < 200 - t.side) | (t.side == 200))).all()
    assert (t.top[t.side == 200] == 0).all()


def test_mirror_swaps_left_and_right_points():
    faces = Faces(np.array([[10.0, 20.0, 50.0, 70.0]]),
                  np.array([[[20, 30], [40, 30], [30, 45], [22, 60], [38, 60]]], dtype=np.float64),
                  np.array([True]), np.array([1]))
    image = np.zeros((80, 100, 3), np.uint8)
    flipped, out = mirror(image, faces, SimpleNamespace(integers=lambda n: 1))
    assert np.array_equal(out.boxes, [[50.0, 20.0, 90.0, 70.0]])
    # the old left eye (20, 30) is at x = 80 and is now point 1; the old right eye point 0
    assert np.array_equal(out.landms[0], [[60, 30], [80, 30], [70, 45], [62, 60], [78, 60]])
    same, kept = mirror(image, faces, SimpleNamespace(integers=lambda n: 0))
    assert same is image and kept is faces


def _marked_image():
    """A dark image with one face whose point 0 (left eye) is a bright 9x9 square."""
    image = np.full((300, 420, 3), 40, np.uint8)
    face = np.array([120.0, 60.0, 320.0, 280.0])
    points = np.array([[170, 140], [270, 140], [220, 190], [180, 240], [260, 240]], np.float64)
    cv2.rectangle(image, (166, 136), (174, 144), (255, 255, 255), -1)
    return image, Faces(face[None], points[None], np.array([True]), np.array([1]))


def test_boxes_and_landmarks_follow_the_pixels():
    image, faces = _marked_image()
    mirrored = 0
    for seed in range(12):
        out, target = preproc(image, faces, 160, MEAN, np.random.default_rng(seed))
        assert out.shape == (3, 160, 160) and out.dtype == np.float32
        assert target.shape == (1, 15) and target[0, 4] == 1
        bgr = out + np.array(MEAN, np.float32)[:, None, None]
        y, x = np.unravel_index(bgr.sum(0).argmax(), bgr.shape[1:])
        spot = np.array([x + 0.5, y + 0.5]) / 160
        pts = target[0, 5:].reshape(5, 2)
        d0, d1 = np.abs(pts[0] - spot).max(), np.abs(pts[1] - spot).max()
        assert min(d0, d1) < 4 / 160, (seed, pts[:2] * 160, spot * 160)
        mirrored += d1 < d0                  # flipped: the bright left eye became point 1
        x1, y1, x2, y2 = target[0, :4]
        assert x1 <= spot[0] <= x2 and y1 <= spot[1] <= y2
        assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
    assert 0 < mirrored < 12


def test_pad_path_and_faces_without_landmarks():
    image = np.zeros((100, 200, 3), np.uint8)
    faces = Faces(np.array([[150.0, 10.0, 190.0, 60.0], [0.0, 0.0, 199.0, 99.0]]),
                  np.full((2, 5, 2), -1.0), np.array([False, False]), np.array([1, 1]))
    # trials that never hold a face wholly: the crop fails and the image is padded
    trials = draw_crop_trials(np.random.default_rng(0), 200, 100, scales=(0.3,))
    img, kept, pad = square_crop(image, Faces(faces.boxes[:1] * [1, 1, 1, 1.5], faces.landms[:1],
                                              faces.has_landm[:1], faces.labels[:1]), 640,
                                 trials._replace(left=np.full(250, 0), top=np.full(250, 0)))
    assert pad and img is image
    padded = pad_to_square(image, MEAN, True)
    assert padded.shape == (200, 200, 3) and (padded[100:] == MEAN).all()
    out, target = preproc(image, faces, 64, MEAN, np.random.default_rng(1))
    assert (target[:, 5:] == -1).all() and (target[:, 4] == 1).all()


def _records(tmp_path, n=4):
    def faces(rng):
        f = random_faces(rng, 3, 160, 120)
        return f.boxes, f.landms, f.labels

    return noise_image_records(tmp_path, n, faces, seed=0)


def test_dataset_determinism_epochs_and_unreadable(tmp_path):
    records = _records(tmp_path)
    records[2].path = str(tmp_path / "missing.png")
    records.append(FaceRecord(str(tmp_path / "0.png"), np.zeros((0, 4)), np.zeros((0, 5, 2)),
                              np.zeros(0, np.int64)))                 # no face: dropped
    ds = RetinaFaceDataset(records, image_size=64, seed=3)
    assert len(ds) == 4
    a, b = ds[(0, 1)], ds[(0, 1)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == 0
    ds.set_epoch(5)
    assert torch.equal(ds[1][0], ds[(5, 1)][0]) and not torch.equal(ds[1][0], a[0])
    image, target, skipped = ds[(0, 2)]
    assert skipped >= 1 and image.shape == (3, 64, 64) and target.shape[1] == 15


def test_build_from_annotation_file(tmp_path):
    records = _records(tmp_path, 2)
    (tmp_path / "images").mkdir()
    for r in records:
        (tmp_path / "images" / r.path.split("/")[-1]).write_bytes(open(r.path, "rb").read())
        r.path = str(tmp_path / "images" / r.path.split("/")[-1])
    write_annotations(records, tmp_path / "label.txt", "retinaface")
    cfg = default_config()
    cfg.RETINAFACE.IMAGE_SIZE = 96
    ds = build_retinaface_dataset(cfg, tmp_path / "label.txt", ".", seed=0)
    image, target, skipped = ds[0]
    assert image.shape == (3, 96, 96) and skipped == 0
    assert len(ds) == 2 and ds.records[0].path == records[0].path


def test_lowlight_probability(tmp_path):
    """AUG.lowlight_prob: 0 (or a probability that never fires, which still draws from its own
    child generator) leaves the samples as they were; 1 darkens them with the same targets."""
    records = _records(tmp_path)
    cfg = default_config()
    cfg.RETINAFACE.IMAGE_SIZE = 64
    datasets = {}
    for prob in (0.0, 1e-300, 1.0):
        cfg.AUG.lowlight_prob = prob
        datasets[prob] = build_retinaface_dataset(cfg, "unused", None, seed=1, records=records)
    plain = RetinaFaceDataset(records, image_size=64, mean=cfg.AUG.img_mean, seed=1)
    mean = torch.tensor(cfg.AUG.img_mean).view(3, 1, 1)
    for key in [(0, 0), (0, 3), (2, 1)]:
        image, target, _ = plain[key]
        for prob in (0.0, 1e-300):
            again, target_again, _ = datasets[prob][key]
            assert torch.equal(image, again) and torch.equal(target, target_again)
        dark, dark_target, _ = datasets[1.0][key]
        assert torch.equal(dark_target, target)
        assert (dark + mean).mean() < 0.6 * (image + mean).mean()
