"""AUG.lowlight_model in the training pipelines of the three detector families.

'toy' (the default) must leave every sample exactly as before the option (hashes pinned from the
code before it existed); 'camera' must darken the images with the camera model of data/camera.py
and leave the boxes, landmarks and every other draw unchanged."""
import numpy as np
import pytest
import torch

from data.config import ConfigError
from data.config_check import validate
from models.registry import build_train_dataset
from data.lowlight_model import CameraSpec, camera_low_light, camera_spec
from tests.night_fixtures import records, sample_digest, small_config

FAMILIES = ("dsfd_vgg", "yunet_n", "retinaface_mnet")
# sha256 prefixes of tests/night_fixtures.sample_digest, computed from the code BEFORE
# AUG.lowlight_model existed (commit b89d878's data/augmentations.py and the two transforms)
PINNED = {
    ("dsfd_vgg", 0.0): "2da8bc17e5f477c5", ("dsfd_vgg", 0.5): "915c185e4817316c",
    ("dsfd_vgg", 1.0): "e08c5451c31eb062", ("yunet_n", 0.0): "24df2558f0e1e5d7",
    ("yunet_n", 0.5): "91c538ec1ffd516a", ("yunet_n", 1.0): "3d78521d79be6eec",
    ("retinaface_mnet", 0.0): "78bb62f5854d9e9f", ("retinaface_mnet", 0.5): "32431b24bf8126b4",
    ("retinaface_mnet", 1.0): "54948ccefe060827",
}
KEYS = ((0, 0), (0, 1), (1, 2), (3, 0))


@pytest.fixture(scope="module")
def recs(tmp_path_factory):
    return records(tmp_path_factory.mktemp("night_training"))


def _dataset(name, recs, prob, model="toy", preset="darkface"):
    cfg = small_config(name, prob)
    cfg.AUG.lowlight_model = model
    cfg.CAMERA.PRESET = preset
    return build_train_dataset(cfg, "unused", ".", seed=5, records=recs)


@pytest.mark.parametrize("name", FAMILIES)
def test_toy_default_is_bit_identical_to_before(name, recs):
    assert small_config(name).AUG.lowlight_model == "toy"
    for prob in (0.0, 0.5, 1.0):
        assert sample_digest(_dataset(name, recs, prob), KEYS) == PINNED[(name, prob)], prob


def _pixels(name, image):
    """The 0..255 pixels of a training input of ``name`` (undo the mean subtraction)."""
    mean = {"dsfd_vgg": (123.0, 117.0, 104.0), "yunet_n": (0.0, 0.0, 0.0),
            "retinaface_mnet": (104.0, 117.0, 123.0)}[name]
    return image + torch.tensor(mean).view(3, 1, 1)


@pytest.mark.parametrize("name", FAMILIES)
def test_camera_mode_darkens_and_keeps_the_boxes(name, recs):
    clean = _dataset(name, recs, 0.0, "camera")
    toy = _dataset(name, recs, 1.0, "toy")
    camera = _dataset(name, recs, 1.0, "camera")
    assert camera.camera == CameraSpec("darkface", ())
    for key in KEYS[:3]:
        (a, ta, _), (t, _, _), (c, tc, _) = clean[key], toy[key], camera[key]
        assert torch.equal(ta, tc), key                   # same crop, flip, landmarks
        # medians: crop padding (mean grey) and the families' own colour jitter come after
        dark, toy_dark = _pixels(name, c).median(), _pixels(name, t).median()
        assert dark < 0.25 * _pixels(name, a).mean() and dark < 0.5 * toy_dark, key
        assert not torch.equal(c, t)
        assert torch.equal(camera[key][0], c)             # deterministic
    assert not torch.equal(camera[(0, 0)][0], camera[(1, 0)][0])         # a new draw per epoch


def test_camera_presets_and_overrides_reach_the_pipeline(recs):
    dark = _dataset("yunet_n", recs, 1.0, "camera", "darkface")
    dainet = _dataset("yunet_n", recs, 1.0, "camera", "dainet")
    assert dainet.camera.preset == "dainet"
    # DAI-Net's Dark ISP never re-applies the tone curve: brighter than the darkface preset
    assert dainet[(0, 0)][0].mean() > dark[(0, 0)][0].mean()
    cfg = small_config("yunet_n", 1.0)
    cfg.AUG.lowlight_model = "camera"
    cfg.CAMERA.exposure = [0.5]
    assert camera_spec(cfg).as_dict()["exposure"] == (0.5,)


def test_camera_low_light_is_seeded_by_the_generator():
    rgb = np.random.default_rng(0).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    spec = CameraSpec("darkface")
    a = camera_low_light(rgb, spec, np.random.default_rng(1))
    b = camera_low_light(rgb, spec, np.random.default_rng(1))
    c = camera_low_light(rgb, spec, np.random.default_rng(2))
    assert a.dtype == np.uint8 and a.shape == rgb.shape
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.mean() < 0.15 * rgb.mean()


def test_bad_lowlight_model_names_the_key():
    cfg = small_config("yunet_n")
    cfg.AUG.lowlight_model = "night"
    with pytest.raises(ConfigError, match="AUG.lowlight_model"):
        validate(cfg)
    with pytest.raises(ValueError, match="AUG.lowlight_model"):
        camera_spec(cfg)


def test_enhancer_trains_on_camera_night_copies(tmp_path):
    """ENHANCE.TRAIN_CAMERA: tools/train_enhancer.py's images become camera-model night copies,
    the same for the same (seed, epoch, image), new ones every epoch; off, the images as read."""
    from PIL import Image

    from tools import train_enhancer
    rgb = np.random.default_rng(3).integers(60, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    cfg = small_config("dsfd_vgg")
    cfg.ENHANCE.TRAIN_DIR, cfg.ENHANCE.SIZE, cfg.RUN.NUM_WORKERS = str(tmp_path), 32, 0
    plain = train_enhancer.build_loader(cfg, torch.device("cpu"))[0].dataset
    cfg.ENHANCE.TRAIN_CAMERA = True
    night = train_enhancer.build_loader(cfg, torch.device("cpu"))[0].dataset
    assert plain.camera is None and night.camera == CameraSpec("darkface", ())
    clean, dark = plain[(0, 0)], night[(0, 0)]
    assert dark.shape == clean.shape and dark.mean() < 0.15 * clean.mean()
    assert torch.equal(dark, night[(0, 0)]) and not torch.equal(dark, night[(1, 0)])
