"""The stages of docs/DUAL_TEACHER.md in train.py on tiny data: the student (PSEUDO.*, EMA.*)
in two-step runs (DSFD with an ignore band, the EMA teacher refreshing the labels, an HLA task in
the same run, RetinaFace, YuNet), exact resume of a student and of a teacher (low-light copies),
two gloo ranks against one process, the strong view, the presets, the errors naming their keys.
(The pseudo-label tool's own resume: tests/test_make_pseudo_labels.py.)"""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from data.config import ConfigError, load_config
from data.config_check import validate
from adapt.pseudo.labels import PseudoRecord, detections_to_targets, write_pseudo_labels
from adapt.pseudo.student import Student
from adapt.pseudo.strong_view import StrongAugParams, sample_generators, strong_augment
from data.widerface import parse_list_file
from models.dsfd.net import DSFD
from tests.helpers import make_tiny_wider, tiny_train_overrides
from tests.ssl_helpers import make_ssl_data, ssl_overrides
from tests.test_train import ddp_and_single
from utils.checkpoint import load_file

DET = ("loc_pal1", "conf_pal1", "loc_pal2", "conf_pal2")
SCORES = (0.9, 0.4, 0.1)        # per image: a face, an ignore region, a dropped box


def write_pseudo(data, images_from, n_ignore_only=1):
    """Pseudo labels over the images of ``images_from`` (a WIDER list): the listed boxes with
    the scores of SCORES in turn; the first ``n_ignore_only`` images get one ignore box only."""
    records = []
    for i, r in enumerate(parse_list_file(images_from, root=data)):
        scores = np.array([SCORES[j % 3] for j in range(len(r.boxes))])
        if i < n_ignore_only:
            scores = np.full(len(r.boxes), 0.4)
        path = "./" + Path(r.path).relative_to(data).as_posix()
        dets = np.concatenate([r.boxes, scores[:, None]], 1)
        records.append(PseudoRecord.from_detections(path, (128, 96), dets))
    return write_pseudo_labels(data / "pseudo.txt", records)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("student_data")
    make_ssl_data(folder)                      # src/ (labelled), trg/ (the "dark" images)
    write_pseudo(folder, folder / "trg" / "list.txt")
    return folder


def student_overrides(data, out, **extra):
    opts = {"PSEUDO.ENABLE": True, "PSEUDO.LIST": str(data / "pseudo.txt"),
            "PSEUDO.BATCH_SIZE": 2, "PSEUDO.HIGH": 0.5, "PSEUDO.LOW": 0.3,
            "FACE.SRC_TRAIN_FILE": str(data / "src" / "list.txt"), "FACE.DATA_ROOT": str(data)}
    opts.update(extra)
    return tiny_train_overrides(data, out, **opts)


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_step_student_with_ignore_band_weights_the_pl_terms(data, tmp_path):
    torch.set_num_threads(1)
    assert train.main(student_overrides(data, tmp_path, **{"PSEUDO.WEIGHT": 0.5})) == 0
    run = tmp_path / "run"
    for r in metrics(run):
        terms = {k: r[k] for k in (*DET, *(f"pl_{k}" for k in DET))}
        assert all(math.isfinite(v) for v in terms.values()), r
        expected = sum(r[k] for k in DET) + 0.5 * sum(r[f"pl_{k}"] for k in DET)
        assert r["loss"] == pytest.approx(expected, rel=1e-5)
        assert r["pl_faces"] >= 0 and r["pl_ignored"] >= 0
    ckpt = load_file(run / "ckpt_2.pth")
    assert ckpt["pseudo_loader"] == {"epoch": 0, "batches": 2}
    assert "ema" not in ckpt and not (run / "ema_final.pth").exists()
    log = (run / "log.txt").read_text()
    # 6 images, all with a box >= LOW; faces: the 0.9 boxes of images 1-5
    assert "6 of 6 images with boxes" in log


def test_ema_teacher_refreshes_the_labels_and_is_saved(data, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    calls = []
    original = Student.teacher_targets

    def counted(self, weak):
        targets = original(self, weak)
        calls.append([t.shape[1] for t in targets])
        assert all(((t[:, 4] == 1) | (t[:, 4] == -1)).all() for t in targets)
        return targets

    monkeypatch.setattr(Student, "teacher_targets", counted)
    assert train.main(student_overrides(data, tmp_path, **{
        "EMA.ENABLE": True, "EMA.DECAY": 0.5, "EMA.REFRESH": True, "EMA.REFRESH_AFTER": 1,
        "SOLVER.MAX_STEPS": 3})) == 0
    assert len(calls) == 2 and all(w == 5 for c in calls for w in c)   # steps 2 and 3 only
    run = tmp_path / "run"
    ckpt = load_file(run / "ckpt_3.pth")
    assert int(ckpt["ema"]["updates"]) == 3
    teacher, student = load_file(run / "ema_final.pth"), load_file(run / "model_final.pth")
    DSFD(width=0.125).load_state_dict(teacher, strict=True)
    assert teacher.keys() == student.keys()
    assert any(not torch.equal(teacher[k], student[k]) for k in teacher)
    assert all(torch.equal(teacher[k], ckpt["ema"]["module"][k]) for k in teacher)


def test_hla_task_in_the_same_run(data, tmp_path):
    torch.set_num_threads(1)
    opts = ssl_overrides(data, tmp_path, **{"TRAIN.CONTRASTIVE_TARGET": False,
                                            "TRAIN.TRANSFER_CONTRASTIVE": False})
    opts += [f"{k}={v}" for k, v in {"PSEUDO.ENABLE": True, "PSEUDO.LIST": str(data / "pseudo.txt"),
                                     "PSEUDO.BATCH_SIZE": 2}.items()]
    assert train.main(opts) == 0
    run = tmp_path / "run"
    for r in metrics(run):
        for k in ("jig_33_src", "jig_33_trg", "pl_conf_pal2", "conf_pal2"):
            assert math.isfinite(r[k]), (k, r)
    ckpt = load_file(run / "ckpt_2.pth")
    assert {"jig_33_trg", } <= set(ckpt["ssl_loaders"]) and "pseudo_loader" in ckpt


def straight_and_resumed(args_of, out, steps: int):
    """``ckpt_<steps>.pth`` of a run in one go (``out/straight``) and of the same run stopped
    after step 2, then resumed (``out/resumed``); ``args_of(**run)``: the overrides with
    ``run``'s SOLVER.MAX_STEPS and RUN.NAME."""
    assert train.main(args_of(**{"SOLVER.MAX_STEPS": steps, "RUN.NAME": "straight"})) == 0
    assert train.main(args_of(**{"SOLVER.MAX_STEPS": 2, "RUN.NAME": "resumed"})) == 0
    assert train.main(["--resume", str(out / "resumed" / "ckpt_2.pth"),
                       f"SOLVER.MAX_STEPS={steps}"]) == 0
    return (load_file(out / "straight" / f"ckpt_{steps}.pth"),
            load_file(out / "resumed" / f"ckpt_{steps}.pth"))


def test_student_resume_is_exact(data, tmp_path):
    """EMA with refresh from step 2, the strong view with extra low light; 6 target images
    in batches of 2: the pseudo loader wraps into its second epoch before the end."""
    torch.set_num_threads(1)
    common = {"EMA.ENABLE": True, "EMA.DECAY": 0.5, "EMA.REFRESH": True,
              "EMA.REFRESH_AFTER": 2, "PSEUDO.STRONG_LOWLIGHT_PROB": 0.5, "RUN.CKPT_EVERY": 2}
    a, b = straight_and_resumed(lambda **run: student_overrides(data, tmp_path, **run, **common),
                                tmp_path, 5)
    assert a["pseudo_loader"] == b["pseudo_loader"] == {"epoch": 1, "batches": 2}
    assert int(a["ema"]["updates"]) == int(b["ema"]["updates"]) == 5
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for k, v in a["ema"]["module"].items():
        assert torch.equal(v, b["ema"]["module"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    la, lb = metrics(tmp_path / "straight"), metrics(tmp_path / "resumed")
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]


def test_teacher_run_with_low_light_copies_resumes_exactly(data, tmp_path):
    """Stage 1 (configs/teacher_*.yaml): detection with AUG.lowlight_prob, interrupted and
    resumed, equals the run in one go."""
    torch.set_num_threads(1)
    common = {"AUG.lowlight_prob": 0.5, "RUN.CKPT_EVERY": 2,
              "FACE.SRC_TRAIN_FILE": str(data / "src" / "list.txt"), "FACE.DATA_ROOT": str(data)}
    a, b = straight_and_resumed(lambda **run: tiny_train_overrides(data, tmp_path, **run,
                                                                   **common), tmp_path, 4)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k


def test_retinaface_student_with_ema_refresh(data, tmp_path):
    torch.set_num_threads(1)
    assert train.main(student_overrides(data, tmp_path, **{
        "MODEL.NAME": "retinaface_mnet", "RETINAFACE.IMAGE_SIZE": 64, "SOLVER.LR": 1e-4,
        "EMA.ENABLE": True, "EMA.REFRESH": True, "EMA.REFRESH_AFTER": 1})) == 0
    run = tmp_path / "run"
    assert metrics(run)[0]["pl_ignored"] > 0                   # the fixed labels' band
    for r in metrics(run):
        for k in ("loss_loc", "loss_conf", "loss_landm", "pl_loss_loc", "pl_loss_conf",
                  "pl_loss_landm"):
            assert math.isfinite(r[k]), (k, r)
    assert (run / "ema_final.pth").is_file()


def test_two_gloo_ranks_equal_one_process(data, tmp_path):
    common = {"SOLVER.BATCH_SIZE": 4, "PSEUDO.BATCH_SIZE": 4, "EMA.ENABLE": True,
              "PSEUDO.STRONG_LOWLIGHT_PROB": 0.5}
    ddp, single = ddp_and_single(lambda name: student_overrides(
        data, tmp_path, **{"RUN.NAME": name}, **common), tmp_path)
    for k, v in single["model"].items():
        assert torch.allclose(ddp["model"][k], v, rtol=1e-4, atol=1e-6), k
    for k, v in single["ema"]["module"].items():
        assert torch.allclose(ddp["ema"]["module"][k], v, rtol=1e-4, atol=1e-6), k


# ---- the strong view ----------------------------------------------------------------------------

def _batch():
    """Two 48x48 RGB-minus-mean images, a bright square on a dark textured background."""
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(2, 3, 48, 48, generator=g) * 40
    pixels[:, :, 10:22, 26:40] = 220
    mean = torch.tensor([123.0, 117.0, 104.0]).view(1, 3, 1, 1)
    return pixels - mean, (123.0, 117.0, 104.0)


def test_strong_view_is_photometric_and_deterministic_per_seed_step_position():
    x, mean = _batch()
    params = StrongAugParams(jitter_prob=1.0, blur_prob=1.0, noise_prob=1.0, lowlight_prob=1.0)
    y = strong_augment(x, "RGB", mean, (1, 1, 1), sample_generators(0, 7, 0, 2), params)
    assert y.shape == x.shape and not torch.equal(x, y)
    # same seed, step and positions: the same view; another step, position or seed: another
    again = strong_augment(x, "RGB", mean, (1, 1, 1), sample_generators(0, 7, 0, 2), params)
    assert torch.equal(y, again)
    for gens in (sample_generators(0, 8, 0, 2), sample_generators(1, 7, 0, 2),
                 sample_generators(0, 7, 2, 2)):
        assert not torch.equal(y, strong_augment(x, "RGB", mean, (1, 1, 1), gens, params))
    # one image at position 1 alone (rank 1 of 2) gets what it gets inside the batch of 2
    alone = strong_augment(x[1:], "RGB", mean, (1, 1, 1), sample_generators(0, 7, 1, 1), params)
    assert torch.equal(alone[0], y[1])
    # geometry kept: the bright square stays where it was (the weak view's boxes stay valid)
    inside = torch.zeros(48, 48, dtype=torch.bool)
    inside[10:22, 26:40] = True
    for img in y:
        grey = img.mean(0)
        assert grey[inside].mean() > grey[~inside].mean() + 20
        bright = grey > (grey[inside].mean() + grey[~inside].mean()) / 2
        assert (bright == inside).float().mean() > 0.98
        rows, cols = torch.nonzero(bright, as_tuple=True)
        assert abs(float(rows.float().mean()) - 15.5) < 0.5
        assert abs(float(cols.float().mean()) - 32.5) < 0.5


def test_strong_view_respects_the_input_normalisation():
    """BGR detectors with no mean (YuNet) and a pixel range: what comes back is normalised
    the same way, within [0, 255] once un-normalised."""
    x, mean = _batch()
    bgr = (x + torch.tensor(mean).view(1, 3, 1, 1)).flip(1)       # BGR 0..255, mean 0
    off = StrongAugParams(jitter_prob=0.0, blur_prob=0.0, noise_prob=0.0)
    same = strong_augment(bgr, "BGR", (0, 0, 0), (1, 1, 1), sample_generators(0, 1, 0, 2), off)
    assert torch.allclose(same, bgr, atol=1e-4)
    y = strong_augment(bgr, "BGR", (0, 0, 0), (1, 1, 1), sample_generators(0, 1, 0, 2))
    assert float(y.min()) >= 0 and float(y.max()) <= 255


def test_teacher_detections_become_targets():
    dets = torch.tensor([[0.1, 0.1, 0.3, 0.3, 0.9, *range(10)],
                         [0.5, 0.5, 1.2, 0.9, 0.4, *range(10)],
                         [0.2, 0.2, 0.4, 0.4, 0.1, *range(10)],
                         [0.6, 0.6, 0.6, 0.8, 0.95, *range(10)]])        # empty box
    t = detections_to_targets(dets, high=0.5, low=0.3)
    assert t.shape == (2, 15)
    assert t[:, 4].tolist() == [1.0, -1.0]
    assert t[1, :4].tolist() == pytest.approx([0.5, 0.5, 1.0, 0.9])     # clipped to the image
    assert t[0, 5:].tolist() == list(map(float, range(10)))
    assert detections_to_targets(dets[:, :5], 0.5).shape == (1, 5)        # no band, no landmarks


# ---- checks and presets -----------------------------------------------------------------------

def test_config_checks_name_the_keys(data, tmp_path):
    with pytest.raises(ConfigError, match="PSEUDO.LOW"):
        validate(load_config(overrides=["PSEUDO.LOW=0.6", "PSEUDO.HIGH=0.5"]))
    with pytest.raises(ConfigError, match="EMA.REFRESH"):
        validate(load_config(overrides=["EMA.REFRESH=True", "PSEUDO.ENABLE=True"]))
    with pytest.raises(ConfigError, match="PSEUDO.HIGH"):
        validate(load_config(overrides=["PSEUDO.HIGH=1.5"]))
    with pytest.raises(FileNotFoundError, match="PSEUDO.LIST"):
        train.main(student_overrides(data, tmp_path, **{"PSEUDO.LIST": "/nope.txt"}))
    with pytest.raises(ValueError, match="PSEUDO.BATCH_SIZE"):
        train.main(student_overrides(data, tmp_path, **{"PSEUDO.BATCH_SIZE": 100}))


def test_yunet_student_with_ignore_band_and_ema_refresh(data, tmp_path):
    """models/yunet/loss.py takes ignore rows too: a YuNet student with the band, the teacher's
    landmarks in the refreshed targets."""
    torch.set_num_threads(1)
    assert train.main(student_overrides(data, tmp_path, **{
        "MODEL.NAME": "yunet_n", "YUNET.INPUT_SIZE": 64, "SOLVER.LR": 1e-4,
        "EMA.ENABLE": True, "EMA.REFRESH": True, "EMA.REFRESH_AFTER": 1})) == 0
    records = metrics(tmp_path / "run")
    assert records[0]["pl_ignored"] > 0                        # the fixed labels' band
    for r in records:
        for k in ("loss_obj", "pl_loss_obj", "pl_loss_bbox", "pl_loss_kps"):
            assert math.isfinite(r[k]), (k, r)
    assert (tmp_path / "run" / "ema_final.pth").is_file()


def test_detection_only_run_has_no_student_state(tmp_path):
    """The detection-only path is the old one: no pseudo keys, no student state."""
    make_tiny_wider(tmp_path / "d", n=4)
    assert train.main(tiny_train_overrides(tmp_path / "d", tmp_path)) == 0
    ckpt = load_file(tmp_path / "run" / "ckpt_2.pth")
    assert "pseudo_loader" not in ckpt and "ema" not in ckpt


def test_stage_presets_load_and_say_what_the_docs_say():
    from tests.helpers import ROOT
    doc = (ROOT / "docs" / "DUAL_TEACHER.md").read_text()
    expect = {  # preset: (MODEL.NAME, lowlight_prob, PSEUDO.ENABLE, EMA.REFRESH, HLA tasks on)
        "teacher_main": ("dsfd_vgg", 0.5, False, False, False),
        "teacher_complementary": ("yunet_n", 0.5, False, False, False),
        "adapt_pl": ("dsfd_vgg", 0.0, True, False, False),
        "adapt_dual_teacher": ("dsfd_vgg", 0.0, True, True, False),
        "adapt_dual_teacher_hla": ("dsfd_vgg", 0.0, True, True, True),
    }
    for name, (model, lowlight, pseudo, refresh, hla) in expect.items():
        preset = ROOT / "configs" / f"{name}.yaml"
        cfg = validate(load_config([preset]))
        assert (cfg.MODEL.NAME, cfg.AUG.lowlight_prob, cfg.PSEUDO.ENABLE, cfg.EMA.REFRESH,
                cfg.TRAIN.JIGSAW_33) == (model, lowlight, pseudo, refresh, hla), name
        assert cfg.RUN.NAME == name
        assert f"python train.py --config configs/{name}.yaml" in doc, name
        if pseudo:
            assert cfg.MODEL.WEIGHTS == "./weights/teacher_main/model_final.pth"
