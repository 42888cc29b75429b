"""D(H) image steps: noise, blur, padding and crop-back on odd sizes, training pairs, and the
blur / synthesis tools end to end on tiny folders with a tiny generator."""
import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from lowlevel.noise import (PairedCrops, add_mono_gaussian_noise, blur, crop_back,
                            from_generator_output, pad_amounts, pad_image, padded_size,
                            to_generator_input)
from lowlevel.pix2pix import UnetGenerator
from tools import blur_images, synthesize_noise


@pytest.mark.parametrize("h, w, pad", [(37, 53, 16), (37, 53, 256), (64, 96, 32), (1, 3, 4),
                                       (720, 1080, 256), (768, 1024, 256)])
def test_padding_rounds_up_and_crop_back_restores_odd_sizes(h, w, pad):
    top, bottom, left, right = pad_amounts(h, w, pad)
    assert top == left == pad
    for size, extra in ((h, bottom), (w, right)):
        total = size + pad + extra
        # (size + 2 pad) rounded up to the next multiple of pad
        assert total % pad == 0 and size + 2 * pad <= total < size + 3 * pad
        assert total == padded_size(size, pad)
    img = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    padded = pad_image(img, pad)
    assert padded.shape == (h + top + bottom, w + left + right, 3)
    assert np.array_equal(crop_back(padded, h, w, pad), img)


def test_padding_is_the_edge_repeating_mirror():
    img = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    padded = pad_image(img, 4)
    inner = padded[4:9, 4:11]
    assert np.array_equal(padded[4:9, 3], inner[:, 0])            # "cba|abc": edge repeated
    assert np.array_equal(padded[4:9, 2], inner[:, 1])
    assert np.array_equal(padded[3, 4:11], inner[0])
    assert np.array_equal(padded[9, 4:11], inner[4])
    assert padded_size(720, 256) == 1280 and padded_size(1024, 256) == 1536
    with pytest.raises(ValueError):
        crop_back(padded, 20, 7, 4)


def test_noise_is_monochrome_std_sigma_and_truncated():
    img = np.full((200, 300, 3), 128, np.uint8)
    noisy = add_mono_gaussian_noise(img, 16.0, np.random.default_rng(5))
    assert noisy.dtype == np.uint8
    assert np.array_equal(noisy[..., 0], noisy[..., 1]) and np.array_equal(noisy[..., 0],
                                                                           noisy[..., 2])
    n = np.random.default_rng(5).normal(0, 16.0, (200, 300, 1))
    assert np.array_equal(noisy[..., 0], np.clip(128 + n[..., 0], 0, 255).astype(np.uint8))
    assert abs(noisy.astype(float).std() - 16.0) < 0.5
    edge = add_mono_gaussian_noise(np.full((50, 50, 3), 250, np.uint8), 16.0,
                                   np.random.default_rng(0))
    assert edge.max() == 255                                       # clipped, not wrapped


def test_blur_is_bilateral_then_median():
    img = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    expected = cv2.medianBlur(cv2.bilateralFilter(img, 25, 75, 75), 5)
    assert np.array_equal(blur(img, (25, 75, 75), 5), expected)
    assert blur(img).std() < img.std()


def test_generator_io_conversions():
    img = np.array([[[0, 128, 255]]], np.uint8)
    x = to_generator_input(img)
    assert x.shape == (1, 3, 1, 1)
    assert torch.allclose(x.flatten(), torch.tensor([-1.0, 128 / 127.5 - 1, 1.0]), atol=1e-6)
    # pix2pix tensor2im: (y + 1) / 2 * 255, truncated
    y = torch.tensor([-1.0, 0.0, 0.999, 1.0]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    assert from_generator_output(y)[0, :, 0].tolist() == [0, 127, 254, 255]


def test_paired_crops_share_window_and_flip_and_replay(tmp_path):
    rng = np.random.default_rng(2)
    a = rng.integers(0, 200, (300, 280, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(a + 50).save(tmp_path / "b.png")
    Image.fromarray(a[:100, :120]).save(tmp_path / "small_a.png")
    Image.fromarray(a[:100, :120] + 50).save(tmp_path / "small_b.png")
    ds = PairedCrops([(tmp_path / "a.png", tmp_path / "b.png"),
                      (tmp_path / "small_a.png", tmp_path / "small_b.png")], crop=256, seed=0)
    for key in ((0, 0), (1, 0), (0, 1)):
        xa, xb = ds[key]
        assert xa.shape == xb.shape == (3, 256, 256)
        assert torch.allclose(xb - xa, torch.full_like(xa, 100 / 255), atol=1e-5)
    assert all(torch.equal(u, v) for u, v in zip(ds[(3, 0)], ds[(3, 0)]))
    crops = {tuple(ds[(e, 0)][0][0, 0, :4].tolist()) for e in range(6)}
    assert len(crops) > 1                                          # the window moves per epoch
    (tmp_path / "bad.png").write_bytes(b"junk")
    assert PairedCrops([(tmp_path / "bad.png", tmp_path / "b.png")])[(0, 0)] is None


# ------------------------------------------------------------------------------ tools


@pytest.fixture(scope="module")
def wider(tmp_path_factory):
    root = tmp_path_factory.mktemp("wider") / "images"
    rng = np.random.default_rng(3)
    for name, (h, w) in {"0--A/0_A_1.png": (37, 53), "1--B/1_B_2.jpg": (50, 41)}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name)
    (root / "1--B" / "broken.png").write_bytes(b"broken")
    return root


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("g") / "G.pth"
    torch.save(UnetGenerator(ngf=4).state_dict(), path)
    return path


def test_h_blur_tool_is_flat_padded_deterministic_and_skips_bad_files(wider, tmp_path):
    out = tmp_path / "h_blur"
    args = ["--mode", "h", "--input", str(wider), "--output", str(out), "--workers", "0",
            "NOISE.PAD=32"]
    assert blur_images.main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0_A_1.png", "1_B_2.jpg"]
    first = np.array(Image.open(out / "0_A_1.png"))
    assert first.shape == (padded_size(37, 32), padded_size(53, 32), 3)
    assert blur_images.main(args + ["--overwrite"]) == 0           # same seeds, same output
    assert np.array_equal(np.array(Image.open(out / "0_A_1.png")), first)


def test_el_blur_tool_mirrors_the_folder(wider, tmp_path):
    assert blur_images.main(["--mode", "el", "--workers", "0",
                             f"ENHANCE.ENHANCED_DIR={wider}",
                             f"NOISE.BLUR_DIR={tmp_path / 'blur'}"]) == 0
    out = tmp_path / "blur" / "0--A" / "0_A_1.png"
    src = np.array(Image.open(wider / "0--A" / "0_A_1.png"))
    assert np.array_equal(np.array(Image.open(out)), blur(src))
    with pytest.raises(FileNotFoundError, match="ENHANCE.ENHANCED_DIR"):
        blur_images.main(["--mode", "el", f"ENHANCE.ENHANCED_DIR={tmp_path / 'none'}"])


def test_synthesis_crops_back_to_the_original_size_both_ways(wider, generator, tmp_path):
    direct = tmp_path / "direct"
    common = ["--weights", str(generator), "--workers", "0", f"NOISE.WIDER_DIR={wider}"]
    assert synthesize_noise.main(common + ["--output", str(direct)]) == 0
    assert sorted(p.name for p in direct.iterdir()) == ["0_A_1.jpg", "1_B_2.jpg"]
    assert Image.open(direct / "0_A_1.jpg").size == (53, 37)
    assert Image.open(direct / "1_B_2.jpg").size == (41, 50)

    # the two-step route (H_blur files, one of them JPEG, then the generator): the same bytes
    blur_dir = tmp_path / "h_blur"
    assert blur_images.main(["--mode", "h", "--input", str(wider), "--output", str(blur_dir),
                             "--workers", "0"]) == 0
    two_step = tmp_path / "two_step"
    assert synthesize_noise.main(common + ["--from", "blur", "--input", str(blur_dir),
                                           "--output", str(two_step)]) == 0
    for name in ("0_A_1.jpg", "1_B_2.jpg"):
        assert (direct / name).read_bytes() == (two_step / name).read_bytes()

    # done files are skipped
    (direct / "0_A_1.jpg").write_bytes(b"kept")
    assert synthesize_noise.main(common + ["--output", str(direct)]) == 0
    assert (direct / "0_A_1.jpg").read_bytes() == b"kept"


def test_synthesis_errors_name_keys(wider, tmp_path):
    with pytest.raises(FileNotFoundError, match="NOISE.GENERATOR_WEIGHTS"):
        synthesize_noise.main(["--workers", "0", f"NOISE.WIDER_DIR={wider}",
                               f"NOISE.OUT_DIR={tmp_path / 'o'}",
                               f"NOISE.GENERATOR_WEIGHTS={tmp_path / 'none.pth'}"])
    with pytest.raises(FileNotFoundError, match="NOISE.WIDER_DIR"):
        synthesize_noise.main([f"NOISE.WIDER_DIR={tmp_path / 'none'}"])
