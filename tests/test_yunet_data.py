"""YuNet's training pipeline: RandomSquareCrop, Resize, RandomFlip and the dataset."""
import cv2
import numpy as np
import pytest
import torch

from data.annotations import FaceRecord
from models.yunet.transforms import (FLIP_ORDER, PAD_VALUE, YuNetTrainDataset,
                                     build_yunet_dataset, random_square_crop, yunet_sample)
from tests.helpers import noise_image_records

# BGR marker colours of the five landmarks (left eye, right eye, nose, mouth left, mouth right)
COLOURS = np.array([[255, 0, 0], [0, 255, 0], [255, 255, 255], [0, 255, 255], [255, 0, 255]],
                   np.float32)
FACE = np.array([[100.0, 50.0, 190.0, 160.0]])
POINTS = np.array([[[125.0, 85.0], [165.0, 85.0], [145.0, 110.0], [128.0, 138.0],
                    [162.0, 138.0]]])


def _marked_image(h=200, w=300, r=6):
    img = np.full((h, w, 3), 60, np.uint8)
    x1, y1, x2, y2 = FACE[0].astype(int)
    img[y1:y2, x1:x2] = (0, 0, 200)
    for (x, y), colour in zip(POINTS[0].astype(int), COLOURS):
        img[y - r:y + r + 1, x - r:x + r + 1] = colour
    return img


def test_boxes_and_landmarks_follow_the_pixels_through_crop_resize_flip():
    img = _marked_image()
    flips = set()
    for seed in range(40):
        rng = np.random.default_rng(seed)
        image, target = yunet_sample(img, FACE, POINTS, np.ones(1, np.int64),
                                     [0.5, 0.7, 0.9, 1.1, 1.3, 1.5], 160, 0.5, rng)
        assert image.shape == (3, 160, 160) and image.dtype == np.float32
        assert target.shape == (1, 15) and target[0, 4] == 1
        hwc = image.transpose(1, 2, 0)
        x1, y1, x2, y2 = target[0, :4] * 160
        assert 0 <= x1 < x2 <= 160 and 0 <= y1 < y2 <= 160
        # inside the box: face colour or a landmark marker, nothing else
        inner = hwc[int(y1) + 2:int(y2) - 1, int(x1) + 2:int(x2) - 1].reshape(-1, 1, 3)
        palette = np.concatenate([[[0, 0, 200]], COLOURS])[None]
        assert (np.abs(inner - palette).max(-1) < 60).any(-1).mean() > 0.95, seed
        points = target[0, 5:].reshape(5, 2) * 160
        inside = ((points > 3) & (points < 157)).all(1)
        pix = np.clip(np.round(points).astype(int), 0, 159)
        colours = hwc[pix[:, 1], pix[:, 0]]
        # the colour at each target point tells which original point it is
        orders = [order for order in (list(range(5)), FLIP_ORDER)
                  if np.all(np.abs(colours[inside] - COLOURS[order][inside]) < 80)]
        assert len(orders) == 1, seed
        flips.add(orders[0] == FLIP_ORDER)
        # the swap keeps the order in the image: point 0 stays left of point 1, 3 left of 4
        assert points[0, 0] < points[1, 0] and points[3, 0] < points[4, 0]
    assert flips == {True, False}


def _coordinate_image(h, w):
    """float32 BGR whose channel 0 is the column and channel 1 the row (to read the crop)."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([xs, ys, np.zeros_like(xs)], -1)


def test_crop_keeps_exactly_the_faces_whose_centre_is_inside():
    img = _coordinate_image(400, 500)
    boxes = np.array([[10.0, 10, 60, 60], [200, 150, 260, 230], [430, 320, 495, 398],
                      [100, 250, 180, 300]])
    points = np.full((4, 5, 2), -1.0)
    points[1] = [[215, 175], [245, 175], [230, 195], [218, 215], [242, 215]]
    seen = set()
    for seed in range(60):
        out = random_square_crop(img, boxes, points, [0.3, 0.45, 0.6], np.random.default_rng(seed))
        (crop, kept_boxes, kept_points), kept = out
        side = crop.shape[0]
        assert side in (int(0.3 * 400), int(0.45 * 400), int(0.6 * 400))
        left, top = int(crop[0, 0, 0]), int(crop[0, 0, 1])            # never padded here
        assert 0 <= left <= 500 - side and 0 <= top <= 400 - side
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = ((centres[:, 0] > left) & (centres[:, 0] < left + side)
                  & (centres[:, 1] > top) & (centres[:, 1] < top + side))
        assert np.array_equal(kept, inside) and inside.any()
        expect = np.clip(boxes[inside], [left, top] * 2, [left + side, top + side] * 2)
        np.testing.assert_allclose(kept_boxes, expect - [left, top] * 2)
        for p_in, p_out in zip(points[inside], kept_points):
            if (p_in == -1).all():
                assert (p_out == -1).all()                            # missing stays missing
            else:
                clipped = np.clip(p_in, [left, top], [left + side, top + side])
                np.testing.assert_allclose(p_out, clipped - [left, top])
        seen.add(tuple(inside))
    assert len(seen) >= 3


def test_a_crop_larger_than_the_image_pads_with_128():
    img = _coordinate_image(80, 100)
    box = np.array([[40.0, 30, 60, 50]])
    for seed in range(10):
        (crop, b, _), kept = random_square_crop(img, box, np.full((1, 5, 2), -1.0), [1.5],
                                                np.random.default_rng(seed))
        assert crop.shape == (120, 120, 3)
        content = (crop[..., 2] == 0)                                 # the image, not padding
        assert (crop[~content] == PAD_VALUE).all()
        ys, xs = np.nonzero(content)
        left, top = -xs.min(), -ys.min()                              # in [w - side, 0]
        assert -20 <= left <= 0 and -40 <= top <= 0
        assert crop[ys.min(), xs.min(), 0] == 0 and crop[ys.max(), xs.max(), 0] == 99
        np.testing.assert_allclose(b, box - [left, top] * 2)


def test_no_face_means_no_sample():
    img = np.zeros((50, 50, 3), np.float32)
    assert random_square_crop(img, np.zeros((0, 4)), np.zeros((0, 5, 2)), [0.5],
                              np.random.default_rng(0)) is None


def _records(folder, n=3, unreadable=False):
    records = []
    for i in range(n):
        path = folder / f"im{i}.png"
        img = np.zeros((120, 160, 3), np.uint8)
        img[..., 0] = 200                                              # blue in BGR
        cv2.imwrite(str(path), img)
        lms = np.full((1, 5, 2), -1.0) if i == 0 else POINTS * 0.5
        records.append(FaceRecord(str(path), FACE * 0.5, lms, np.ones(1, np.int64), (160, 120)))
    records.append(FaceRecord(str(folder / "empty.png"), np.zeros((0, 4)), np.zeros((0, 5, 2)),
                              np.zeros(0, np.int64)))
    if unreadable:
        (folder / "broken.png").write_bytes(b"not a png")
        records.append(FaceRecord(str(folder / "broken.png"), FACE * 0.5, POINTS * 0.5,
                                  np.ones(1, np.int64)))
    return records


def test_dataset_conventions(tmp_path):
    ds = YuNetTrainDataset(_records(tmp_path, unreadable=True), [0.9, 1.1], size=64, seed=3)
    assert len(ds) == 4                                                # the empty image dropped
    image, target, skipped = ds[(2, 1)]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert image[0].max() == 200 and image[2].max() <= PAD_VALUE       # BGR, 0..255, unscaled
    assert target.shape[1] == 15 and skipped == 0
    again, target2, _ = ds[(2, 1)]
    assert torch.equal(image, again) and torch.equal(target, target2)
    other = [ds[(e, 1)][1] for e in range(3, 9)]
    assert any(not torch.equal(target, t) for t in other)              # epochs differ
    ds.set_epoch(2)
    assert torch.equal(ds[1][1], target)
    assert (ds[(0, 0)][1][:, 5:] == -1).all()                          # no landmarks: all -1
    _, _, skipped = ds[(0, 3)]
    assert skipped >= 1                                                # unreadable: counted
    with pytest.raises(IndexError):
        ds[(0, 4)]


def test_build_from_a_labelv2_file(tmp_path):
    from data.annotations import write_annotations
    from data.config import default_config
    records = _records(tmp_path, n=2)
    write_annotations(records[:2], tmp_path / "labelv2.txt", "labelv2", root=tmp_path)
    cfg = default_config()
    cfg.YUNET.INPUT_SIZE, cfg.YUNET.CROP_CHOICE = 96, [1.0]
    cfg.FACE.IMAGE_ROOT = str(tmp_path)                   # labelv2's default: images/ beside
    ds = build_yunet_dataset(cfg, tmp_path / "labelv2.txt", tmp_path, seed=0)
    image, target, _ = ds[0]
    assert len(ds) == 2 and image.shape == (3, 96, 96) and target.shape == (1, 15)
    direct = build_yunet_dataset(cfg, "unused", None, seed=0, records=records)
    assert len(direct) == 2                                # the face-less record dropped


# ---- AUG.lowlight_prob ------------------------------------------------------------------------

def released_sample(img, boxes, points, labels, crop_choice, size, flip_ratio, rng):
    """``yunet_sample`` as it was before the low-light option (kept to compare with)."""
    from models.yunet.transforms import hflip, resize_square, visible_points
    cropped = random_square_crop(img.astype(np.float32), boxes, points, crop_choice, rng)
    if cropped is None:
        return None
    (img, boxes, points), kept = cropped
    img, boxes, points = resize_square(img, boxes, points, size)
    if rng.random() < flip_ratio:
        img, boxes, points = hflip(img, boxes, points)
    vis = visible_points(points)
    norm = np.where(vis[..., None], points / size, -1.0).reshape(len(points), -1)
    target = np.concatenate([boxes / size, labels[kept, None].astype(np.float64), norm], 1)
    return np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32), target.astype(
        np.float32)


def _textured_records(folder, n=4):
    return noise_image_records(folder, n, lambda rng: (FACE * 0.5, POINTS * 0.5,
                                                       np.ones(1, np.int64), (160, 120)),
                               seed=7, low=40, name="t{}.png")


def test_lowlight_probability_zero_leaves_every_sample_as_before(tmp_path):
    records = _textured_records(tmp_path)
    choice = [0.5, 0.9, 1.3]
    plain = YuNetTrainDataset(records, choice, size=64, seed=4)
    zero = YuNetTrainDataset(records, choice, size=64, seed=4, lowlight_prob=0.0)
    # a probability that never fires still draws from the child generator: the main stream,
    # hence the crop and flip, must not notice
    never = YuNetTrainDataset(records, choice, size=64, seed=4, lowlight_prob=1e-300)
    for key in [(e, i) for e in range(3) for i in range(len(records))]:
        rng = np.random.default_rng([4, *key])
        bgr = cv2.imread(records[key[1]].path)
        ref_image, ref_target = released_sample(bgr, FACE * 0.5, POINTS * 0.5,
                                                np.ones(1, np.int64), choice, 64, 0.5, rng)
        for ds in (plain, zero, never):
            image, target, _ = ds[key]
            assert np.array_equal(image.numpy(), ref_image), key
            assert np.array_equal(target.numpy(), ref_target), key


def test_lowlight_probability_one_darkens_and_keeps_the_boxes(tmp_path):
    from data.config import default_config
    records = _textured_records(tmp_path)
    cfg = default_config()
    cfg.YUNET.INPUT_SIZE, cfg.YUNET.CROP_CHOICE = 64, [0.5, 0.9, 1.3]
    bright = build_yunet_dataset(cfg, "unused", None, seed=2, records=records)
    cfg.AUG.lowlight_prob = 1.0
    dark = build_yunet_dataset(cfg, "unused", None, seed=2, records=records)
    assert dark.lowlight_prob == 1.0
    for key in [(0, 0), (1, 2), (5, 3)]:
        (a, ta, _), (b, tb, _) = bright[key], dark[key]
        assert torch.equal(ta, tb)                                   # same crop, same flip
        assert b.mean() < 0.6 * a.mean() and b.dtype == torch.float32
    assert not torch.equal(dark[(0, 0)][0], dark[(1, 0)][0])
