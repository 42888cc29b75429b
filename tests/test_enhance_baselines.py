"""Enhance-then-detect baselines: gamma and CLAHE against direct formulas / cv2, LIME's solver
and behaviour, and the apply tool with a baseline."""
import cv2
import numpy as np
import pytest
from PIL import Image

from lowlevel.classic import (clahe, gamma_correct, lime, lime_weights,
                              refine_illumination)
from tools import enhance_images


def smooth_image(h, w, level, seed=0):
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 3)
    img = (img - img.min()) / (img.max() - img.min())
    return np.clip(level[0] + (level[1] - level[0]) * img, 0, 255).astype(np.uint8)


def test_gamma_matches_the_formula():
    rgb = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    out = gamma_correct(rgb, 2.2)
    expected = np.round(255 * (rgb / 255.0) ** (1 / 2.2)).astype(np.uint8)
    assert np.array_equal(out, expected)
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255 and (out >= rgb).all()
    assert np.array_equal(gamma_correct(rgb, 1.0), rgb)
    with pytest.raises(ValueError):
        gamma_correct(rgb.astype(np.float32))


def test_clahe_matches_cv2_on_the_lightness_channel():
    rgb = smooth_image(64, 80, (5, 70))
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
    lab[..., 0] = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(4, 4)).apply(lab[..., 0].copy())
    assert np.array_equal(clahe(rgb, 3.0, 4), cv2.cvtColor(lab, cv2.COLOR_LAB2RGB))
    assert clahe(rgb).mean() > rgb.mean()


def test_lime_refinement_solves_its_energy_minimum():
    t0 = smooth_image(23, 31, (10, 200), seed=1)[..., 0].astype(np.float64) / 255
    alpha = 0.15
    t = refine_illumination(t0, alpha=alpha)
    wx, wy = lime_weights(t0.astype(np.float32))
    # gradient of |t - t0|^2 + alpha sum w (D t)^2, halved, written with array differences
    grad = t - t0
    fx = alpha * wx * (t[:, 1:] - t[:, :-1])
    fy = alpha * wy * (t[1:, :] - t[:-1, :])
    grad[:, :-1] -= fx
    grad[:, 1:] += fx
    grad[:-1, :] -= fy
    grad[1:, :] += fy
    assert np.abs(grad).max() < 1e-6            # (the weights reach ~1e5: a stiff system)
    assert np.allclose(refine_illumination(np.full((9, 12), 0.3)), 0.3)   # flat map kept
    assert np.abs(np.diff(t, axis=1)).sum() < np.abs(np.diff(t0, axis=1)).sum()  # smoother


def test_lime_brightens_dark_images_and_keeps_bright_ones():
    dark = smooth_image(48, 64, (3, 45), seed=2)
    bright = smooth_image(48, 64, (200, 250), seed=3)
    out_dark, out_bright = lime(dark), lime(bright)
    assert out_dark.dtype == np.uint8 and out_dark.shape == dark.shape
    assert out_dark.mean() > 2.5 * dark.mean()
    # a bright image only has its brightest channel pulled up to about 1 (L / T, T ~ max RGB)
    assert bright.mean() <= out_bright.mean() < 1.12 * bright.mean()
    assert np.abs(out_bright.astype(int) - bright).max() < 40


def test_apply_tool_writes_baselines_beside_the_enhanced_folder(tmp_path):
    src = tmp_path / "DarkFace" / "images" / "val"
    src.mkdir(parents=True)
    img = smooth_image(20, 30, (5, 50))
    Image.fromarray(img).save(src / "7.png")
    for method in ("gamma", "clahe", "lime"):
        assert enhance_images.main(["--method", method, "--input", str(src), "--workers",
                                    "0", "--gamma", "1.8"]) == 0
    out = tmp_path / "DarkFace"
    assert np.array_equal(np.array(Image.open(out / "images_gamma" / "val" / "7.png")),
                          gamma_correct(img, 1.8))
    assert np.array_equal(np.array(Image.open(out / "images_clahe" / "val" / "7.png")),
                          clahe(img))
    assert np.array_equal(np.array(Image.open(out / "images_lime" / "val" / "7.png")), lime(img))
    assert not (out / "images_enhanced").exists()
