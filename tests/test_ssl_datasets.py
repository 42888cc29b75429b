"""Self-supervised datasets: permutation tables, tile layout, zoom, pairs, bad input, loaders."""
import itertools

import numpy as np
import pytest
import torch
from PIL import Image

import data.ssl_datasets as sd
from data.config import default_config
from data.permutations import JIGSAW_4, JIGSAW_33, PERMUTATIONS
from data.widerface import parse_list_file
from adapt.hla.sources import DataSources, build_ssl_loaders
from adapt.hla.tasks import build_tasks
from tests.ssl_helpers import make_ssl_data

# The reference's permutations_hamming_max_30.npy (0-based), typed out: "class: perm[class]"
APPENDIX_B = """
 0: 8 0 7 6 2 3 5 4 1     15: 6 5 8 7 2 0 1 4 3
 1: 0 1 2 3 4 5 6 7 8     16: 7 8 1 6 4 5 0 3 2
 2: 1 2 0 4 3 6 7 8 5     17: 8 7 5 0 6 4 3 2 1
 3: 2 3 1 0 5 4 8 6 7     18: 0 1 2 3 8 7 4 6 5
 4: 3 4 5 1 7 8 0 2 6     19: 1 0 3 7 4 2 6 5 8
 5: 4 5 3 8 6 7 1 0 2     20: 2 3 0 1 6 5 8 4 7
 6: 5 6 4 7 8 0 2 1 3     21: 3 2 1 0 5 4 7 8 6
 7: 6 7 8 2 0 1 3 5 4     22: 4 5 6 2 0 8 3 7 1
 8: 7 8 6 5 1 2 4 3 0     23: 5 4 8 6 7 1 0 2 3
 9: 0 1 2 3 8 6 4 5 7     24: 6 7 4 8 1 0 5 3 2
10: 1 0 3 5 7 8 2 6 4     25: 7 8 5 4 3 6 2 1 0
11: 2 3 4 8 5 1 6 7 0     26: 8 6 7 5 2 3 1 0 4
12: 3 2 6 4 0 7 5 1 8     27: 0 1 2 5 4 7 3 8 6
13: 4 6 0 1 3 2 7 8 5     28: 1 0 3 6 8 2 5 7 4
14: 5 4 7 2 1 3 8 0 6     29: 2 3 0 4 1 5 7 6 8
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_ssl_data(tmp_path_factory.mktemp("ssl_data"))


@pytest.fixture
def aug():
    a = default_config().AUG
    a.apply_distort = False                   # exact pixel values in the layout tests
    return a


def test_permutation_tables_match_appendix_b():
    rows = {}
    for chunk in APPENDIX_B.replace(":", " : ").split("\n"):
        tokens = chunk.split()
        while tokens:
            c, _, perm, tokens = int(tokens[0]), tokens[1], tokens[2:11], tokens[11:]
            rows[c] = tuple(int(v) for v in perm)
    assert JIGSAW_33 == tuple(rows[c] for c in range(30))
    assert all(sorted(p) == list(range(9)) for p in JIGSAW_33) and len(set(JIGSAW_33)) == 30
    assert JIGSAW_33[1] == tuple(range(9))
    assert JIGSAW_4 == tuple(itertools.permutations(range(4)))
    assert PERMUTATIONS["33"] is JIGSAW_33 and PERMUTATIONS["41"] is JIGSAW_4


def coded_window(keep, cols, rows, margin_value=255):
    """Tile n of a column-major grid filled with 10 * n + 5; cell borders left at 255 only
    where the reference's centre crop cuts them away is not checked here."""
    win = np.full((keep, keep, 3), margin_value, np.uint8)
    cw, ch = keep // cols, keep // rows
    for n in range(cols * rows):
        x, y = (n // rows) * cw, (n % rows) * ch           # column-major, written out here
        win[y:y + ch, x:x + cw] = 10 * n + 5
    return win


def test_jigsaw33_slot_t_holds_tile_perm_c_t_column_major(aug):
    spec = sd.PUZZLES["33"]
    win = coded_window(255, 3, 3)
    # the 21-px border of every 85-px tile must be cut: mark it, it must never appear
    for n in range(9):
        x, y = (n // 3) * 85, (n % 3) * 85
        tile = win[y:y + 85, x:x + 85]
        tile[:10], tile[74:], tile[:, :10], tile[:, 74:] = 250, 250, 250, 250
    rng = np.random.default_rng(0)
    for c in (0, 1, 2, 17, 29):
        puzzle = sd.assemble_puzzle(win, spec, JIGSAW_33[c], aug, rng)
        assert puzzle.shape == (192, 192, 3)
        for t in range(9):
            col, row = t // 3, t % 3                        # slots 0-2: first column, top down
            slot = puzzle[row * 64:(row + 1) * 64, col * 64:(col + 1) * 64]
            assert (slot == 10 * JIGSAW_33[c][t] + 5).all(), (c, t)
    # class 0: slot 0 (top-left) holds tile 8 (bottom-right), slot 1 (below it) holds tile 0
    puzzle = sd.assemble_puzzle(win, spec, JIGSAW_33[0], aug, rng)
    assert puzzle[0, 0, 0] == 85 and puzzle[64, 0, 0] == 5 and puzzle[0, 64, 0] == 65


@pytest.mark.parametrize("kind,grid", [("22", (2, 2)), ("41", (4, 1)), ("14", (1, 4))])
def test_four_tile_puzzles_layout(aug, kind, grid):
    spec = sd.PUZZLES[kind]
    cols, rows = grid
    win = coded_window(256, cols, rows)
    rng = np.random.default_rng(1)
    tw, th = spec.tile_out
    for c in (0, 5, 23):
        perm = JIGSAW_4[c]
        puzzle = sd.assemble_puzzle(win, spec, perm, aug, rng)
        assert puzzle.shape == (192, 192, 3)
        for t in range(4):
            x, y = (t // rows) * tw, (t % rows) * th
            assert (puzzle[y:y + th, x:x + tw] == 10 * perm[t] + 5).all(), (kind, c, t)


def test_zoom_offset_keeps_the_face_centre_or_follows_the_reference():
    rng = np.random.default_rng(0)
    for _ in range(500):
        n = int(rng.integers(256, 641))
        centre = rng.uniform(0, n)
        o = sd.zoom_offset(n, 255, centre, True, rng)
        assert 0 <= o <= n - 255 and o <= centre < o + 255
        assert sd.zoom_offset(n, 255, centre, False, rng) == n - 255
    assert sd.zoom_offset(640, 256, -20.0, True, rng) == 0         # outside: nearest window


def test_keep_face_keeps_a_top_left_face_in_the_zoomed_window():
    crop = np.zeros((256, 256, 3), np.uint8)
    crop[20:32, 20:32] = 255                                         # a 12-px "face"
    crop = Image.fromarray(crop)
    rng = np.random.default_rng(0)
    kept = [np.asarray(sd.random_zoom(crop, 255, (26, 26), True, rng)).max() > 128
            for _ in range(40)]
    lost = [np.asarray(sd.random_zoom(crop, 255, (26, 26), False, rng)).max() < 128
            for _ in range(40)]
    assert all(kept)
    assert sum(lost) > 10           # the reference's bottom-right window often loses it


def test_rotation_tracks_the_face_centre():
    img = np.zeros((256, 256, 3), np.uint8)
    img[10, 200] = 255                                               # pixel (x=200, y=10)
    for r in range(4):
        rotated = np.asarray(Image.fromarray(img).transpose(sd.ROTATIONS[r])) if r else img
        x, y = sd.rotate_point(200.5, 10.5, r, 256)
        assert rotated[int(y), int(x)].max() == 255, r


def test_jigsaw_and_rotation_samples_are_deterministic_per_key(data):
    cfg = default_config()
    records = parse_list_file(data / "trg" / "list.txt", root=data)
    for kind in ("33", "22", "41", "14"):
        ds = sd.JigsawDataset(records, cfg.AUG, kind, seed=3, name=f"jig_{kind}")
        img, label, skipped = ds[(0, 2)]
        assert img.shape == (3, 192, 192) and img.dtype == torch.float32 and skipped == 0
        assert 0 <= int(label) < len(PERMUTATIONS[kind])
        again = ds[(0, 2)]
        assert torch.equal(img, again[0]) and int(label) == int(again[1])
        assert not torch.equal(img, ds[(1, 2)][0])                  # another epoch, another draw
    rot = sd.RotationDataset(records, cfg.AUG, seed=3)
    img, r, _ = rot[(0, 1)]
    assert img.shape == (3, 256, 256) and 0 <= int(r) < 4


def test_contrastive_pair_shapes_and_independent_views(data):
    cfg = default_config()
    ds = sd.ContrastiveDataset(parse_list_file(data / "trg" / "list.txt", root=data), cfg.AUG)
    q, k, skipped = ds[(0, 0)]
    assert q.shape == k.shape == (3, 256, 256) and skipped == 0
    assert not torch.equal(q, k)
    # normalised as the detector input: R - 123, G - 117, B - 104
    assert q.min() >= -123.0 and q.max() <= 255.0 - 104.0


def test_transfer_views_come_from_h_or_dh_at_the_same_place(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    (tmp_path / "h").mkdir()
    (tmp_path / "dh").mkdir()
    clean = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    Image.fromarray(clean).save(tmp_path / "h" / "a.png")
    Image.fromarray(255 - clean).save(tmp_path / "dh" / "a.png")      # D(H) = inverted H
    (tmp_path / "list.txt").write_text("./h/a.png 1 150 120 40 50 1\n")
    records = parse_list_file(tmp_path / "list.txt", root=tmp_path)
    # raw 288 crops instead of augmented views, to compare pixels
    monkeypatch.setattr(sd, "moco_view", lambda img, *a, **k: np.asarray(img).astype(np.float32))
    ds = sd.TransferDataset(records, default_config().AUG, tmp_path / "dh")
    same_source = []
    for epoch in range(40):
        q, k, _ = ds[(epoch, 0)]
        same = torch.equal(q, k)
        assert same or torch.equal(q + k, torch.full_like(q, 255.0)), epoch   # one window
        same_source.append(same)
    assert 8 < sum(same_source) < 32                # (H,H) or (D,D) about half the time


def test_transfer_samples_are_normalised_pairs(data):
    records = parse_list_file(data / "src" / "list.txt", root=data)
    ds = sd.TransferDataset(records, default_config().AUG, data / "noise")
    q, k, skipped = ds[(0, 3)]
    assert q.shape == k.shape == (3, 256, 256) and skipped == 0


def test_small_images_are_padded_black():
    img = Image.fromarray(np.full((30, 40, 3), 200, np.uint8))
    left, top = sd.window_origin((20, 15), img.size, 256, np.random.default_rng(0))
    assert (left, top) == (40 - 256, 30 - 256)                      # the clamp goes negative
    crop = np.asarray(sd.crop_padded(img, left, top, 256))
    assert crop.shape == (256, 256, 3)
    assert (crop[-30:, -40:] == 200).all()
    assert (crop[:-30] == 0).all() and (crop[:, :-40] == 0).all()


def test_tiny_and_unreadable_images(tmp_path, caplog):
    (tmp_path / "img").mkdir()
    Image.fromarray(np.full((30, 40, 3), 200, np.uint8)).save(tmp_path / "img" / "small.png")
    (tmp_path / "img" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "list.txt").write_text("./img/broken.png 1 1 1 5 5 1\n"
                                       "./img/small.png 1 -4 -6 20 20 1\n")
    records = parse_list_file(tmp_path / "list.txt", root=tmp_path)
    assert records[1].boxes.tolist() == [[-4.0, -6.0, 16.0, 14.0]]    # negative x/y kept
    aug = default_config().AUG
    for ds in (sd.JigsawDataset(records, aug), sd.ContrastiveDataset(records, aug)):
        *tensors, skipped = ds[(0, 0)]                               # index 0 is unreadable
        assert skipped == 1 and all(torch.isfinite(t).all() for t in tensors)
        assert tensors[0].shape[-1] in (192, 256)
    assert "unreadable" in caplog.text


def test_missing_files_and_folders_name_the_config_key(data, tmp_path):
    cfg = default_config()
    cfg.FACE.SRC_TRAIN_FILE = str(data / "src" / "list.txt")
    cfg.FACE.DATA_ROOT = str(data)
    cfg.FACE.TAR_TRAIN_FILE = str(tmp_path / "nope.txt")
    cfg.SSL.NOISE_DIR = str(data / "noise")
    cfg.SSL.NUM_WORKERS = 0
    with pytest.raises(FileNotFoundError, match="FACE.TAR_TRAIN_FILE"):
        build_ssl_loaders(build_tasks(cfg), cfg, 2, 0, 1)
    cfg.FACE.TAR_TRAIN_FILE = str(data / "trg" / "list.txt")
    cfg.SSL.NOISE_DIR = str(tmp_path / "no_noise")
    with pytest.raises(FileNotFoundError, match="SSL.NOISE_DIR"):
        build_ssl_loaders(build_tasks(cfg), cfg, 2, 0, 1)
    (tmp_path / "moved.txt").write_text("./elsewhere/1.png 1 0 0 5 5 1\n")
    cfg.FACE.TAR_TRAIN_FILE = str(tmp_path / "moved.txt")
    with pytest.raises(FileNotFoundError, match="FACE.TAR_TRAIN_FILE.*FACE.DATA_ROOT"):
        DataSources(cfg).target()


class KeyEcho(torch.utils.data.Dataset):
    def __len__(self):
        return 7

    def __getitem__(self, key):
        epoch, index = key
        return torch.tensor(epoch), torch.tensor(index), 0


def test_cycling_loader_wraps_epochs_and_resumes_exactly():
    loader = sd.CyclingLoader(KeyEcho(), global_batch=2, rank=0, world=1, seed=5)
    stream = [next(loader) for _ in range(8)]                       # 3 batches per epoch
    assert [int(b[0][0]) for b in stream] == [0, 0, 0, 1, 1, 1, 2, 2]
    assert loader.state_dict() == {"epoch": 2, "batches": 2}
    epoch0 = sorted(torch.cat([b[1] for b in stream[:3]]).tolist())
    assert len(set(epoch0)) == 6                                    # drop_last: 6 of 7
    again = sd.CyclingLoader(KeyEcho(), global_batch=2, rank=0, world=1, seed=5)
    again.load_state_dict({"epoch": 1, "batches": 1})
    for expected in stream[4:]:
        got = next(again)
        assert torch.equal(got[1], expected[1]) and torch.equal(got[0], expected[0])
    # two ranks split every global batch in two
    r0, r1 = (sd.CyclingLoader(KeyEcho(), 4, r, 2, seed=5) for r in (0, 1))
    ref = sd.CyclingLoader(KeyEcho(), 4, 0, 1, seed=5)
    assert torch.equal(torch.cat([next(r0)[1], next(r1)[1]]), next(ref)[1])


def test_real_pseudo_box_list_parses_with_negative_coordinates(shared_data):
    records = parse_list_file(shared_data / "hla_lists" / "mf_dsfd_dark_face_train.txt")
    assert len(records) > 5000
    boxes = np.concatenate([r.boxes for r in records])
    assert (boxes[:, :2] < 0).any() and ((boxes[:, 2:] - boxes[:, :2]) > 0).all()
