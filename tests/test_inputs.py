"""Inputs are checked where they enter: list files (labels, encoding), config values at
start-up, YAML numbers, removed keys, and evaluator folders of the wrong layout."""
import pytest

import train
from data import config as config_lib
from data.config import ConfigError
from data.config_check import validate
from data.widerface import parse_list_file
from evaluation.darkface import read_darkface_gt_file
from tests.helpers import assert_read_fails
from tests.test_eval_widerface import all_kept, write_fake_gt, write_pred_files
from tools import eval_darkface, eval_widerface


# ----------------------------------------------------------------------------- list files

@pytest.mark.parametrize("label, what", [("0", "label 0 is not the face label 1"),
                                         ("2", "label 2 is not the face label 1"),
                                         ("-1", "label -1 is not the face label 1")])
def test_labels_other_than_face_name_file_and_line(tmp_path, label, what):
    assert_read_fails(parse_list_file, tmp_path / "labels.txt",
                      f"a.jpg 1 1 2 3 4 1\nb.jpg 2 1 2 3 4 1 5 6 7 8 {label}\n",
                      ValueError, rf"labels\.txt, line 2: {what}")


def test_non_utf8_bytes_name_file_and_line(tmp_path):
    assert_read_fails(parse_list_file, tmp_path / "latin1.txt",
                      b"a.jpg 1 1 2 3 4 1\r\nb.jpg 1 1 2 3 4 1\r\nc\xe9.jpg 1 1 2 3 4 1\r\n",
                      ValueError, r"latin1\.txt, line 3: byte 0xe9 is not UTF-8")


def test_a_utf8_bom_is_handled(tmp_path):
    lst = tmp_path / "bom.txt"
    lst.write_bytes(b"\xef\xbb\xbf./images/a.jpg 1 1 2 3 4 1\n./b.jpg 1 1 2 3 4 1\n")
    records = parse_list_file(lst, root="/data")
    assert [r.path for r in records] == ["/data/images/a.jpg", "/data/b.jpg"]
    assert [r.line for r in records] == [1, 2]


def test_evaluator_text_files_name_file_and_line(tmp_path):
    (tmp_path / "1.txt").write_bytes(b"\xef\xbb\xbf1\n0 0 9 9\n")          # BOM: fine
    assert read_darkface_gt_file(tmp_path / "1.txt").tolist() == [[0, 0, 9, 9]]
    (tmp_path / "2.txt").write_bytes(b"1\n0 0 9 \xff9\n")
    with pytest.raises(ValueError, match=r"2\.txt:2: byte 0xff is not UTF-8"):
        read_darkface_gt_file(tmp_path / "2.txt")


def test_images_take_a_folder_a_list_file_or_one_image(tmp_path):
    from data.predictions import list_images          # what test.py --images reads
    (tmp_path / "dir" / "sub").mkdir(parents=True)
    for name in ("b.jpg", "sub/a.png"):
        (tmp_path / "dir" / name).write_bytes(b"")
    assert list_images(tmp_path / "dir") == [tmp_path / "dir" / "b.jpg",
                                             tmp_path / "dir" / "sub" / "a.png"]
    assert list_images(tmp_path / "dir" / "b.jpg") == [tmp_path / "dir" / "b.jpg"]
    (tmp_path / "list.txt").write_bytes(b"\xef\xbb\xbfsub/a.png 1 1 2 3 4 1\nb.jpg\n")
    assert list_images(tmp_path / "list.txt", tmp_path / "dir") == [
        tmp_path / "dir" / "sub" / "a.png", tmp_path / "dir" / "b.jpg"]


# ----------------------------------------------------------------------------- the config

@pytest.mark.parametrize("override, key", [
    ("RUN.LOG_EVERY=0", "RUN.LOG_EVERY=0 must be > 0"),
    ("RUN.CKPT_EVERY=-5", "RUN.CKPT_EVERY=-5 must be > 0"),
    ("SOLVER.BATCH_SIZE=0", "SOLVER.BATCH_SIZE=0 must be > 0"),
    ("SSL.PRETRAIN_LR_HALVE_EVERY=0", "SSL.PRETRAIN_LR_HALVE_EVERY=0 must be > 0"),
    ("MODEL.WIDTH=0.0", "MODEL.WIDTH=0.0 must be > 0"),
    ("SOLVER.MAX_STEPS=-1", "SOLVER.MAX_STEPS=-1 must be >= 0"),
    ("RUN.NUM_WORKERS=-2", "RUN.NUM_WORKERS=-2 must be >= 0"),
    ("AUG.hue_prob=1.5", r"AUG.hue_prob=1.5 must lie in \[0, 1\]"),
    ("SSL.MOCO_M=-0.1", r"SSL.MOCO_M=-0.1 must lie in \[0, 1\]"),
    ("SOLVER.MOMENTUM=1.0", r"SOLVER.MOMENTUM=1.0 must lie in \[0, 1\)"),
    ("RUN.DEVICE=gpu", "RUN.DEVICE='gpu' must be auto, cpu, cuda or cuda:N"),
    ("RUN.AMP=fp8", "RUN.AMP='fp8' must be one of none, bf16, fp16"),
    ("AUG.img_mean=[104.0,117.0]", "AUG.img_mean=.* must have 3 values"),
    ("NOISE.MEDIAN=4", "NOISE.MEDIAN=4 must be odd"),
    ("SOLVER.LR_STEPS=[100,50]", "SOLVER.LR_STEPS=.* must be increasing"),
])
def test_bad_values_are_refused_at_start_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=rf"config key {key}"):
        validate(config_lib.load_config((), [override]))


def test_the_defaults_and_the_presets_are_valid():
    validate(config_lib.default_config())
    validate(config_lib.load_config(["configs/detection_only.yaml"]))


def test_yaml_exponents_are_numbers(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("SOLVER:\n  LR: 1e-3\n  WARMUP_LR: 5E-7\nSSL:\n  PRETRAIN_LR: 2.0e-4\n")
    cfg = config_lib.load_config([preset])
    assert (cfg.SOLVER.LR, cfg.SOLVER.WARMUP_LR, cfg.SSL.PRETRAIN_LR) == (1e-3, 5e-7, 2e-4)


@pytest.mark.parametrize("key", ["ANCHOR.FEATURE_MAPS=[1]", "ANCHOR.INPUT_SIZE=640",
                                 "ANCHOR.ASPECT_RATIO=[1.0]", "ANCHOR.CLIP=True"])
def test_keys_nothing_reads_are_rejected(key):
    with pytest.raises(ConfigError, match="unknown config key ANCHOR"):
        config_lib.load_config((), [key])


def test_zero_steps_is_nothing_to_do(tmp_path, caplog):
    caplog.set_level("INFO")
    assert train.main([f"RUN.OUTPUT_DIR={tmp_path}", "SOLVER.MAX_STEPS=0"]) == 0
    assert "SOLVER.MAX_STEPS=0: nothing to do" in caplog.text
    assert not any(tmp_path.iterdir())                      # no run folder was made


# ----------------------------------------------------------------------------- evaluators

def test_darkface_wrong_layout_exits_non_zero_naming_the_layout(tmp_path, capsys):
    (tmp_path / "gt").mkdir()
    for i in (1, 2):
        (tmp_path / "gt" / f"{i}.txt").write_text("1\n0 0 9 9\n")
    nested = tmp_path / "pred" / "images"                  # one level too deep
    nested.mkdir(parents=True)
    for i in (1, 2):
        (nested / f"{i}.txt").write_text("0 0 9 9 0.9\n")
    argv = ["--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred")]
    assert eval_darkface.main(argv) == 1
    err = capsys.readouterr().err
    assert "none of the 2 images has a prediction file" in err
    assert "<pred>/<image id>.txt" in err and "2 .txt files found" in err
    with pytest.warns(UserWarning, match="2 of 2 images have no prediction file"):
        assert eval_darkface.main(argv + ["--allow-missing", "--json"]) == 0
    assert capsys.readouterr().out.strip() == '{"ap": 0.0}'
    assert eval_darkface.main(["--gt", str(tmp_path / "gt"), "--pred", str(nested)]) == 0


def test_widerface_wrong_layout_exits_non_zero_naming_the_layout(tmp_path, capsys):
    events = [("0--Parade", [("a", [[0, 0, 9, 9]], all_kept(1))])]
    write_fake_gt(tmp_path / "gt", events)
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "a.txt").write_text("a\n1\n0 0 9 9 0.9\n")      # no event folder
    argv = ["--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred")]
    assert eval_widerface.main(argv) == 1
    assert "<pred>/<event>/<image name>.txt" in capsys.readouterr().err
    write_pred_files(tmp_path / "pred", events, {("0--Parade", "a"): [[0, 0, 9, 9, 0.9]]})
    assert eval_widerface.main(argv + ["--json"]) == 0
