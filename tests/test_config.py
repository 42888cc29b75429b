"""Config tree, overrides and preset files."""
import json

import pytest

from data import config as C


def test_defaults_match_reference_section_2():
    cfg = C.default_config()
    assert cfg.AUG.brightness_delta == 0.125 and cfg.AUG.hue_delta == 18
    assert cfg.AUG.img_mean == [104.0, 117.0, 123.0]
    assert cfg.SOLVER.LR_STEPS == [20000, 100000] and cfg.SOLVER.MAX_STEPS == 70000
    assert (cfg.SOLVER.LR, cfg.SOLVER.WARMUP_LR, cfg.SOLVER.BATCH_SIZE) == (1e-4, 1e-6, 8)
    assert cfg.ANCHOR.ANCHOR_SIZES1 == [8, 16, 32, 64, 128, 256]
    assert cfg.ANCHOR.ANCHOR_SIZES2 == [16, 32, 64, 128, 256, 512]
    assert (cfg.DETECT.NMS_THRESH, cfg.DETECT.NMS_TOP_K, cfg.DETECT.TOP_K,
            cfg.DETECT.CONF_THRESH) == (0.3, 5000, 750, 0.05)
    assert cfg.FACE.OVERLAP_THRESH == 0.35 and cfg.LOSS.NEG_POS_RATIOS == 3
    on = [k for k, v in cfg.TRAIN.items() if v]
    assert sorted(on) == ["CONTRASTIVE_TARGET", "JIGSAW_33", "MAIN", "TRANSFER_CONTRASTIVE"]
    assert cfg.TRAIN_WEIGHT.JIGSAW_33 == 0.075 and cfg.TRAIN_WEIGHT.TRANSFER_CONTRASTIVE == 0.05


def test_defaults_are_fresh_copies():
    a = C.default_config()
    a.SOLVER.LR_STEPS.append(1)
    assert C.default_config().SOLVER.LR_STEPS == [20000, 100000]


def test_overrides_parse_with_literal_eval():
    cfg = C.load_config(overrides=["SOLVER.LR=1e-3", "SOLVER.MAX_STEPS=10", "RUN.AMP=bf16",
                                   "TRAIN.JIGSAW_33=False", "SOLVER.LR_STEPS=(5, 8)",
                                   "FACE.SRC_TRAIN_FILE=./x/y.txt", "RUN.NAME=123",
                                   "MODEL.WIDTH=1"])
    assert cfg.SOLVER.LR == 1e-3 and cfg.SOLVER.MAX_STEPS == 10 and cfg.RUN.AMP == "bf16"
    assert cfg.TRAIN.JIGSAW_33 is False and cfg.SOLVER.LR_STEPS == [5, 8]
    assert cfg.FACE.SRC_TRAIN_FILE == "./x/y.txt" and cfg.RUN.NAME == "123"
    assert isinstance(cfg.MODEL.WIDTH, float)


@pytest.mark.parametrize("override, message", [
    ("SOLVER.LRR=1", "unknown config key SOLVER.LRR"),
    ("NOPE.X=1", "unknown config key NOPE"),
    ("SOLVER.MAX_STEPS=1.5", "SOLVER.MAX_STEPS"),
    ("SOLVER.MAX_STEPS=True", "SOLVER.MAX_STEPS"),
    ("TRAIN.JIGSAW_33=1", "TRAIN.JIGSAW_33"),
    ("SOLVER.LR=fast", "SOLVER.LR"),
    ("SOLVER.LR_STEPS=3", "SOLVER.LR_STEPS"),
    ("SOLVER=3", "SOLVER"),
    ("SOLVER.LR", "KEY.SUB=VALUE"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(C.ConfigError, match=message.replace(".", r"\.")):
        C.load_config(overrides=[override])


def test_yaml_and_json_presets(tmp_path):
    y = tmp_path / "p.yaml"
    y.write_text("SOLVER:\n  LR: 0.01\nTRAIN:\n  JIGSAW_33: false\n")
    j = tmp_path / "p.json"
    j.write_text(json.dumps({"SOLVER.MAX_STEPS": 7}))
    cfg = C.load_config([y, j], ["SOLVER.LR=0.5"])
    assert cfg.SOLVER.LR == 0.5 and cfg.SOLVER.MAX_STEPS == 7 and not cfg.TRAIN.JIGSAW_33


def test_bad_preset_names_file_and_key(tmp_path):
    y = tmp_path / "bad.yaml"
    y.write_text("SOLVER:\n  MAX_STEP: 3\n")
    with pytest.raises(C.ConfigError, match=r"SOLVER\.MAX_STEP.*bad\.yaml"):
        C.load_config([y])
    with pytest.raises(C.ConfigError, match="does not exist"):
        C.load_config([tmp_path / "missing.yaml"])


def test_round_trip_through_dump(tmp_path):
    cfg = C.load_config(overrides=["SOLVER.LR=0.123", "RUN.NAME=x"])
    C.dump(cfg, tmp_path / "c.yaml")
    again = C.load_config([tmp_path / "c.yaml"])
    assert C.to_dict(again) == C.to_dict(cfg)
    assert C.to_dict(C.merge_saved(C.to_dict(cfg))) == C.to_dict(cfg)
