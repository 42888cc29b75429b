"""Night mode (lowlevel/enhancers.py): the auto rule on synthetic bright, dark and noisy images,
every registered enhancer's contract, the E(L) flag error, and FaceDetector(enhance=...)."""
import argparse

import numpy as np
import pytest
import torch

from lowlevel import enhancers as E


def _scene(h=96, w=128, seed=0) -> np.ndarray:
    """A smooth, textured daylight-like BGR scene (mean luma ~ 120)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 120 + 60 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    img = np.stack([base * 0.9, base, base * 1.1], -1) + rng.normal(0, 1.0, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _dark(img: np.ndarray, gain: float, noise: float, seed=1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = img.astype(np.float64) * gain + rng.normal(0, noise, img.shape)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _mean_luma(img):
    return float(E.luma(img).mean())


def test_auto_returns_bright_images_unchanged():
    auto = E.build_enhancer("auto")
    for seed in range(3):
        img = _scene(seed=seed)
        before = img.copy()
        out = auto(img)
        assert out is img and np.array_equal(out, before)     # the same array, not a copy
        assert E.decide(img).passthrough
    rng = np.random.default_rng(5)
    noisy_bright = rng.integers(60, 256, (64, 80, 3), dtype=np.uint8)    # noisy but bright
    assert auto(noisy_bright) is noisy_bright


def test_auto_brightens_dark_images():
    auto = E.build_enhancer("auto")
    dark = _dark(_scene(), 0.08, 0.0)
    out = auto(dark)
    assert _mean_luma(dark) < 15
    assert _mean_luma(out) > 1.5 * _mean_luma(dark)
    assert not E.decide(dark).passthrough


def test_auto_denoises_dark_noisy_images():
    auto = E.build_enhancer("auto")
    noisy = _dark(_scene(), 0.08, 5.0)                 # luma noise ~ 3.4
    assert E.decide(noisy).blur > 0
    out = auto(noisy)
    # the noise left after auto is below that of the same brightening without denoising
    bright = E.clahe_bgr(noisy, E.AutoRule().dim_clahe_clip, E.AutoRule().clahe_grid)
    assert E.estimate_noise(E.luma(out)) < 0.7 * E.estimate_noise(E.luma(bright))
    assert _mean_luma(out) > 1.5 * _mean_luma(noisy)


def test_auto_keeps_a_dim_clean_photo_and_treats_a_dim_noisy_one():
    dim = _dark(_scene(), 0.35, 0.0)                    # mean ~ 40, clean
    assert 25 < _mean_luma(dim) < 60
    assert E.build_enhancer("auto")(dim) is dim
    noisy = _dark(_scene(), 0.35, 6.0)
    assert not E.decide(noisy).passthrough and E.decide(noisy).blur > 0


def test_noise_estimate_follows_the_added_noise():
    flat = np.full((128, 128), 100, np.uint8)
    rng = np.random.default_rng(0)
    assert E.estimate_noise(flat) == 0.0
    for sigma in (2.0, 5.0, 10.0):
        noisy = np.clip(100 + rng.normal(0, sigma, flat.shape), 0, 255).round().astype(np.uint8)
        assert E.estimate_noise(noisy) == pytest.approx(0.75 * sigma, rel=0.15)


@pytest.mark.parametrize("name", [n for n in E.ENHANCE_CHOICES if n != "el"])
def test_every_choice_keeps_shape_and_dtype(name):
    fn = E.build_enhancer(name)
    for img in (_scene(48, 64), _dark(_scene(48, 64), 0.05, 2.0)):
        out = fn(img)
        assert out.shape == img.shape and out.dtype == np.uint8
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        fn(np.zeros((8, 8), np.uint8))


def test_el_needs_weights_and_runs_with_them(tmp_path):
    with pytest.raises(ValueError, match="--el-weights"):
        E.build_enhancer("el")
    from lowlevel.enhancement import EnhanceNet
    torch.manual_seed(0)
    torch.save(EnhanceNet().state_dict(), tmp_path / "el.pth")
    out = E.build_enhancer("el", tmp_path / "el.pth")(_dark(_scene(32, 40), 0.1, 1.0))
    assert out.shape == (32, 40, 3) and out.dtype == np.uint8


def test_unknown_name_and_the_shared_flags():
    with pytest.raises(ValueError, match="not one of"):
        E.build_enhancer("sharpen")
    p = argparse.ArgumentParser()
    E.add_enhance_argument(p, const="el", el_aliases=("--enhancer",))
    assert p.parse_args([]).enhance == "none"
    assert p.parse_args(["--enhance"]).enhance == "el"
    args = p.parse_args(["--enhance", "auto", "--enhancer", "w.pth"])
    assert (args.enhance, args.el_weights) == ("auto", "w.pth")
    with pytest.raises(SystemExit):
        p.parse_args(["--enhance", "sharpen"])


def test_face_detector_with_enhance():
    from data.config import load_config
    from models.inference import FaceDetector
    from models.yunet.net import YuNet
    cfg = load_config(overrides=["MODEL.NAME='yunet_n'"])
    torch.manual_seed(0)
    net = YuNet("yunet_n").eval()
    seen = []

    def spy(bgr):
        seen.append(bgr.copy())
        return E.build_enhancer("auto")(bgr)

    rgb = _dark(_scene(64, 96), 0.08, 2.0)[None]
    plain = FaceDetector.from_config(net, cfg, torch.device("cpu"))
    night = FaceDetector.from_config(net, cfg, torch.device("cpu"), enhance=spy)
    a, b = plain(rgb), night(rgb)
    assert len(seen) == 1 and np.array_equal(seen[0], rgb[0][..., ::-1])    # BGR in
    bright = E.build_enhancer("auto")(np.ascontiguousarray(rgb[0][..., ::-1]))[..., ::-1]
    torch.testing.assert_close(b[0], plain(np.ascontiguousarray(bright)[None])[0])
    assert a[0].shape[1] == b[0].shape[1]
    ident = FaceDetector.from_config(net, cfg, torch.device("cpu"),
                                     enhance=E.build_enhancer("none"))
    torch.testing.assert_close(ident(rgb)[0], a[0])


def test_gamma_table_in_front_of_an_onnx_graph(tmp_path):
    """lowlevel/onnx_enhance.py: the graph sees the gamma-corrected pixels, normalised again."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper
    from lowlevel.onnx_enhance import prepend_enhancer
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, None, None])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, None, None])
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["out"])], "g", [x], [y])
    path = tmp_path / "id.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), str(path))
    mean, std = (123.0, 117.0, 104.0), (1.0, 2.0, 1.0)
    prepend_enhancer(path, "gamma", mean, std)
    rgb = _dark(_scene(16, 24), 0.2, 3.0)
    m, s = np.array(mean).reshape(3, 1, 1), np.array(std).reshape(3, 1, 1)
    inp = ((rgb.transpose(2, 0, 1) - m) / s)[None].astype(np.float32)
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"image": inp})[0]
    want = ((E.build_enhancer("gamma")(rgb).transpose(2, 0, 1) - m) / s)[None]
    np.testing.assert_allclose(out, want, atol=1e-4)
    with pytest.raises(ValueError, match="cannot be written"):
        prepend_enhancer(path, "auto", mean, std)


def test_auto_rule_is_config_keys_whose_defaults_are_the_rule():
    """NIGHT.* holds every threshold of ``auto``; the defaults equal AutoRule's, and a changed
    key reaches the rule (a bright pass-through threshold above 255 makes auto enhance)."""
    from data.config import load_config
    cfg = load_config(None, [])
    assert E.rule_from_config(cfg.NIGHT) == E.AutoRule()
    cfg = load_config(None, ["NIGHT.pass_mean=300.0", "NIGHT.clean_mean=300.0",
                             "NIGHT.clahe_grid=4"])
    rule = E.rule_from_config(cfg.NIGHT)
    assert rule.pass_mean == 300.0 and rule.clahe_grid == 4 and isinstance(rule.clahe_grid, int)
    bright = np.full((32, 32, 3), 180, np.uint8)
    bright[8:24, 8:24] = 60
    assert E.build_enhancer("auto")(bright) is bright
    assert not np.array_equal(E.build_enhancer("auto", rule=rule)(bright), bright)
