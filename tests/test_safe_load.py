"""Trust no file: every load goes through one weights_only loader, a pickle payload is refused
with the file's name and never runs, and every released format still loads."""
import ast
import os
import re
from pathlib import Path

import pytest
import torch

import train
import transfer_headers
from tests.helpers import ROOT, make_tiny_wider, tiny_train_overrides
from utils.checkpoint import (UnsafeCheckpointError, atomic_save, detector_state_dict,
                              load_file)


class Payload:
    """What an attacker puts in a checkpoint: unpickling it would run ``touch <marker>``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "PAYLOAD_RAN"
    path = tmp_path / "evil_weights.pth"
    torch.save({"model": {"vgg.0.weight": torch.zeros(1)}, "extra": Payload(marker)}, path)
    return path, marker


def test_a_pickle_payload_is_refused_naming_the_file_and_never_runs(evil):
    path, marker = evil
    with pytest.raises(UnsafeCheckpointError, match=r"evil_weights\.pth.*not a plain tensor"):
        load_file(path)
    assert not marker.exists()


def test_every_entry_point_refuses_it(evil, tmp_path):
    path, marker = evil
    data = make_tiny_wider(tmp_path / "data", n=2).parent
    with pytest.raises(UnsafeCheckpointError, match="evil_weights.pth"):        # MODEL.WEIGHTS
        train.main(tiny_train_overrides(data, tmp_path, **{"MODEL.WEIGHTS": str(path)}))
    with pytest.raises(UnsafeCheckpointError, match="evil_weights.pth"):        # --resume
        train.main(["--resume", str(path)])
    with pytest.raises(UnsafeCheckpointError, match="evil_weights.pth"):
        transfer_headers.transfer(path, tmp_path / "heads")
    import test as test_script                                          # test.py --weights
    with pytest.raises(UnsafeCheckpointError, match="evil_weights.pth"):
        test_script.main(["--weights", str(path), "--images", str(data / "images"),
                          "--output", str(tmp_path / "pred"), "--no-enhance", "--workers", "0"])
    assert not marker.exists()


def torch_load_calls(tree):
    """``torch.load(...)`` calls of a module, with their keywords."""
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load" and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "torch"):
            yield {k.arg: ast.unparse(k.value) for k in node.keywords}


def test_one_loader_and_no_unpickling_anywhere():
    """The guarantee in the code itself: one torch.load call, in utils/checkpoint.py, with
    weights_only=True; no weights_only=False outside the tests."""
    calls, unsafe = [], []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("tests", ".venv") or rel.parts[0].startswith("."):
            continue
        text = path.read_text()
        calls += [(str(rel), kw) for kw in torch_load_calls(ast.parse(text))]
        unsafe += [str(rel) for _ in re.finditer(r"weights_only\s*=\s*False", text)]
    assert calls == [(os.path.join("utils", "checkpoint.py"),
                      {"map_location": "map_location", "weights_only": "True"})], calls
    assert unsafe == []


def test_released_formats_load(tmp_path):
    state = {"vgg.0.weight": torch.randn(2, 3), "vgg.0.bias": torch.randn(2)}
    formats = {
        "plain.pth": state,                                         # dsfd_vgg_0.880.pth
        "trainer.pth": {f"net.{k}": v for k, v in state.items()},   # HLA trainer_<it>.pth
        "dp.pth": {f"module.{k}": v for k, v in state.items()},     # DataParallel save
        "dsfd_pytorch.pth": {"epoch": 3, "weight": state},          # DSFD.pytorch
        "ours.pth": {"model": state, "step": 1, "config": {"RUN": {"SEED": 0}},
                     "rng": {"python": (3, tuple(range(5)), None)}},
    }
    for name, obj in formats.items():
        torch.save(obj, tmp_path / name)
        got = detector_state_dict(load_file(tmp_path / name))
        assert set(got) == set(state) and all(torch.equal(got[k], state[k]) for k in state)


def test_mmdetection_file_saved_on_cuda_loads_on_the_cpu(shared_data):
    obj = load_file(shared_data / "yunet" / "yunet_n.pth", map_location="cpu")
    assert {"meta", "state_dict", "optimizer"} <= set(obj)
    weights = obj["state_dict"]
    assert len(weights) == 208 and all(v.device.type == "cpu" for v in weights.values())
    assert detector_state_dict(obj).keys() == weights.keys()


def test_corrupt_and_missing_files_name_the_file(tmp_path):
    good = atomic_save({"w": torch.zeros(3)}, tmp_path / "good.pth")
    (tmp_path / "cut.pth").write_bytes(good.read_bytes()[:40])
    with pytest.raises(RuntimeError, match=r"cut\.pth could not be read"):
        load_file(tmp_path / "cut.pth")
    with pytest.raises(FileNotFoundError, match=r"head file .*nope\.pth"):
        load_file(tmp_path / "nope.pth", "head file")


def test_our_checkpoints_hold_only_plain_values(tmp_path):
    """RNG and loader states are tensors and Python values: a full trainer checkpoint loads
    with weights_only (and nothing in it needed an allow-list)."""
    data = make_tiny_wider(tmp_path / "data", n=4).parent
    assert train.main(tiny_train_overrides(data, tmp_path, **{"SOLVER.MAX_STEPS": 1})) == 0
    path = tmp_path / "run" / "ckpt_1.pth"
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    ckpt = load_file(path)
    assert {"rng", "config", "optimizer", "step"} <= set(ckpt)
    assert torch.is_tensor(ckpt["rng"]["numpy"][1])           # numpy's state, as a tensor
