"""The DARK FACE held-out split and the proxy-evaluation command."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data import config as config_lib
from data.darkface import drop_held_out, every_kth, held_out_ids, read_ids
from data.widerface import parse_list_file
from models.dsfd.net import DSFD
from tools import darkface_proxy
from utils.checkpoint import atomic_save


def test_every_kth_rule_on_dark_face_ids():
    ids = [str(i) for i in range(1, 6001)]
    split = every_kth(reversed(ids), 500)
    assert len(split) == 500 and split[:3] == ["12", "24", "36"] and split[-1] == "6000"
    with pytest.raises(ValueError, match="DARKFACE.NUM_VAL"):
        every_kth(ids[:10], 11)


def test_published_split_reads_and_filters_the_target_list(shared_data):
    ids = read_ids(shared_data / "hla_lists" / "darkface_val_500_ids.txt")
    assert len(ids) == 500 and ids[0] == "5701"
    records = parse_list_file(shared_data / "hla_lists" / "mf_dsfd_dark_face_train.txt",
                              keep_empty=True)
    kept = drop_held_out(records, ids)
    kept_ids = {Path(r.path).stem for r in kept}
    assert not kept_ids & set(ids)
    assert 0 < len(records) - len(kept) <= 500
    assert len(kept) == sum(Path(r.path).stem not in set(ids) for r in records)


def test_missing_id_file_names_the_key():
    cfg = config_lib.load_config(overrides=["DARKFACE.VAL_IDS=/nope/ids.txt"])
    with pytest.raises(FileNotFoundError, match="DARKFACE.VAL_IDS"):
        held_out_ids(cfg)


@pytest.fixture
def dark_layout(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = tmp_path / "images", tmp_path / "label"
    images.mkdir()
    labels.mkdir()
    for i in range(1, 7):
        img = (rng.random((96, 128, 3)) * 40).astype(np.uint8)
        img[30:60, 40:66] = 200
        Image.fromarray(img).save(images / f"{i}.png")
        (labels / f"{i}.txt").write_text("1\n40 30 66 60\n")
    torch.manual_seed(0)
    atomic_save({"model": DSFD(width=0.125).state_dict(), "config": {"MODEL": {"WIDTH": 0.125}}},
                tmp_path / "w.pth")
    return tmp_path


def test_proxy_command_writes_ap_plot_and_report(dark_layout):
    root = dark_layout
    (root / "ids.txt").write_text("2\n5.png\n")
    out = root / "out"
    rc = darkface_proxy.main(["--weights", str(root / "w.pth"), "--out", str(out), "--mode",
                              "single", "--no-enhance", "--workers", "0",
                              f"DARKFACE.IMAGE_DIR={root / 'images'}",
                              f"DARKFACE.LABEL_DIR={root / 'label'}",
                              f"DARKFACE.VAL_IDS={root / 'ids.txt'}"])
    assert rc == 0
    assert sorted(p.name for p in (out / "pred").iterdir()) == ["2.txt", "5.txt"]
    result = json.loads((out / "ap.json").read_text())
    assert result["images"] == 2 and 0 <= result["ap"] <= 1
    report = (out / "report.md").read_text()
    assert "single scale 1" in report and "--no-enhance" in report and "2 images" in report
    assert (out / "pr_curve.png").stat().st_size > 0


def test_proxy_without_id_file_uses_the_rule(dark_layout):
    root = dark_layout
    out = root / "out"
    assert darkface_proxy.main(["--weights", str(root / "w.pth"), "--out", str(out), "--mode",
                                "single", "--no-enhance", "--workers", "0",
                                f"DARKFACE.IMAGE_DIR={root / 'images'}",
                                f"DARKFACE.LABEL_DIR={root / 'label'}",
                                "DARKFACE.NUM_VAL=3"]) == 0
    assert sorted(p.name for p in (out / "pred").iterdir()) == ["2.txt", "4.txt", "6.txt"]
