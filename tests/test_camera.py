"""The low-light camera model (data/camera.py): exactness of each stage, noise statistics,
determinism, errors, and the DAI-Net preset against a literal port of its Dark ISP."""
import math

import numpy as np
import pytest
import torch

from data import camera
from data.camera import CameraError, darken

# exposure 1, no noise, no quantisation, no black crush, colour cast or mosaic, gains that the
# forward path undoes
NOISELESS = dict(exposure=1.0, system_gain=0.0, read_noise=0.0, row_noise=0.0, bits=0.0,
                 black_level_error=0.0, digital_gain=1.0, rgb_gain=1.0, safe_invert=0.0,
                 clip_linear=0.0, clip_raw=0.0, black_offset=0.0, awb=0.0, light_red=1.0,
                 light_blue=1.0, mosaic=0.0)


def _images(b=2, h=24, w=20, seed=0, dtype=torch.float32):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _params(preset="darkface", n=1, seed=0, **overrides):
    table = camera.resolve(preset, overrides)
    gens = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    return camera.stack_params([camera.draw_params(table, g) for g in gens]), gens


@pytest.mark.parametrize("preset", ["darkface", "eld"])
def test_noiseless_round_trip_returns_the_input(preset):
    x = _images(3)
    y = darken(x, preset, overrides=dict(NOISELESS, quantize_output=0.0), seeds=[1, 2, 3])
    assert (y - x).abs().max() < 1e-5
    # with the 8-bit output, images on 8-bit levels come back exactly
    x8 = torch.round(x * 255) / 255
    assert torch.equal(darken(x8, preset, overrides=NOISELESS, seeds=[1, 2, 3]), x8)


def test_round_trip_with_mosaic_is_exact_on_flat_colours():
    x = torch.ones(1, 3, 12, 14) * torch.tensor([0.2, 0.5, 0.7]).view(1, 3, 1, 1)
    y = darken(x, "darkface", overrides=dict(NOISELESS, mosaic=1.0, quantize_output=0.0),
               seeds=[4])
    assert (y - x).abs().max() < 1e-5


def test_darkening_is_darker_and_on_8bit_levels():
    x = _images(2)
    for preset in ("dainet", "darkface"):
        y = darken(x, preset, seeds=[0, 1])
        assert y.shape == x.shape and y.dtype == x.dtype
        assert torch.equal(torch.round(y * 255) / 255, y)
        assert y.mean() < 0.5 * x.mean()


@pytest.mark.parametrize("shot_dist,read_dist", [("poisson", "gaussian"), ("gaussian", "gaussian"),
                                                 ("poisson", "tukey")])
def test_noise_variance_on_flat_patches_is_shot_times_x_plus_read(shot_dist, read_dist):
    """In the linear raw domain (full scale 1): var = (K / W) * x + (sigma_read / W)^2."""
    k, sigma, white, lam = 2.0, 3.0, 1000.0, -0.1
    p, gens = _params(exposure=1.0, white_level=white, system_gain=k, read_noise=sigma,
                      row_noise=0.0, bits=0.0, clip_raw=0.0, black_level_error=0.0,
                      black_offset=0.0,
                      shot_dist=shot_dist, read_dist=read_dist, tukey_lambda=lam)
    levels = torch.tensor([0.01, 0.05, 0.2, 0.6])
    flat = levels.view(1, 4, 1, 1).expand(1, 4, 200, 200).contiguous()
    out = camera.sensor(flat, p, gens)[0]
    if read_dist == "gaussian":
        read_var = sigma ** 2
    else:                       # variance of the Tukey-lambda distribution with scale sigma
        tail = math.gamma(lam + 1) ** 2 / math.gamma(2 * lam + 2)
        read_var = sigma ** 2 * 2 / lam ** 2 * (1 / (1 + 2 * lam) - tail)
    expected = (k / white) * levels + read_var / white ** 2
    measured = out.reshape(4, -1).var(1)
    assert torch.allclose(measured, expected, rtol=0.05), (measured, expected)
    assert torch.allclose(out.reshape(4, -1).mean(1), levels, rtol=0.01, atol=2e-4)


def test_row_noise_is_one_offset_per_row():
    p, gens = _params(exposure=1.0, white_level=100.0, system_gain=0.0, read_noise=0.0,
                      row_noise=2.0, bits=0.0, clip_raw=0.0, black_level_error=0.0,
                      black_offset=0.0)
    out = camera.sensor(torch.full((1, 3, 400, 50), 0.5), p, gens)[0]
    assert torch.allclose(out, out[:, :, :1].expand_as(out))          # constant along a row
    assert torch.allclose(out[0], out[1]) and torch.allclose(out[0], out[2])
    assert abs(out[0, :, 0].std().item() - 0.02) < 0.003               # 2 DN of 100


@pytest.mark.parametrize("bits", [4, 8])
def test_quantisation_gives_2_to_the_bits_levels(bits):
    p, gens = _params(exposure=1.0, system_gain=0.0, read_noise=0.0, row_noise=0.0,
                      black_level_error=0.0, black_offset=0.0, bits=float(bits))
    ramp = torch.linspace(-0.1, 1.1, 5000).view(1, 1, 1, -1).expand(1, 3, 1, 5000)
    out = camera.sensor(ramp.contiguous(), p, gens)
    values = torch.unique(out)
    assert len(values) == 2 ** bits
    assert torch.allclose(values, torch.linspace(0, 1, 2 ** bits))


def test_seeds_reproduce_and_differ():
    x = _images(2)
    a = darken(x, "darkface", seeds=[5, 6])
    assert torch.equal(a, darken(x, "darkface", seeds=[5, 6]))
    assert not torch.equal(a, darken(x, "darkface", seeds=[5, 7]))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(darken(x, "eld", generator=g1), darken(x, "eld", generator=g2))


@pytest.mark.parametrize("preset", ["dainet", "darkface", "eld"])
def test_batched_equals_one_image_at_a_time(preset):
    x = _images(3)
    batched = darken(x, preset, seeds=[10, 11, 12], overrides={"mosaic": 1.0})
    for i, seed in enumerate((10, 11, 12)):
        assert torch.equal(batched[i], darken(x[i], preset, seeds=[seed],
                                              overrides={"mosaic": 1.0}))


def test_darken_uint8_is_bgr_in_bgr_out():
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (16, 18, 3), dtype=np.uint8)
    out = camera.darken_uint8(bgr, "darkface", seed=3)
    assert out.dtype == np.uint8 and out.shape == bgr.shape
    rgb = torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1).float() / 255
    ref = darken(rgb, "darkface", seeds=[3])
    assert np.array_equal(out, np.round(ref.permute(1, 2, 0).numpy()[:, :, ::-1] * 255))
    noiseless = camera.darken_uint8(bgr, "eld", seed=0, overrides=NOISELESS)
    assert np.array_equal(noiseless, bgr)


def test_bad_names_and_values_raise_naming_them():
    x = _images(1)
    with pytest.raises(CameraError, match="'nightvision'"):
        darken(x, "nightvision")
    with pytest.raises(CameraError, match="'exposur'"):
        darken(x, overrides={"exposur": 0.1})
    with pytest.raises(CameraError, match="'bits'"):
        darken(x, overrides={"bits": 3.5})
    with pytest.raises(CameraError, match="'read_dist'"):
        darken(x, overrides={"read_dist": "cauchy"})
    with pytest.raises(CameraError, match="'exposure'"):
        darken(x, overrides={"exposure": ("loguniform", 0.0, 0.1)})
    with pytest.raises(CameraError, match="'mosaic'"):
        darken(x, overrides={"mosaic": (0.0, 1.0)})


def test_config_section_gives_preset_and_overrides():
    from data.config import load_config
    cfg = load_config(overrides=["CAMERA.PRESET=eld", "CAMERA.exposure=[0.01, 0.02]",
                                 "CAMERA.bits=[10]", "CAMERA.read_dist=gaussian"])
    preset, overrides = camera.overrides_from_config(cfg.CAMERA)
    assert preset == "eld"
    assert overrides == {"exposure": (0.01, 0.02), "bits": (10,), "read_dist": "gaussian"}
    table = camera.resolve(preset, overrides)
    assert table["exposure"] == ("invuniform", 0.01, 0.02) and table["bits"] == 10.0
    cfg.CAMERA.PRESET = "nope"
    with pytest.raises(CameraError, match="CAMERA.*'nope'"):
        camera.overrides_from_config(cfg.CAMERA)


def test_samplers_follow_their_distributions():
    scipy_stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    spec = ("truncnormal", 0.1, 0.08, 0.01, 0.1)
    draws = np.array([camera._draw_one(spec, g, {}) for _ in range(3000)])
    ref = scipy_stats.truncnorm((0.01 - 0.1) / 0.08, 0.0, loc=0.1, scale=0.08)
    assert scipy_stats.kstest(draws, ref.cdf).pvalue > 0.001
    line = ("loglinear", "system_gain", 1.09, 0.60, 0.13)
    logs = np.log([camera._draw_one(line, g, {"system_gain": 1e-3}) for _ in range(3000)])
    assert abs(logs.mean() - (1.09 * np.log(1e-3) + 0.60)) < 0.01
    assert abs(logs.std() - 0.13) < 0.01


def test_dainet_preset_matches_a_port_of_the_original_under_the_same_draws():
    """Same parameters and noise draws: our pipeline equals DAI-Net's Dark ISP (float output)."""
    from tests.dainet_port import dark_isp
    x = _images(1, 20, 16)[0]
    table = camera.resolve("dainet")
    for seed in (0, 1, 2):
        g = torch.Generator().manual_seed(seed)
        d = camera.draw_params(table, g)
        normal = torch.randn((3, 20, 16), generator=g)          # the order our sensor draws in
        uniform3 = torch.rand(3, generator=g)
        index = [i for i in range(4) if torch.allclose(
            _rgb2cam(camera.XYZ2CAMS[i]), d["rgb2cam"])][0]
        bits = 1.0 / (255 * d["black_level_error"])
        ref = dark_isp(x, camera.XYZ2CAMS[index].tolist(), d["gamma"], d["rgb_gain"],
                       d["red_gain"], d["blue_gain"], d["exposure"], d["system_gain"],
                       d["read_noise"] ** 2, normal, uniform3, bits)
        ours = darken(x, "dainet", seeds=[seed], overrides={"quantize_output": 0.0})
        assert round(bits) in (12, 14, 16)
        assert (ours.double() - ref).abs().max() < 1e-5


def _rgb2cam(xyz2cam):
    m = xyz2cam @ camera.RGB2XYZ
    return m / m.sum(-1, keepdim=True)


def test_presets_on_real_photos(shared_data):
    """darkface: the DARK FACE statistics (pooled over the dlib photos); dainet: mean luma about
    35, as the original's images."""
    import cv2
    paths = sorted((shared_data / "dlib_faces").glob("*.jpg"))
    assert len(paths) == 9
    lumas, flats, dainet = [], [], []
    for i, path in enumerate(paths):
        bgr = cv2.imread(str(path))
        dark = camera.darken_uint8(bgr, "darkface", seed=i)
        lumas.append(camera.luma(dark).ravel())
        flats.append(camera.flat_patch_noise(dark, bgr))
        if i < 3:
            dainet.append(camera.luma(camera.darken_uint8(bgr, "dainet", seed=i)).mean())
    y, flat, t = np.concatenate(lumas), np.concatenate(flats), camera.DARKFACE_TARGETS
    assert t["mean_luma"][0] <= y.mean() <= t["mean_luma"][1]
    assert t["zeros"][0] <= (y == 0).mean() <= t["zeros"][1]
    assert t["p99"][0] <= np.percentile(y, 99) <= t["p99"][1]
    assert len(flat) >= 100 and t["flat_std"][0] <= flat.mean() <= t["flat_std"][1]
    assert 25 <= np.mean(dainet) <= 45


def test_bayer_unprocess_equals_mosaic_of_the_full_image():
    x = _images(2, 14, 10)
    x[0, :, :4] = 1.0                                         # highlights: safe inversion on
    p, _ = _params(n=2)
    full = camera.unprocess(x, p)
    assert torch.allclose(camera.unprocess(x, p, bayer=True), camera.mosaic(full), atol=1e-6)
    levels = torch.round(x * 255).to(torch.uint8)
    x8 = levels.float() / 255
    assert torch.allclose(camera.unprocess(x8, p, levels), camera.unprocess(x8, p), atol=1e-6)


def test_darken_tool_on_a_folder_and_its_errors(tmp_path, capsys):
    import cv2
    from tools import darken as tool
    src = tmp_path / "day"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in ("a.png", "sub/b.jpg"):
        cv2.imwrite(str(src / name), rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    assert tool.main(["--preset", "darkface", "--seed", "5", "--set", "exposure=0.1", str(src),
                      str(tmp_path / "night")]) == 0
    for k, (name, out) in enumerate((("a.png", "a.png"), ("sub/b.jpg", "sub/b.png"))):
        day, night = cv2.imread(str(src / name)), cv2.imread(str(tmp_path / "night" / out))
        assert np.array_equal(night, camera.darken_uint8(day, "darkface", seed=5 + k,  # sorted
                                                         overrides={"exposure": 0.1}))
    with pytest.raises(SystemExit):
        tool.main(["--set", "exposur=0.1", str(src), str(tmp_path / "x")])
    assert "'exposur'" in capsys.readouterr().err
    (src / "broken.png").write_bytes(b"not an image")
    with pytest.raises(SystemExit):
        tool.main([str(src / "broken.png"), str(tmp_path / "x.png")])
    assert "broken.png" in capsys.readouterr().err


def test_eight_bit_inputs_take_the_table_with_the_same_result():
    levels = torch.randint(0, 256, (2, 3, 12, 10), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(2))
    x = levels.float() / 255.0
    assert torch.equal(camera._eight_bit_levels(x), levels)
    assert camera._eight_bit_levels(x + 1e-4) is None
    out8 = darken(levels, "darkface", seeds=[1, 2])
    assert out8.dtype == torch.uint8
    assert torch.equal(out8, torch.round(darken(x, "darkface", seeds=[1, 2]) * 255).byte())
