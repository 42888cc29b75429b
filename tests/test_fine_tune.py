"""Validation in every annotation format (engine/validation.py) and the two-phase fine-tune
(tools/fine_tune.py): schedule, chosen phase-2 start, resume and skip, and one short run for
RetinaFace (a ``module.`` file) and YuNet (the released mmdetection file)."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from data import config as config_lib
from data.config import ConfigError
from data.config_check import validate
from engine import validation
from evaluation.darkface import evaluate_darkface_boxes
from evaluation.widerface import WiderGT, evaluate_widerface_boxes
from models.registry import build_net
from tests.helpers import make_tiny_wider, run_script, tiny_train_overrides
from tools import fine_tune
from utils.checkpoint import load_file

# ---- validation: the same AP from each format as from the evaluators directly -----------------

# (W, H) powers of two, so normalising the detections and scaling them back is exact
SIZES = [(64, 32), (128, 64), (64, 128), (32, 64)]
GT = [np.array([[4, 3, 20, 17], [30, 8, 50, 30]], float),           # x1 y1 x2 y2, integers
      np.array([[10, 10, 40, 44], [60, 20, 90, 58], [95, 5, 120, 40]], float),
      np.array([[5, 60, 45, 110]], float),
      np.zeros((0, 4))]                                               # an image without faces


def predictions(seed=0) -> list[np.ndarray]:
    """Pixel ``x1 y1 x2 y2 score`` per image: jittered faces, a missed face, false positives."""
    rng = np.random.default_rng(seed)
    out = []
    for (w, h), gt in zip(SIZES, GT):
        found = gt[:-1] if len(gt) > 1 else gt                      # the last face is missed
        hits = found + rng.integers(-3, 4, size=found.shape)
        fp = np.array([[1, 1, 9, 9], [w / 2, h / 2, w / 2 + 8, h / 2 + 6]])
        boxes = np.concatenate([hits, fp])
        out.append(np.concatenate([boxes, rng.random((len(boxes), 1))], axis=1))
    return out


def write_images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for (w, h), name in zip(SIZES, names):
        Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(folder / name)


def face_lines(gt, fmt):
    lines = []
    for k, (x1, y1, x2, y2) in enumerate(gt.astype(int)):
        if fmt == "labelv2":
            lines.append(f"{x1} {y1} {x2} {y2}")
        elif k % 2:                          # a train-style line: box, no landmarks, 1 value
            lines.append(f"{x1} {y1} {x2 - x1} {y2 - y1} " + " ".join(["-1"] * 15) + " -1")
        else:
            lines.append(f"{x1} {y1} {x2 - x1} {y2 - y1}")
    return lines


def write_format(root, fmt):
    """The GT above as a hand-made file (or Laboro root) of ``fmt``; returns FACE keys."""
    names = [f"{i:03d}.png" for i in range(len(GT))]
    if fmt == "wider":
        write_images(root / "pics", names)
        lines = [f"pics/{n} {len(g)} " + " ".join(
            f"{x1} {y1} {x2 - x1} {y2 - y1} 1" for x1, y1, x2, y2 in g.astype(int))
            for n, g in zip(names, GT)]
        (root / "val.txt").write_text("\n".join(lines) + "\n")
        return {"FACE.SRC_VAL_FILE": root / "val.txt", "FACE.DATA_ROOT": root}
    folder = root / "tv" / "val" if fmt == "laboro" else root
    write_images(folder / "images", names)
    blocks = []
    for (w, h), n, g in zip(SIZES, names, GT):
        blocks.append(f"# {n} {w} {h}" if fmt == "labelv2" else f"# {n}")
        blocks += face_lines(g, fmt)
    label = folder / ("labelv2.txt" if fmt == "labelv2" else "label.txt")
    label.write_text("\n".join(blocks) + "\n")
    if fmt == "laboro":
        (folder / "tvval_list.txt").write_text("".join(f"/{n}\n" for n in names))
        return {"FACE.SRC_VAL_FILE": root / "tv"}
    return {"FACE.SRC_VAL_FILE": label}


class FakeDetector:
    """Stands in for FaceDetector: the predictions above, normalised by the image size."""
    preds = {}

    @classmethod
    def from_config(cls, net, cfg, device):
        net.eval()
        return cls()

    def __call__(self, images):
        h, w = images.shape[1:3]
        return [torch.from_numpy(self.preds[(w, h)] / np.array([w, h, w, h, 1.0]))]


class Trainer(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(1, 1)


def direct_metrics(preds):
    dark = evaluate_darkface_boxes({str(i): g for i, g in enumerate(GT)},
                                   {str(i): p for i, p in enumerate(preds)})["ap"]
    xywh = [np.concatenate([g[:, :2], g[:, 2:] - g[:, :2]], 1).astype(np.int32) for g in GT]
    keep = [np.arange(len(g)) for g in GT]
    gt = WiderGT(["e"] * len(GT), [str(i) for i in range(len(GT))], xywh,
                 {s: keep for s in ("easy", "medium", "hard")})
    wider = evaluate_widerface_boxes(gt, [np.concatenate([p[:, :2], p[:, 2:4] - p[:, :2],
                                                          p[:, 4:]], 1) for p in preds])
    assert wider["easy"] == wider["medium"] == wider["hard"]
    return {"val_ap": dark, "val_ap_wider": wider["hard"]}


@pytest.mark.parametrize("fmt", ["wider", "retinaface", "labelv2", "laboro"])
def test_validation_in_each_format_equals_the_evaluators(fmt, tmp_path, monkeypatch):
    preds = predictions()
    FakeDetector.preds = {size: p for size, p in zip(SIZES, preds)}
    monkeypatch.setattr(validation, "FaceDetector", FakeDetector)
    keys = write_format(tmp_path, fmt)
    expected = direct_metrics(preds)
    assert 0 < expected["val_ap"] < 1 and 0 < expected["val_ap_wider"] < 1
    for val_format in ("auto", fmt):
        for protocol, metric in (("darkface", "val_ap"), ("both", "val_ap_wider")):
            cfg = validate(config_lib.load_config([], [
                *(f"{k}={v}" for k, v in keys.items()), f"FACE.VAL_FORMAT={val_format}",
                "RUN.EVAL_EVERY=1", f"RUN.EVAL_PROTOCOL={protocol}", f"RUN.EVAL_METRIC={metric}"]))
            trainer = Trainer()
            got = validation.build_validation(cfg, trainer, torch.device("cpu"))()
            assert next(iter(got)) == metric and trainer.training     # the best metric first
            wanted = ("val_ap",) if protocol == "darkface" else ("val_ap_wider", "val_ap")
            assert tuple(got) == wanted
            for k in wanted:
                assert got[k] == pytest.approx(expected[k], abs=1e-12), (fmt, k)


def test_validation_errors_name_the_key_and_the_fix(tmp_path):
    keys = write_format(tmp_path, "laboro")
    (tmp_path / "tv" / "val" / "label.txt").unlink()          # only the release's box-less list
    cfg = config_lib.load_config([], [f"FACE.SRC_VAL_FILE={keys['FACE.SRC_VAL_FILE']}",
                                      "RUN.EVAL_EVERY=1"])
    with pytest.raises(ValueError, match="FACE.SRC_VAL_FILE.*val/label.txt"):
        validation.build_validation(cfg, Trainer(), torch.device("cpu"))
    with pytest.raises(ConfigError, match="RUN.EVAL_METRIC.*val_ap_wider"):
        validate(config_lib.load_config([], ["RUN.EVAL_PROTOCOL=wider"]))
    with pytest.raises(ConfigError, match="RUN.EVAL_PROTOCOL"):
        validate(config_lib.load_config([], ["RUN.EVAL_PROTOCOL=hard"]))


def test_wider_ground_truth_rounds_like_matlab():
    from data.annotations import FaceRecord
    boxes = np.array([[1.5, 2.49, 10.5, 12.0]])                 # w = 9, h = 9.51
    record = FaceRecord("x", boxes, np.full((1, 5, 2), -1.0), np.ones(1, np.int64))
    gt = validation.wider_ground_truth([record])
    assert gt.boxes[0].tolist() == [[2, 2, 9, 10]] and gt.boxes[0].dtype == np.int32


# ---- the two-phase schedule -------------------------------------------------------------------



def test_steps_per_epoch_is_train_pys_epoch():
    assert fine_tune.steps_per_epoch(4, 2, 1) == 2
    assert fine_tune.steps_per_epoch(5, 2, 1) == 3
    assert fine_tune.steps_per_epoch(5, 4, 2) == 2            # 3 samples a rank, 2 a batch
    assert fine_tune.steps_per_epoch(12880, 32, 1) == 403     # Pytorch_Retinaface's epoch
    with pytest.raises(fine_tune.FineTuneError, match="divisible"):
        fine_tune.steps_per_epoch(8, 3, 2)


TOOL_OWNED = ("FACE.SRC_TRAIN_FILE", "SOLVER.MAX_STEPS", "SOLVER.LR", "RUN.NAME",
              "RUN.CKPT_EVERY")


def tiny_opts(data, out, **extra):
    return [o for o in tiny_train_overrides(data, out, **extra)
            if o.split("=")[0] not in TOOL_OWNED]


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_phases_start_from_the_chosen_checkpoint_resume_and_skip(tmp_path):
    data = tmp_path / "data"
    make_tiny_wider(data, n=4)
    with open(data / "list.txt", "a") as f:
        f.write("./images/000.jpg 0\n")                      # no face: not an epoch sample
    out = tmp_path / "runs"
    args = ["tools/fine_tune.py", "--data", str(data / "list.txt"), "--val",
            str(data / "list.txt"), "--name", "ft", "--lr1", "1e-3", "--lr2", "1e-5",
            "--phase2-from", "epoch:1", "--epochs2", "1", *tiny_opts(data, out)]
    res = run_script([*args, "--epochs1", "1"])
    assert res.returncode == 0, res.stderr[-3000:]
    run1, run2 = out / "ft_phase1", out / "ft_phase2"
    spe = math.ceil(4 / 2)                                    # 4 images with faces, batch 2
    assert "4 images, 2 steps per epoch" in (run1 / "log.txt").read_text()
    c2 = load_file(run2 / f"ckpt_{spe}.pth")["config"]
    assert c2["MODEL"]["WEIGHTS"] == str(run1 / f"ckpt_{spe}.pth")
    assert (c2["SOLVER"]["LR"], c2["SOLVER"]["WARMUP_ITERS"], c2["SOLVER"]["LR_STEPS"]) == \
        (1e-5, 0, [])
    assert f"initialised the detector from {run1 / f'ckpt_{spe}.pth'}" in \
        (run2 / "log.txt").read_text()
    for run, lr in ((run1, 1e-3), (run2, 1e-5)):
        lines = records(run / "metrics.jsonl")
        assert [r["step"] for r in lines if "val_ap" in r] == [spe]       # once an epoch
        assert all("val_ap_wider" in r for r in lines if "val_ap" in r)   # --protocol both
        assert [r["lr"] for r in lines if "lr" in r][-1] == pytest.approx(lr)
        assert (run / "best.pth").is_file()
    summary = json.loads((out / "ft" / "fine_tune_summary.json").read_text())
    assert summary["steps_per_epoch"] == spe and summary["train_images"] == 4
    assert [[r["epoch"] for r in p["per_epoch"]] for p in summary["phases"]] == [[1], [1]]
    assert summary["best"]["checkpoint"].endswith("best.pth")
    assert "| epoch | step | val_ap | val_ap_wider |" in (out / "ft" / "fine_tune_summary.md"
                                                          ).read_text()

    # a longer phase 1: it continues from its checkpoint; phase 2 (same start) is skipped
    stamp = (run2 / f"ckpt_{spe}.pth").stat().st_mtime_ns
    res = run_script([*args, "--epochs1", "2"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed at step 2" in (run1 / "log.txt").read_text()
    assert "phase 2 already finished" in res.stderr
    assert (run2 / f"ckpt_{spe}.pth").stat().st_mtime_ns == stamp
    assert [r["step"] for r in records(run1 / "metrics.jsonl") if "val_ap" in r] == [2, 4]
    summary = json.loads((out / "ft" / "fine_tune_summary.json").read_text())
    assert [r["epoch"] for r in summary["phases"][0]["per_epoch"]] == [1, 2]


def test_overrides_the_tool_owns_are_refused(tmp_path):
    data = tmp_path / "data"
    make_tiny_wider(data, n=2)
    args = fine_tune.parse_args(["--data", str(data / "list.txt"), "--epochs1", "1",
                                 "--epochs2", "1", "SOLVER.LR=0.1"])
    with pytest.raises(fine_tune.FineTuneError, match="SOLVER.LR is set by the tool"):
        fine_tune.Plan(args)


# ---- RetinaFace and YuNet: one command, their released file formats ---------------------------

def write_block_dataset(folder, fmt, n=2, size=(96, 128)):
    """``n`` images with two faces each, as a RetinaFace label.txt (one face with landmarks,
    one without) or a labelv2 file."""
    rng = np.random.default_rng(1)
    h, w = size
    (folder / "images").mkdir(parents=True)
    lines = []
    for i in range(n):
        Image.fromarray((rng.random((h, w, 3)) * 200).astype(np.uint8)).save(
            folder / "images" / f"{i}.jpg")
        lines.append(f"# {i}.jpg" + (f" {w} {h}" if fmt == "labelv2" else ""))
        for x, y, s in ((8, 10, 30), (50, 60, 36)):
            if fmt == "labelv2":
                lines.append(f"{x} {y} {x + s} {y + s}")
            else:
                points = " ".join(f"{x + s * a:.1f} {y + s * b:.1f} 0.0" for a, b in
                                  ((.3, .4), (.7, .4), (.5, .6), (.35, .8), (.65, .8)))
                lines.append(f"{x} {y} {s} {s} {points} 0.9" if i % 2 == 0 else
                             f"{x} {y} {s} {s} " + " ".join(["-1"] * 15) + " -1")
    label = folder / ("labelv2.txt" if fmt == "labelv2" else "label.txt")
    label.write_text("\n".join(lines) + "\n")
    return label


def block_opts(out):
    return [f"RUN.OUTPUT_DIR={out}", "SOLVER.BATCH_SIZE=2", "RUN.NUM_WORKERS=0",
            "RUN.LOG_EVERY=1", "RUN.TENSORBOARD=False", "RUN.DEVICE=cpu"]


def assert_started_from(ckpt_path, state):
    """A step at lr 1e-9 leaves the parameters where the weights file put them."""
    model = load_file(ckpt_path)["model"]
    params = [k for k in state if "running" not in k and "num_batches" not in k]
    assert params
    for k in params:
        assert torch.allclose(model[f"net.{k}"].float(), state[k].float(), atol=1e-5), k


def test_retinaface_fine_tunes_from_a_module_prefixed_file(tmp_path):
    label = write_block_dataset(tmp_path / "data", "retinaface")
    cfg = config_lib.load_config([], ["MODEL.NAME=retinaface_mnet"])
    torch.manual_seed(0)
    state = build_net(cfg).state_dict()
    weights = tmp_path / "mobilenet0.25_Final.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, weights)   # a DataParallel save
    out = tmp_path / "runs"
    res = run_script(["tools/fine_tune.py", "--data", str(label), "--val", str(label),
                      "--epochs1", "1", "--epochs2", "1", "--lr1", "1e-9", "--lr2", "1e-9",
                      "--phase2-from", "last", "MODEL.NAME=retinaface_mnet",
                      f"MODEL.WEIGHTS={weights}", "RETINAFACE.IMAGE_SIZE=96", *block_opts(out)])
    assert res.returncode == 0, res.stderr[-3000:]
    assert_started_from(out / "retinaface_mnet_finetune_phase1" / "ckpt_1.pth", state)
    summary = json.loads((out / "retinaface_mnet_finetune" / "fine_tune_summary.json"
                          ).read_text())
    assert summary["steps_per_epoch"] == 1
    assert [len(p["per_epoch"]) for p in summary["phases"]] == [1, 1]
    assert "**Best**: phase" in res.stdout


def test_yunet_fine_tunes_from_the_released_weights(tmp_path, shared_data):
    released = shared_data / "yunet" / "yunet_n.pth"
    label = write_block_dataset(tmp_path / "data", "labelv2")
    out = tmp_path / "runs"
    res = run_script(["tools/fine_tune.py", "--data", str(label), "--val", str(label),
                      "--epochs1", "1", "--epochs2", "1", "--lr1", "1e-9", "--lr2", "1e-9",
                      "MODEL.NAME=yunet_n", f"MODEL.WEIGHTS={released}", "YUNET.INPUT_SIZE=96",
                      *block_opts(out)])
    assert res.returncode == 0, res.stderr[-3000:]
    state = load_file(released)["state_dict"]
    assert_started_from(out / "yunet_n_finetune_phase1" / "ckpt_1.pth", state)


def test_laboro_recipe_plans_train_split_training_and_val_split_validation(tmp_path):
    root = tmp_path / "tvface"
    write_block_dataset(root / "train", "retinaface", n=3)
    write_block_dataset(root / "val", "retinaface", n=2)           # the dev GT as val/label.txt
    (root / "val" / "tvval_list.txt").write_text("/0.jpg\n/1.jpg\n")
    plan = fine_tune.Plan(fine_tune.parse_args([
        "--recipe", "configs/fine_tune_laboro.yaml", "--data", str(root), "--epochs1", "3",
        "--phase2-from", "epoch:2", f"RUN.OUTPUT_DIR={tmp_path / 'runs'}"]))
    p1, p2 = plan.phases
    assert (plan.images, plan.spe, p1.max_steps, p2.max_steps) == (3, 1, 3, 10)  # batch 32
    for phase, lr in ((p1, 1e-3), (p2, 1e-5)):
        cfg = phase.cfg
        assert (cfg.MODEL.NAME, cfg.SOLVER.BATCH_SIZE, cfg.SOLVER.LR) == ("retinaface_mnet", 32, lr)
        assert (cfg.FACE.SRC_TRAIN_FILE, cfg.FACE.SRC_FORMAT, cfg.FACE.IMAGE_ROOT) == (
            str(root / "train" / "label.txt"), "retinaface", str(root / "train" / "images"))
        assert (cfg.FACE.SRC_VAL_FILE, cfg.FACE.VAL_FORMAT) == (str(root), "laboro")
        assert (cfg.RUN.EVAL_METRIC, cfg.RUN.EVAL_PROTOCOL, cfg.RUN.EVAL_EVERY) == (
            "val_ap_wider", "both", 1)
        assert not (cfg.TRAIN.JIGSAW_33 or cfg.TRAIN.CONTRASTIVE_TARGET)   # detection only
    assert p2.cfg.MODEL.WEIGHTS == str(tmp_path / "runs" / "retinaface_mnet_finetune_phase1"
                                       / "ckpt_2.pth")
    assert p2.cfg.SOLVER.WARMUP_ITERS == 0 and p1.cfg.SOLVER.LR_STEPS == []
    (root / "val" / "label.txt").unlink()                           # the release's list alone
    with pytest.raises(ValueError, match="val/label.txt"):
        fine_tune.Plan(fine_tune.parse_args(["--recipe", "configs/fine_tune_laboro.yaml",
                                             "--data", str(root)]))
