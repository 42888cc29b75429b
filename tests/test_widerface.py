"""data/widerface.py: list parsing, the detection dataset and its collate."""
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from data.config import default_config
from data.widerface import WIDERDetection, detection_collate, parse_list_file
from tests.helpers import assert_read_fails, bad_wider_lines


@pytest.fixture
def aug():
    aug = default_config().AUG
    aug.resize_width = aug.resize_height = 96        # small tensors keep the tests fast
    return aug


def write_image(path, w=160, h=120, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


# ---- parse_list_file -------------------------------------------------------------------------

def test_parse_valid_lines(tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text(
        "imgs/a.jpg 2 10 20 30 40 1 5 6 7 8 1\n"
        "\n"
        "   \n"
        "/abs/b.png 1 1.5 2.5 3 4 1\n"
        "imgs/c.jpg 3 0 0 0 5 1 1 1 5 -1 1 2 3 4 5 1\n")
    records = parse_list_file(lst, root=tmp_path / "root")
    assert [r.path for r in records] == [str(tmp_path / "root" / "imgs/a.jpg"), "/abs/b.png",
                                         str(tmp_path / "root" / "imgs/c.jpg")]
    assert records[0].boxes.tolist() == [[10, 20, 40, 60], [5, 6, 12, 14]]   # x1 y1 x2 y2
    assert records[0].labels.tolist() == [1, 1] and records[0].labels.dtype == np.int64
    assert records[1].boxes.tolist() == [[1.5, 2.5, 4.5, 6.5]]
    assert records[2].boxes.tolist() == [[2, 3, 6, 8]]         # w <= 0 and h <= 0 dropped
    assert [r.line for r in records] == [1, 4, 5]


def test_images_without_a_valid_box(tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text("a.jpg 0\nb.jpg 1 0 0 0 0 1\nc.jpg 1 1 1 2 2 1\n")
    assert [r.path for r in parse_list_file(lst)] == ["c.jpg"]
    kept = parse_list_file(lst, keep_empty=True)
    assert [r.path for r in kept] == ["a.jpg", "b.jpg", "c.jpg"]
    assert kept[0].boxes.shape == (0, 4) and kept[1].labels.shape == (0,)


@pytest.mark.parametrize("line, what", bad_wider_lines("parse_list_file"))
def test_malformed_line_names_file_and_line(tmp_path, line, what):
    assert_read_fails(parse_list_file, tmp_path / "bad_list.txt", f"ok.jpg 1 1 2 3 4 1\n\n{line}\n",
                      ValueError, rf"bad_list\.txt, line 3: .*{what}")


def test_missing_list_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        parse_list_file(tmp_path / "nope.txt")


def test_real_wider_train_list_counts(shared_data):
    records = parse_list_file(shared_data / "hla_lists" / "wider_face_train.txt")
    assert len(records) == 12876
    assert sum(len(r.boxes) for r in records) == 159393
    assert records[0].path == "dataset/WiderFace/WIDER_train/images/0--Parade/" \
                              "0_Parade_marchingband_1_849.jpg"
    assert records[0].boxes.tolist() == [[449, 330, 571, 479]]


def test_real_wider_val_list_keeps_every_image(shared_data):
    records = parse_list_file(shared_data / "hla_lists" / "wider_face_val.txt", keep_empty=True)
    assert len(records) == 3226


# ---- WIDERDetection --------------------------------------------------------------------------

@pytest.fixture
def tiny_list(tmp_path):
    """Three readable images with two faces each."""
    lines = []
    for k in range(3):
        write_image(tmp_path / f"img{k}.jpg", seed=k)
        lines.append(f"img{k}.jpg 2 10 10 40 40 1 90 50 30 35 1")
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(lines) + "\n")
    return lst


def test_sample_format(tiny_list, aug):
    ds = WIDERDetection(tiny_list, aug, root=tiny_list.parent)
    assert len(ds) == 3 and len(ds.records) == 3
    image, target, skipped = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 96, 96)
    assert target.dtype == torch.float32 and target.ndim == 2 and target.shape[1] == 5
    assert len(target) >= 1 and (target[:, 4] == 1).all() and skipped == 0
    assert (target[:, 2] > target[:, 0]).all() and (target[:, 3] > target[:, 1]).all()


def test_sample_is_a_function_of_seed_epoch_index(tiny_list, aug):
    ds = WIDERDetection(tiny_list, aug, root=tiny_list.parent, seed=3)
    again = WIDERDetection(tiny_list, aug, root=tiny_list.parent, seed=3)
    a, ta, _ = ds[(5, 1)]
    b, tb, _ = again[(5, 1)]
    assert torch.equal(a, b) and torch.equal(ta, tb)
    c, _, _ = ds[(6, 1)]
    assert not torch.equal(a, c)                     # another epoch, another augmentation
    other_seed = WIDERDetection(tiny_list, aug, root=tiny_list.parent, seed=4)
    assert not torch.equal(a, other_seed[(5, 1)][0])
    ds.set_epoch(5)
    assert torch.equal(ds[1][0], a)                  # an int key uses the current epoch


def test_samples_do_not_depend_on_worker_count(tiny_list, aug):
    ds = WIDERDetection(tiny_list, aug, root=tiny_list.parent)
    keys = [(2, i) for i in range(3)]

    def run(workers):
        loader = torch.utils.data.DataLoader(ds, batch_size=2, sampler=keys, num_workers=workers,
                                             collate_fn=detection_collate)
        return [images for images, _, _ in loader]

    for x, y in zip(run(0), run(2)):
        assert torch.equal(x, y)


def test_val_mode_is_deterministic_resize(tiny_list, aug):
    ds = WIDERDetection(tiny_list, aug, root=tiny_list.parent, train=False)
    image, target, _ = ds[(0, 0)]
    assert torch.equal(image, ds[(9, 0)][0])
    assert torch.allclose(target[:, :4], torch.tensor([[10 / 160, 10 / 120, 50 / 160, 50 / 120],
                                                       [90 / 160, 50 / 120, 120 / 160, 85 / 120]]))


@pytest.mark.parametrize("bad", ["corrupt", "truncated", "missing"])
def test_unreadable_image_is_skipped_and_counted(tmp_path, aug, caplog, bad):
    write_image(tmp_path / "good.jpg")
    broken = tmp_path / "broken.jpg"
    if bad == "corrupt":
        broken.write_bytes(b"this is not an image")
    elif bad == "truncated":
        write_image(broken)
        broken.write_bytes(broken.read_bytes()[:200])
    lst = tmp_path / "list.txt"
    lst.write_text("broken.jpg 1 10 10 40 40 1\ngood.jpg 1 10 10 40 40 1\n")
    ds = WIDERDetection(lst, aug, root=tmp_path)
    with caplog.at_level(logging.WARNING, logger="data.widerface"):
        image, target, skipped = ds[(0, 0)]
    assert skipped >= 1 and image.shape == (3, 96, 96) and len(target) >= 1
    assert "broken.jpg" in caplog.text
    images, targets, total = detection_collate([ds[(0, 0)], ds[(0, 1)]])
    assert total == skipped                           # the good image adds no skip


def test_all_faces_lost_draws_another_image(tmp_path, aug):
    write_image(tmp_path / "a.jpg", seed=1)
    write_image(tmp_path / "b.jpg", seed=2)
    lst = tmp_path / "list.txt"
    # a's face is 2x2 px: under the SSD crop (>= 36 px wide) it stays below 20 px at 96 px
    lst.write_text("a.jpg 1 80 60 2 2 1\nb.jpg 1 10 10 100 100 1\n")
    aug.min_face_size = 20.0
    aug.anchor_sampling = False
    ds = WIDERDetection(lst, aug, root=tmp_path)
    for epoch in range(3):
        _, target, skipped = ds[(epoch, 0)]
        assert len(target) >= 1 and skipped == 0


def test_all_images_unreadable_raises(tmp_path, aug, caplog, monkeypatch):
    import data.widerface as W
    monkeypatch.setattr(W, "MAX_DRAWS", 5)
    lst = tmp_path / "list.txt"
    lst.write_text("missing.jpg 1 10 10 40 40 1\n")
    ds = WIDERDetection(lst, aug, root=tmp_path)
    with caplog.at_level(logging.ERROR), pytest.raises(RuntimeError, match="no usable sample"):
        ds[0]


def test_collate_shapes(tiny_list, aug):
    ds = WIDERDetection(tiny_list, aug, root=tiny_list.parent)
    images, targets, skipped = detection_collate([ds[(0, i)] for i in range(3)])
    assert images.shape == (3, 3, 96, 96) and images.dtype == torch.float32
    assert isinstance(targets, list) and len(targets) == 3
    assert all(t.ndim == 2 and t.shape[1] == 5 for t in targets)
    assert skipped == 0
