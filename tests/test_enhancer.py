"""E(L): losses on hand-made cases, the reference key table, curves, uint8 quantisation, tiling,
the apply tool (round trip, resume, corrupt input) and the trainer (outputs, exact resume)."""
import json
import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image

from lowlevel.losses import (EnhanceLoss, color_constancy_map, exposure_loss,
                             spatial_consistency_map, tv_loss)
from lowlevel.enhancement import (RECEPTIVE_RADIUS, EnhanceNet, _enhance_tiled, enhance_uint8,
                                  load_enhancer, quantize, to_unit)
from tools import enhance_images, train_enhancer
from utils.checkpoint import load_file

# The 14 tensors of the released Illumination-Enhancer.pth, written out independently of the
# model code.
REFERENCE_KEYS = {
    "e_conv1.weight": (64, 3, 3, 3), "e_conv1.bias": (64,),
    "e_conv2.weight": (64, 64, 3, 3), "e_conv2.bias": (64,),
    "e_conv3.weight": (64, 64, 3, 3), "e_conv3.bias": (64,),
    "e_conv4.weight": (64, 64, 3, 3), "e_conv4.bias": (64,),
    "e_conv5.weight": (64, 64, 3, 3), "e_conv5.bias": (64,),
    "e_conv6.weight": (64, 64, 3, 3), "e_conv6.bias": (64,),
    "e_conv7.weight": (48, 64, 3, 3), "e_conv7.bias": (48,),
}


def random_net(seed=0) -> EnhanceNet:
    torch.manual_seed(seed)
    net = EnhanceNet()
    with torch.no_grad():                   # lively maps, so tiling errors would show
        for p in net.parameters():
            p.mul_(3.0)
    return net.eval()


# ---------------------------------------------------------------------------------- losses


def test_exposure_loss_is_zero_at_the_target_level_and_squared_gap_elsewhere():
    assert exposure_loss(torch.full((2, 3, 32, 48), 0.55)).item() == pytest.approx(0, abs=1e-10)
    assert exposure_loss(torch.full((1, 3, 32, 32), 0.3)).item() == pytest.approx(0.0625)
    x = torch.zeros(1, 3, 32, 32)
    x[:, :, :16, :16] = 0.55                   # one of four 16x16 regions at the target
    assert exposure_loss(x).item() == pytest.approx(3 / 4 * 0.55 ** 2)


def test_tv_loss_is_zero_for_constant_maps_and_matches_a_ramp():
    assert tv_loss(torch.full((2, 48, 9, 11), 0.7)).item() == 0.0
    rows = torch.arange(6.0).view(1, 1, 6, 1).expand(1, 48, 6, 5)   # +1 per row
    # 48 channels x (5 x 5) unit steps / ((6 - 1) * 5) = 48, times 2, batch 1
    assert tv_loss(rows).item() == pytest.approx(96.0)
    assert tv_loss(torch.cat([rows, rows])).item() == pytest.approx(96.0)   # / batch


def test_color_loss_zero_for_grey_with_finite_gradient_and_sqrt2_for_red():
    grey = torch.full((2, 3, 8, 8), 0.4, requires_grad=True)
    k = color_constancy_map(grey)
    assert k.shape == (2, 1, 1, 1) and k.abs().max().item() == 0.0
    k.mean().backward()
    assert torch.isfinite(grey.grad).all()
    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 1.0                           # D_rg = D_rb = 1, D_gb = 0
    assert color_constancy_map(red).item() == pytest.approx(math.sqrt(2))


def test_spatial_loss_zero_for_identical_images_and_two_for_a_lifted_blank():
    x = torch.rand(2, 3, 16, 20)
    assert spatial_consistency_map(x, x.clone()).abs().max().item() == 0.0
    # pooled 2x2 of zeros vs ones: with zero padding every cell has exactly one non-zero
    # horizontal and one non-zero vertical neighbour difference (value 1)
    e = spatial_consistency_map(torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8))
    assert e.shape == (1, 1, 2, 2) and torch.allclose(e, torch.full_like(e, 2.0))


def test_enhance_loss_dict_carries_the_reference_weights():
    torch.manual_seed(0)
    x, y, maps = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32), torch.rand(2, 48, 32, 32)
    terms = EnhanceLoss()(x, y, maps)
    assert set(terms) == {"tv", "spa", "col", "exp"}
    assert terms["tv"].item() == pytest.approx(200 * tv_loss(maps).item())
    assert terms["spa"].item() == pytest.approx(spatial_consistency_map(y, x).mean().item())
    assert terms["col"].item() == pytest.approx(5 * color_constancy_map(y).mean().item())
    assert terms["exp"].item() == pytest.approx(10 * ((F_pool16(y) - 0.55) ** 2).mean().item())


def F_pool16(y):
    return torch.nn.functional.avg_pool2d(y.mean(1, keepdim=True), 16)


# ---------------------------------------------------------------------------- network


def test_state_dict_matches_the_reference_key_table():
    state = EnhanceNet().state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == REFERENCE_KEYS
    assert sum(v.numel() for v in state.values()) == 214_128


def test_reference_format_files_load_strictly(tmp_path):
    torch.manual_seed(3)
    ref = {k: torch.randn(shape) for k, shape in REFERENCE_KEYS.items()}
    torch.save(ref, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    torch.save({f"module.{k}": v for k, v in ref.items()}, tmp_path / "dp.pth")
    torch.save({"model": ref, "step": 1}, tmp_path / "ours.pth")
    for name in ("legacy.pth", "dp.pth", "ours.pth"):
        net = load_enhancer(tmp_path / name)
        assert all(torch.equal(net.state_dict()[k], v) for k, v in ref.items())
        assert not net.training
    bad = dict(ref)
    bad.pop("e_conv7.bias")
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(RuntimeError, match="e_conv7.bias"):
        load_enhancer(tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError, match="ENHANCE.WEIGHTS"):
        load_enhancer(tmp_path / "nope.pth")


def test_constant_maps_apply_sixteen_quadratic_curves():
    net = EnhanceNet()
    a = -0.6                                 # negative maps brighten
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.e_conv7.bias.fill_(math.atanh(a))   # every map A_n = a everywhere
    x = torch.tensor([0.02, 0.1, 0.5]).view(1, 3, 1, 1).expand(1, 3, 4, 4).contiguous()
    y, maps = net(x)
    assert maps.shape == (1, 48, 4, 4) and torch.allclose(maps, torch.full_like(maps, a))
    expected = np.array([0.02, 0.1, 0.5], dtype=np.float64)
    for _ in range(16):
        expected = expected + a * (expected ** 2 - expected)
    assert np.allclose(y[0, :, 0, 0].detach().numpy(), expected, atol=1e-6)
    assert (expected > [0.02, 0.1, 0.5]).all()


def test_receptive_field_is_seven_pixels():
    net = random_net()
    x = torch.rand(1, 3, 31, 31, requires_grad=True)
    y, _ = net(x)
    y[0, :, 15, 15].sum().backward()
    rows, cols = torch.nonzero(x.grad.abs().sum(1)[0], as_tuple=True)
    assert (rows.min().item(), rows.max().item()) == (15 - RECEPTIVE_RADIUS, 15 + RECEPTIVE_RADIUS)
    assert (cols.min().item(), cols.max().item()) == (15 - RECEPTIVE_RADIUS, 15 + RECEPTIVE_RADIUS)


# ------------------------------------------------------------------------- quantisation


def test_quantize_matches_torchvision_save_image(tmp_path):
    from torchvision.utils import save_image
    values = torch.tensor([-0.3, 0.0, 0.5 / 255, 0.5 / 255 - 1e-6, 0.2, 0.999, 1.0, 1.4])
    y = values.view(1, 1, 1, -1).expand(1, 3, 2, -1).contiguous()
    y[:, 1] = torch.rand(1, 2, values.numel())
    save_image(y[0], tmp_path / "tv.png")
    assert np.array_equal(quantize(y)[0].numpy(), np.array(Image.open(tmp_path / "tv.png")))
    # x*255 + 0.5 truncated: 0.5/255 rounds up to 1, a hair below stays 0; no negative wrap
    assert quantize(values.view(1, 1, 1, -1).expand(1, 3, 1, -1))[0, 0, :, 0].tolist() == \
        [0, 0, 1, 0, 51, 255, 255, 255]


def test_enhance_uint8_single_batch_numpy_and_tensor_agree():
    net = random_net()
    rgb = np.random.default_rng(0).integers(0, 256, (2, 20, 24, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = quantize(net(to_unit(torch.from_numpy(rgb)))[0]).numpy()
    batch = enhance_uint8(net, rgb)
    assert batch.dtype == np.uint8 and batch.shape == rgb.shape
    assert np.array_equal(batch, expected)
    assert np.array_equal(enhance_uint8(net, rgb[1]), expected[1])
    out_t = enhance_uint8(net, torch.from_numpy(rgb))
    assert isinstance(out_t, torch.Tensor) and np.array_equal(out_t.numpy(), expected)
    with pytest.raises(ValueError, match="uint8"):
        enhance_uint8(net, rgb.astype(np.float32))


def test_tiles_reproduce_the_whole_image_and_a_short_margin_does_not():
    net = random_net()
    x = to_unit(torch.from_numpy(
        np.random.default_rng(1).integers(0, 256, (2, 45, 70, 3), dtype=np.uint8)))
    with torch.no_grad():
        whole = net(x)[0]
        tiled = _enhance_tiled(net, x, tile=16, margin=RECEPTIVE_RADIUS + 1)
        short = _enhance_tiled(net, x, tile=16, margin=3)
    assert torch.allclose(tiled, whole, atol=1e-6, rtol=0)
    assert (short - whole).abs().max().item() > 1e-3
    rgb = (x.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(enhance_uint8(net, rgb, tile=16, margin=8), enhance_uint8(net, rgb))
    with pytest.raises(ValueError, match="receptive"):
        enhance_uint8(net, rgb, tile=16, margin=RECEPTIVE_RADIUS - 1)


# --------------------------------------------------------------------------- apply tool


def write_images(folder, sizes, seed=0, dark=True):
    rng = np.random.default_rng(seed)
    paths = []
    for name, (h, w) in sizes.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        hi = 60 if dark else 256
        Image.fromarray(rng.integers(0, hi, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_apply_round_trip_resume_and_corrupt_input(tmp_path, caplog):
    src = tmp_path / "DarkFace" / "images" / "train"
    write_images(src, {"1.png": (30, 40), "2.png": (30, 40), "sub/3.jpg": (25, 33)})
    (src / "bad.png").write_bytes(b"not a png at all")
    torch.manual_seed(0)
    torch.save(EnhanceNet().state_dict(), tmp_path / "el.pth")
    args = ["--weights", str(tmp_path / "el.pth"), "--input", str(src), "--workers", "0"]
    with caplog.at_level(logging.WARNING):
        assert enhance_images.main(args + ["--batch-size", "2"]) == 0
    out = tmp_path / "DarkFace" / "images_enhanced" / "train"        # images -> images_enhanced
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == \
        ["1.png", "2.png", "sub/3.png"]
    assert "bad.png" in caplog.text
    net = load_enhancer(tmp_path / "el.pth")
    for name in ("1.png", "sub/3.jpg"):
        rgb = np.array(Image.open(src / name).convert("RGB"))
        saved = np.array(Image.open((out / name).with_suffix(".png")))
        assert np.array_equal(saved, enhance_uint8(net, rgb))     # lossless, full resolution

    # a rerun skips what exists (even a file we altered) and cleans a stale temporary file
    marker = np.zeros((30, 40, 3), np.uint8)
    Image.fromarray(marker).save(out / "1.png")
    (out / ".2.png.x.tmp").write_bytes(b"partial")
    (out / "2.png").unlink()
    assert enhance_images.main(args + ["--tile", "16"]) == 0
    assert np.array_equal(np.array(Image.open(out / "1.png")), marker)
    rgb2 = np.array(Image.open(src / "2.png"))
    assert np.array_equal(np.array(Image.open(out / "2.png")), enhance_uint8(net, rgb2))
    assert not list(out.glob(".*.tmp"))


def test_apply_errors_name_the_config_key_or_option(tmp_path):
    with pytest.raises(FileNotFoundError, match="ENHANCE.DARK_DIR"):
        enhance_images.main([f"ENHANCE.DARK_DIR={tmp_path / 'none'}"])
    write_images(tmp_path / "in", {"a.png": (8, 8)})
    with pytest.raises(ValueError, match="--output"):
        enhance_images.main(["--input", str(tmp_path / "in")])
    with pytest.raises(FileNotFoundError, match="ENHANCE.WEIGHTS"):
        enhance_images.main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"),
                             "--workers", "0", f"ENHANCE.WEIGHTS={tmp_path / 'nope.pth'}"])


# ----------------------------------------------------------------------------- trainer


def trainer_args(data, out, name, *extra):
    return ["ENHANCE.TRAIN_DIR=" + str(data), "ENHANCE.SIZE=32", "ENHANCE.BATCH_SIZE=2",
            "ENHANCE.EPOCHS=2", f"RUN.OUTPUT_DIR={out}", f"RUN.NAME={name}",
            "RUN.NUM_WORKERS=0", "RUN.TENSORBOARD=False", "RUN.LOG_EVERY=1", *extra]


@pytest.fixture(scope="module")
def train_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zero_dce")
    write_images(folder, {f"{i}.jpg": (40 + 3 * i, 36) for i in range(5)}, seed=2)
    return folder


def test_trainer_writes_run_folder_and_reference_format_weights(train_images, tmp_path):
    assert train_enhancer.main(trainer_args(train_images, tmp_path, "run")) == 0
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("ckpt_*.pth")) == ["ckpt_3.pth", "ckpt_6.pth"]
    ckpt = load_file(run / "ckpt_3.pth")
    assert (ckpt["step"], ckpt["epoch"], ckpt["epoch_step"]) == (3, 1, 0)
    assert ckpt["config"]["ENHANCE"]["SIZE"] == 32
    assert ckpt["scheduler"]["last_epoch"] == 1
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 7))
    assert {"loss", "tv", "spa", "col", "exp", "lr"} <= set(records[0])
    assert records[0]["lr"] == pytest.approx(2e-4) and records[3]["lr"] == pytest.approx(1.9e-4)
    final = load_file(run / "enhancer_final.pth")
    assert {k: tuple(v.shape) for k, v in final.items()} == REFERENCE_KEYS
    assert (run / "config.yaml").is_file() and (run / "log.txt").is_file()


def test_trainer_resumes_mid_epoch_exactly(train_images, tmp_path):
    assert train_enhancer.main(trainer_args(train_images, tmp_path, "straight")) == 0
    assert train_enhancer.main(["--max-steps", "4"]
                               + trainer_args(train_images, tmp_path, "resumed")) == 0
    resumed = tmp_path / "resumed"
    assert load_file(resumed / "ckpt_4.pth")["epoch_step"] == 1
    assert train_enhancer.main(["--resume", "auto"]
                               + trainer_args(train_images, tmp_path, "resumed")) == 0
    a, b = load_file(tmp_path / "straight" / "ckpt_6.pth"), load_file(resumed / "ckpt_6.pth")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"],
                                                                         sb["exp_avg_sq"])
    assert a["scheduler"] == b["scheduler"]


def test_trainer_names_the_missing_folder_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="ENHANCE.TRAIN_DIR"):
        train_enhancer.main(trainer_args(tmp_path / "none", tmp_path, "x"))
