"""The trainer container loads an HLA-format trainer checkpoint (``trainer_<it>.pth``) strictly."""
import torch

import train
from data.config import default_config
from adapt.hla.trainer import trainer_state_dict
from tests.test_model import reference_key_table        # the DSFD keys, written out there

C = [256, 512, 512, 1024, 512, 256]
ENCODER_PARTS = ("vgg.", "L2Normof1.", "L2Normof2.", "L2Normof3.", "extras.")


def head_table(prefix, out):
    t = {}
    for k, c in enumerate(C):
        t.update({f"{prefix}{k}.conv1.weight": (64, c, 3, 3), f"{prefix}{k}.conv1.bias": (64,),
                  f"{prefix}{k}.conv2.weight": (64, 64, 3, 3), f"{prefix}{k}.conv2.bias": (64,),
                  f"{prefix}{k}.fc.weight": (out, 64), f"{prefix}{k}.fc.bias": (out,)})
    return t


def hla_trainer_table():
    """``trainer_<it>.pth`` with the default toggles (452 keys), as {key: shape}."""
    net = reference_key_table()
    t = {f"net.{k}": v for k, v in net.items()}
    t.update({f"jig_33_trainer.{k}": v for k, v in head_table("Head.MLP", 30).items()})
    for attr in ("contrg_trainer", "tsf_trainer"):
        t[f"{attr}.queue"], t[f"{attr}.queue_ptr"] = (6, 128, 2048), (6,)
        t.update({f"{attr}.encoder_k.{k}": v for k, v in net.items()
                  if k.startswith(ENCODER_PARTS)})
        t.update({f"{attr}.head_q.{k}": v for k, v in head_table("MLPs.", 128).items()})
        t.update({f"{attr}.head_k.{k}": v for k, v in head_table("MLPs.", 128).items()})
    return t


def test_hla_trainer_checkpoint_loads_strictly_through_train_py(tmp_path):
    table = hla_trainer_table()
    assert len(table) == 452
    assert sum(torch.Size(s).numel() for s in table.values()) == 107_684_824
    # distinct value per key; expanded views keep the file small (one element per tensor)
    state, values = {}, {}
    for i, (k, shape) in enumerate(table.items()):
        if k.endswith("queue_ptr"):
            state[k] = torch.tensor([i % 2048] * 6, dtype=torch.int64)
        else:
            values[k] = float(i) / 1000
            state[k] = torch.tensor([values[k]]).expand(shape)
    path = tmp_path / "trainer_70000.pth"
    torch.save(state, path)

    cfg = default_config()
    cfg.MODEL.WEIGHTS = str(path)                  # detector + heads from one trainer file
    cfg.SSL.LOAD_HEADS = True
    cfg.SSL.HEADS_DIR = str(tmp_path / "no_head_files_needed")
    trainer = train.build_trainer(cfg, resume=None)
    sd = trainer.state_dict()
    assert list(sd) == list(table)                                     # keys and order
    assert {k: tuple(v.shape) for k, v in sd.items()} == table
    assert sd["contrg_trainer.queue_ptr"].dtype == torch.int64
    for k, v in sd.items():
        if k in values:
            assert bool((v == values[k]).all()), k
        else:
            assert torch.equal(v, state[k]), k
    params = list(trainer.parameters())
    assert sum(p.numel() for p in params) == 104_539_084
    assert sum(p.numel() for p in params if p.requires_grad) == 55_879_244
    # and the same file through the resume path's converter
    assert set(trainer_state_dict(torch.load(path, weights_only=True))) == set(table)
