"""Pix2pix: U-Net-256 and 70x70 PatchGAN architecture (sizes counted from the paper's layer
list), key layout, shapes at 256 and at a padded non-square size, test modes, one update, the
schedule, and the trainer (outputs, exact resume, errors)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from lowlevel.pix2pix import (PatchDiscriminator, UnetGenerator, generator_state_dict,
                              generator_width, init_weights, set_test_mode)
from tools import train_noise
from utils.checkpoint import load_file


def unet256_params(f: int) -> int:
    """Parameters of the paper's U-Net-256 (4x4 kernels; biases only on the last layer)."""
    conv = lambda cin, cout: cin * cout * 16                     # noqa: E731
    enc = [(3, f), (f, 2 * f), (2 * f, 4 * f), (4 * f, 8 * f)] + [(8 * f, 8 * f)] * 4
    dec = [(8 * f, 8 * f)] + [(16 * f, 8 * f)] * 3 + [(16 * f, 4 * f), (8 * f, 2 * f),
                                                      (4 * f, f), (2 * f, 3)]
    bn_enc = [c for _, c in enc[1:7]]                 # no norm on the first and innermost
    bn_dec = [c for _, c in dec[:-1]]                 # none on the output layer
    return (sum(conv(a, b) for a, b in enc + dec) + 2 * sum(bn_enc + bn_dec) + 3)


def patchgan_params(d: int, cin: int = 6) -> int:
    conv = lambda a, b: a * b * 16                               # noqa: E731
    return (conv(cin, d) + d + conv(d, 2 * d) + conv(2 * d, 4 * d) + conv(4 * d, 8 * d)
            + 2 * (2 * d + 4 * d + 8 * d) + conv(8 * d, 1) + 1)


def test_sizes_match_the_paper_architecture():
    G, D = UnetGenerator(), PatchDiscriminator()
    assert sum(p.numel() for p in G.parameters()) == unet256_params(64) == 54_413_955
    assert sum(p.numel() for p in D.parameters()) == patchgan_params(64) == 2_768_705
    assert sum(isinstance(m, torch.nn.Dropout) for m in G.modules()) == 3
    assert sum(p.numel() for p in UnetGenerator(ngf=8).parameters()) == unet256_params(8)


def test_key_layout_of_the_public_pix2pix_code():
    g = {k: tuple(v.shape) for k, v in UnetGenerator().state_dict().items()}
    inner = "model.model.1" + ".model.3" * 6 + ".model"
    assert g["model.model.0.weight"] == (64, 3, 4, 4)
    assert g["model.model.1.model.1.weight"] == (128, 64, 4, 4)
    assert g["model.model.1.model.2.running_var"] == (128,)
    assert g["model.model.3.weight"] == (128, 3, 4, 4) and g["model.model.3.bias"] == (3,)
    assert g[f"{inner}.1.weight"] == (512, 512, 4, 4) and g[f"{inner}.3.weight"] == (512, 512, 4, 4)
    assert "model.model.0.bias" not in g and f"{inner}.4.weight" in g
    d = {k: tuple(v.shape) for k, v in PatchDiscriminator().state_dict().items()}
    assert d["model.0.weight"] == (64, 6, 4, 4) and d["model.0.bias"] == (64,)
    assert d["model.2.weight"] == (128, 64, 4, 4) and "model.2.bias" not in d
    assert d["model.8.weight"] == (512, 256, 4, 4) and d["model.11.weight"] == (1, 512, 4, 4)


def test_old_generator_files_load_and_their_width_is_read():
    state = UnetGenerator(ngf=4).state_dict()
    old = {f"module.{k}": v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    fixed = generator_state_dict(old)
    assert generator_width(fixed) == 4
    UnetGenerator(ngf=4).load_state_dict(fixed, strict=True)
    assert generator_state_dict({"G": state, "D": {}}).keys() == state.keys()


@torch.no_grad()
def test_shapes_at_256_and_at_a_padded_non_square_size():
    torch.manual_seed(0)
    G = UnetGenerator(ngf=8)
    y = G(torch.randn(2, 3, 256, 256))
    assert y.shape == (2, 3, 256, 256) and y.abs().max() <= 1
    assert G(torch.randn(1, 3, 512, 768)).shape == (1, 3, 512, 768)
    with pytest.raises(ValueError, match="multiples of 256"):
        G(torch.randn(1, 3, 256, 300))
    D = PatchDiscriminator(ndf=8)
    assert D(torch.randn(2, 6, 256, 256)).shape == (2, 1, 30, 30)
    assert D(torch.randn(1, 6, 512, 768)).shape == (1, 1, 62, 94)


def test_patchgan_receptive_field_is_70():
    torch.manual_seed(0)
    D = PatchDiscriminator(ndf=8).eval()              # running stats: per-pixel affine BN
    x = torch.randn(1, 6, 160, 160, requires_grad=True)
    D(x)[0, 0, 8, 8].backward()
    rows, cols = torch.nonzero(x.grad.abs().sum(1)[0], as_tuple=True)
    assert rows.max() - rows.min() + 1 == 70 and cols.max() - cols.min() + 1 == 70


@torch.no_grad()
def test_reference_test_mode_uses_image_statistics_and_seeded_dropout():
    torch.manual_seed(0)
    G = UnetGenerator(ngf=4)
    init_weights(G)
    x = torch.randn(1, 3, 256, 256)
    set_test_mode(G, reference=True)
    before = {k: v.clone() for k, v in G.state_dict().items() if "running" in k}
    torch.manual_seed(7)
    a = G(x)
    for m in G.modules():                              # running statistics are not used ...
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.add_(5.0)
    torch.manual_seed(7)
    assert torch.equal(G(x), a)
    torch.manual_seed(8)
    assert not torch.equal(G(x), a)                    # ... and dropout is on
    after = {k: v for k, v in G.state_dict().items() if "running" in k}
    assert all(torch.equal(after[k], before[k] + (5.0 if k.endswith("mean") else 0))
               for k in before)                        # ... nor updated
    set_test_mode(G, reference=False)
    assert not G.training and torch.equal(G(x), G(x))


def test_one_update_changes_both_nets_and_reports_the_terms():
    torch.manual_seed(0)
    G, D = UnetGenerator(ngf=4), PatchDiscriminator(ndf=4)
    init_weights(G)
    init_weights(D)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    g0 = [p.clone() for p in G.parameters()]
    d0 = [p.clone() for p in D.parameters()]
    a, b = torch.rand(2, 3, 256, 256) * 2 - 1, torch.rand(2, 3, 256, 256) * 2 - 1
    terms = train_noise.pix2pix_step(G, D, opt_g, opt_d, a, b, 100.0)
    assert set(terms) == {"D_fake", "D_real", "G_GAN", "G_L1"}
    assert all(torch.isfinite(v) for v in terms.values())
    # L1 of two independent U(-1, 1) images is 2/3 at the start (G(a) ~ 0 gives 1/2)
    assert 30 < terms["G_L1"].item() < 80
    assert 0.2 < terms["D_real"].item() < 0.5                      # 0.5 x BCE near log 2
    assert all(not torch.equal(p, q) for p, q in zip(G.parameters(), g0) if p.dim() > 1)
    assert all(not torch.equal(p, q) for p, q in zip(D.parameters(), d0) if p.dim() > 1)
    assert all(p.requires_grad for p in D.parameters())


def test_linear_decay_schedule():
    rule = train_noise.linear_decay(100, 100)
    assert [rule(e) for e in (0, 99)] == [1.0, 1.0]
    assert rule(100) == pytest.approx(1 - 1 / 101) and rule(199) == pytest.approx(1 / 101)


# ----------------------------------------------------------------------------- trainer


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(4)
    for i in range(3):
        sharp = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
        for folder, img in (("enh", sharp), ("blur", (sharp // 2 + 60).astype(np.uint8))):
            (root / folder).mkdir(exist_ok=True)
            Image.fromarray(img).save(root / folder / f"{i}.png")
    return root


def noise_args(pairs, out, name, *extra):
    return [f"ENHANCE.ENHANCED_DIR={pairs / 'enh'}", f"NOISE.BLUR_DIR={pairs / 'blur'}",
            "NOISE.NGF=4", "NOISE.NDF=4", "NOISE.BATCH_SIZE=2", "NOISE.EPOCHS=1",
            "NOISE.EPOCHS_DECAY=1", f"RUN.OUTPUT_DIR={out}", f"RUN.NAME={name}",
            "RUN.NUM_WORKERS=0", "RUN.TENSORBOARD=False", "RUN.LOG_EVERY=1", *extra]


def test_trainer_outputs_and_exact_mid_epoch_resume(pairs, tmp_path):
    assert train_noise.main(noise_args(pairs, tmp_path, "straight")) == 0
    run = tmp_path / "straight"
    assert sorted(p.name for p in run.glob("ckpt_*.pth")) == ["ckpt_2.pth", "ckpt_4.pth"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [r["lr"] for r in records] == pytest.approx([2e-4, 2e-4, 1e-4, 1e-4])
    G = UnetGenerator(ngf=4)
    G.load_state_dict(load_file(run / "G_final.pth"), strict=True)

    assert train_noise.main(["--max-steps", "3"] + noise_args(pairs, tmp_path, "resumed")) == 0
    assert train_noise.main(["--resume", "auto"] + noise_args(pairs, tmp_path, "resumed")) == 0
    a, b = load_file(run / "ckpt_4.pth"), load_file(tmp_path / "resumed" / "ckpt_4.pth")
    for net in ("G", "D"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), (net, k)
    for opt in ("opt_G", "opt_D"):
        for sa, sb in zip(a[opt]["state"].values(), b[opt]["state"].values()):
            assert torch.equal(sa["exp_avg"], sb["exp_avg"])
    assert a["sched_G"] == b["sched_G"] and a["config"]["NOISE"]["NGF"] == 4


def test_trainer_names_missing_folders(pairs, tmp_path):
    with pytest.raises(FileNotFoundError, match="NOISE.BLUR_DIR"):
        train_noise.main(noise_args(pairs, tmp_path, "x", f"NOISE.BLUR_DIR={tmp_path / 'no'}"))
    with pytest.raises(FileNotFoundError, match="ENHANCE.ENHANCED_DIR"):
        train_noise.main(noise_args(pairs, tmp_path, "x",
                                    f"ENHANCE.ENHANCED_DIR={tmp_path / 'no'}"))
