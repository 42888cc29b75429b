"""bench/night_benchmark.py: its levels, the fine-tuning split, the dlib photos, a smoke run."""
import importlib.util
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.annotations import FaceRecord
from evaluation.darkface import evaluate_darkface_boxes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def nb():
    """The benchmark script as a module (bench scripts are not a package)."""
    spec = importlib.util.spec_from_file_location("night_benchmark",
                                                  ROOT / "bench" / "night_benchmark.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module            # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_levels_go_from_clean_to_darker_and_are_fixed(nb):
    levels = nb.LEVELS
    assert levels[0].clean and not levels[0].overrides
    dark = levels[1:]
    assert len(dark) >= 5 and len({lv.name for lv in levels}) == len(levels)
    exposures = [lv.overrides["exposure"] for lv in dark]
    assert all(a > b for a, b in zip(exposures, exposures[1:]))         # mild -> darkest
    assert exposures[-1] == pytest.approx(nb.preset_exposure())        # the calibrated preset
    from data.camera import resolve
    for lv in dark:
        resolve("darkface", lv.overrides)                                # valid camera overrides
    photo = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    first = nb.darken_bgr(photo, dark[-1], 3)
    np.testing.assert_array_equal(first, nb.darken_bgr(photo, dark[-1], 3))   # fixed seed
    assert not np.array_equal(first, nb.darken_bgr(photo, dark[-1], 4))
    assert nb.darken_bgr(photo, levels[0], 3) is photo
    assert first.mean() < nb.darken_bgr(photo, dark[0], 3).mean()
    with pytest.raises(SystemExit, match="unknown level.*L99"):
        nb.level_by_name(["L1", "L99"])


def test_image_stats_and_darkface_ranges(nb, tmp_path):
    image = np.zeros((10, 10, 3), np.uint8)
    image[:5] = (10, 20, 30)                       # half zeros; grey 0.114 B + 0.587 G + 0.299 R
    cv2.imwrite(str(tmp_path / "a.png"), image)
    stats = nb.image_stats([tmp_path / "a.png"])
    assert stats["zeros"] == 50.0 and stats["B"] == 5.0 and stats["R"] == 15.0
    assert stats["mean"] == pytest.approx(round(0.114 * 10 + 0.587 * 20 + 0.299 * 30) / 2)
    assert not nb.in_darkface_range(stats)        # p99 of 22 is below 25
    assert nb.in_darkface_range(dict(stats, mean=3.6, zeros=49.0, p99=41.0))


def test_iou_threshold_of_the_darkface_protocol():
    gt = {"a": np.array([[0.0, 0.0, 39.0, 39.0]])}            # 40 x 40 (+1 pixel convention)
    pred = {"a": np.array([[0.0, 0.0, 63.0, 39.0, 0.9]])}     # 64 x 40: IoU 1600 / 2560 = 0.625
    wide = {"a": np.array([[0.0, 0.0, 39.0, 99.0, 0.9]])}     # 40 x 100: IoU 0.4
    assert evaluate_darkface_boxes(gt, pred)["ap"] == 1.0
    assert evaluate_darkface_boxes(gt, wide)["ap"] == 0.0                  # the official 0.5
    assert evaluate_darkface_boxes(gt, wide, iou_threshold=0.35)["ap"] == 1.0


def test_split_refuses_a_benchmark_photo(nb, tmp_path):
    rng = np.random.default_rng(1)
    photos = []
    for k in range(2):
        path = tmp_path / f"bench{k}.jpg"
        cv2.imwrite(str(path), rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
        photos.append(FaceRecord(str(path), np.zeros((0, 4)), np.zeros((0, 5, 2)),
                                 np.zeros(0, np.int64)))
    other = tmp_path / "other.png"
    cv2.imwrite(str(other), rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    nb.check_split(photos, [other])
    copy = tmp_path / "renamed.png"                  # the same pixels, another name and codec
    cv2.imwrite(str(copy), cv2.imread(photos[1].path))
    with pytest.raises(ValueError, match="is the benchmark photo .*bench1.jpg"):
        nb.check_split(photos, [other, copy])
    same_name = tmp_path / "sub"
    same_name.mkdir()
    cv2.imwrite(str(same_name / "bench0__2.png"), rng.integers(0, 256, (8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="must not hold benchmark photos"):
        nb.check_split(photos, [same_name / "bench0__2.png"])


def test_real_photos_and_fine_tuning_set_are_disjoint(nb, shared_data, tmp_path):
    records = nb.benchmark_records(shared_data / "dlib_faces")
    assert len(records) == 9 and sum(len(r.boxes) for r in records) == 43
    paths = []
    for name, rgb in nb.fine_tune_photos().items():
        paths.append(tmp_path / f"{name}.png")
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert len(paths) == 8
    nb.check_split(records, paths)                    # no benchmark photo among them


def test_smoke_one_level_one_method_two_photos(nb, shared_data, tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["--out", str(out), "--levels", "L1", "--methods", "yunet_n", "--images", "2",
            "--dlib-faces", str(shared_data / "dlib_faces"),
            "--yunet-dir", str(shared_data / "yunet")]
    assert nb.main(argv) == 0
    printed = capsys.readouterr().out
    assert "2 photos, 13 faces" in printed and "zero pixels %" in printed
    result = json.loads((out / "results.json").read_text())
    ap = result["methods"]["yunet_n"]["ap"]["L1"]
    assert 0.5 < ap <= 1.0                 # the mildest level: the released model still works
    clean = nb.image_stats([shared_data / "dlib_faces" / n for n in result["photos"]])
    assert result["levels"]["L1"]["stats"]["mean"] < clean["mean"]      # darkened
    assert (out / "pr_curves.png").stat().st_size > 0
    assert "| yunet_n |" in (out / "results.md").read_text()
    cache = out / "cache" / "yunet_n" / "L1.json"
    stamp = cache.stat().st_mtime_ns
    assert nb.main(argv) == 0                                    # all from the cache
    assert cache.stat().st_mtime_ns == stamp
    assert json.loads((out / "results.json").read_text())["methods"]["yunet_n"]["ap"]["L1"] == ap
