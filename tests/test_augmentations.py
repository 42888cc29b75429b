"""data/augmentations.py: each reference step on hand-made cases."""
import numpy as np
import pytest
from PIL import Image, ImageEnhance

from data import augmentations as A
from data.config import default_config

GRAY = 60
FACE_RGB = (0, 255, 0)
PAD_RGB = (104, 117, 123)                     # the BGR mean written into RGB (reference quirk)


class ScriptedRng:
    """Stands in for a Generator: ``random()`` returns the scripted values in order."""

    def __init__(self, *values):
        self.values = list(values)

    def random(self, size=None):
        assert size is None
        return self.values.pop(0)


@pytest.fixture
def aug():
    return default_config().AUG


def canvas(w, h, faces=(), colours=None):
    """Gray RGB image with each face box (pixel x1, y1, x2, y2) painted a solid colour."""
    img = np.full((h, w, 3), GRAY, dtype=np.uint8)
    for k, (x1, y1, x2, y2) in enumerate(faces):
        img[y1:y2, x1:x2] = colours[k] if colours else FACE_RGB
    return img


def normalised(faces, w, h):
    return np.asarray(faces, dtype=np.float64) / [w, h, w, h]


def centre_pixel(img, box):
    h, w = img.shape[:2]
    cx = int((box[0] + box[2]) / 2 * w)
    cy = int((box[1] + box[3]) / 2 * h)
    return tuple(int(v) for v in img[cy, cx])


# ---- step 6: normalisation -------------------------------------------------------------------

def test_normalize_image_known_pixel():
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[1, 2] = (200, 100, 50)
    out = A.normalize_image(rgb, [104.0, 117.0, 123.0])
    assert out.shape == (3, 2, 3) and out.dtype == np.float32 and out.flags.c_contiguous
    assert out[:, 1, 2].tolist() == [200 - 123, 100 - 117, 50 - 104]
    assert out[:, 0, 0].tolist() == [-123, -117, -104]


# ---- step 1: colour distortion ---------------------------------------------------------------

def test_hue_shift_wraps_modulo_256(aug):
    rgb = np.array([[[255, 0, 0], [255, 40, 0], [0, 0, 255], [120, 120, 120]]], dtype=np.uint8)
    img = Image.fromarray(rgb)
    hsv = np.array(img.convert("HSV"))
    # draws: fire (0.0 < hue_prob), then u = 0.0 -> delta = -hue_delta = -18
    out = A.random_hue(img, aug, ScriptedRng(0.0, 0.0))
    expected = hsv.copy()
    expected[..., 0] = (hsv[..., 0].astype(int) - 18) % 256
    assert expected[0, 0, 0] == 238              # red: H 0 - 18 wraps to 238
    ref = Image.frombytes("HSV", img.size, expected.tobytes()).convert("RGB")
    assert np.array_equal(np.array(out), np.array(ref))


def hsv_to_rgb(h, s, v):
    return np.array(Image.frombytes("HSV", (1, 1), bytes([h, s, v])).convert("RGB"))


def test_hue_shift_truncates_towards_zero_then_wraps(aug):
    img = Image.fromarray(hsv_to_rgb(0, 255, 255))           # pure red, H = 0
    aug.hue_delta = 6.0
    # u = 1/24 -> delta = -5.5: trunc(-5.5) = -5 -> 251 (a floor would give 250)
    out = A.random_hue(img, aug, ScriptedRng(0.0, 1 / 24))
    assert np.array_equal(np.array(out), hsv_to_rgb(251, 255, 255))
    assert not np.array_equal(hsv_to_rgb(250, 255, 255), hsv_to_rgb(251, 255, 255))
    # u = 11/24 -> delta = -0.5: trunc(-0.5) = 0, unchanged
    out = A.random_hue(img, aug, ScriptedRng(0.0, 11 / 24))
    assert np.array_equal(np.array(out), np.array(img))


def test_hue_does_nothing_when_it_does_not_fire(aug):
    img = Image.fromarray(canvas(8, 8))
    assert A.random_hue(img, aug, ScriptedRng(0.9)) is img


def test_distort_order_and_enhance_factors(aug):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), np.uint8))
    # order draw 0.9 > 0.5: brightness, contrast, saturation, hue. Brightness fires with
    # u = 1.0 (factor 1.125), contrast fires with u = 0 (factor 0.5), the others do not fire.
    rng = ScriptedRng(0.9, 0.0, 1.0, 0.0, 0.0, 0.9, 0.9)
    out = A.distort_image(img, aug, rng)
    ref = ImageEnhance.Contrast(ImageEnhance.Brightness(img).enhance(1.125)).enhance(0.5)
    assert np.array_equal(np.array(out), np.array(ref)) and not rng.values
    # order draw 0.1: brightness, saturation, hue, contrast; only saturation fires (u = 0.5)
    rng = ScriptedRng(0.1, 0.9, 0.0, 0.5, 0.9, 0.9)
    out = A.distort_image(img, aug, rng)
    assert np.array_equal(np.array(out), np.array(ImageEnhance.Color(img).enhance(1.0)))
    assert not rng.values


# ---- step 2: expand --------------------------------------------------------------------------

def test_expand_fills_with_mean_and_moves_boxes(aug):
    w, h = 100, 80
    img = Image.fromarray(canvas(w, h, [(10, 20, 30, 40)]))
    boxes = normalised([(10, 20, 30, 40)], w, h)
    aug.expand_prob = 1.0
    for seed in range(5):
        out, b, labels = A.expand_image(img, boxes, np.array([1]), aug, np.random.default_rng(seed))
        arr = np.array(out)
        assert arr.shape[0] >= h and arr.shape[1] >= w and labels.tolist() == [1]
        assert centre_pixel(arr, b[0]) == FACE_RGB
        assert np.allclose((b[0, 2] - b[0, 0]) * arr.shape[1], 20)
        if arr.shape[0] > h + 1 and arr.shape[1] > w + 1:   # there is a border somewhere
            corners = [tuple(arr[y, x]) for y in (0, -1) for x in (0, -1)]
            assert PAD_RGB in corners


# ---- step 3a: data-anchor-sampling -----------------------------------------------------------

@pytest.mark.parametrize("seed", range(12))
def test_das_keeps_the_face_inside_the_window(aug, seed):
    w, h = 1000, 800
    face = (400, 300, 440, 340)
    img = canvas(w, h, [face])
    crop, boxes, labels = A.data_anchor_sampling(img, normalised([face], w, h), np.array([1]),
                                                 aug, np.random.default_rng(seed))
    assert crop.dtype == np.uint8 and crop.ndim == 3
    assert crop.shape[0] <= aug.resize_height and crop.shape[1] <= aug.resize_width
    assert labels.tolist() == [1] and boxes.shape == (1, 4)
    assert (boxes >= 0).all() and (boxes <= 1).all()         # fully inside, not only its centre
    assert centre_pixel(crop, boxes[0]) == FACE_RGB


def test_das_pads_negative_offsets_with_bgr_mean_and_truncates(aug):
    w, h = 200, 150                           # stays smaller than the window after rescaling
    face = (80, 60, 120, 100)
    img = canvas(w, h, [face])
    for seed in range(8):
        crop, boxes, _ = A.data_anchor_sampling(img, normalised([face], w, h), np.array([1]),
                                                aug, np.random.default_rng(seed))
        assert tuple(crop[0, 0]) == PAD_RGB                  # top-left is padding
        assert tuple(crop[-1, -1]) == (GRAY,) * 3            # bottom-right is the image
        assert crop.shape[0] < aug.resize_height and crop.shape[1] < aug.resize_width
        assert centre_pixel(crop, boxes[0]) == FACE_RGB


def test_das_rescales_the_chosen_face_to_a_nearby_anchor(aug):
    w, h = 1000, 800
    face = (400, 300, 463, 363)               # side sqrt(64 * 64) = 64: anchors 16 .. 128
    img = canvas(w, h, [face])
    sides = []
    for seed in range(30):
        crop, boxes, _ = A.data_anchor_sampling(img, normalised([face], w, h), np.array([1]),
                                                aug, np.random.default_rng(seed))
        sides.append((boxes[0, 2] - boxes[0, 0]) * crop.shape[1])
    sides = np.array(sides)
    # target in {16, 32, 64, 128} times 2^U(-1, 1): the face side lies in [8, 256]
    assert sides.min() >= 7.5 and sides.max() <= 256.5 and sides.std() > 1


def test_min_face_filter_drops_area_at_most_36(aug):
    boxes = np.array([[0, 0, 6, 6], [0, 0, 6, 6.2], [0, 0, 1, 100]], dtype=np.float64)
    assert A._min_face_mask(boxes, aug).tolist() == [False, True, True]
    aug.filter_min_face = False
    assert A._min_face_mask(boxes, aug).all()


def test_das_filters_faces_that_become_too_small(aug):
    w, h = 1000, 800
    faces = [(400, 300, 440, 340), (600, 300, 640, 340)]
    img = canvas(w, h, faces)
    aug.min_face_size = 1000.0                # nothing can be that large in a 640 window
    _, boxes, labels = A.data_anchor_sampling(img, normalised(faces, w, h), np.array([1, 1]),
                                              aug, np.random.default_rng(0))
    assert boxes.shape == (0, 4) and labels.shape == (0,)


# ---- step 3b: SSD-style square crop ----------------------------------------------------------

def coded_canvas(w, h, faces):
    """Each pixel says where it came from: R = x % 256, G = y % 256, B = 16 * (face + 1) +
    4 * (x // 256) + y // 256 (face = -1 for the background; x < 1024, y < 1024)."""
    y, x = np.mgrid[0:h, 0:w]
    owner = np.full((h, w), -1)
    for k, (x1, y1, x2, y2) in enumerate(faces):
        owner[y1:y2, x1:x2] = k
    return np.stack([x % 256, y % 256, 16 * (owner + 1) + 4 * (x // 256) + y // 256],
                    axis=-1).astype(np.uint8)


def decode(pixel):
    r, g, b = (int(v) for v in pixel)
    return r + 256 * ((b % 16) // 4), g + 256 * (b % 4), b // 16 - 1      # x, y, face


def test_ssd_crop_keeps_centre_inside_faces_projected_and_clipped(aug):
    w, h = 800, 500
    faces = [(50, 50, 150, 150), (600, 300, 700, 420), (350, 200, 420, 280), (760, 10, 800, 60)]
    img = coded_canvas(w, h, faces)
    centres = np.array([((x1 + x2) / 2, (y1 + y2) / 2) for x1, y1, x2, y2 in faces])
    for seed in range(15):
        crop, boxes, labels = A.ssd_square_crop(img, normalised(faces, w, h), np.arange(4), aug,
                                                np.random.default_rng(seed))
        ch, cw = crop.shape[:2]
        assert abs(ch - cw) <= 1                             # square in pixels
        assert (boxes >= 0).all() and (boxes <= 1).all()     # projected and clipped
        x0, y0, _ = decode(crop[0, 0])
        assert decode(crop[-1, -1])[:2] == (x0 + cw - 1, y0 + ch - 1)
        inside = ((centres[:, 0] > x0 + 2) & (centres[:, 0] < x0 + cw - 2) &
                  (centres[:, 1] > y0 + 2) & (centres[:, 1] < y0 + ch - 2))
        outside = ((centres[:, 0] < x0 - 2) | (centres[:, 0] > x0 + cw + 2) |
                   (centres[:, 1] < y0 - 2) | (centres[:, 1] > y0 + ch + 2))
        kept = set(labels.tolist())
        assert set(np.flatnonzero(inside)) <= kept and not kept & set(np.flatnonzero(outside))
        sizes = (boxes[:, 2:] - boxes[:, :2]) * [cw, ch]
        whole = [np.allclose(sizes[k], np.subtract(faces[l][2:], faces[l][:2]), atol=1.5)
                 for k, l in enumerate(labels)]
        assert any(whole)                                    # object coverage 1.0 for one face
        for box, label in zip(boxes, labels):                # each box still lies on its face
            cy, cx = int((box[1] + box[3]) / 2 * ch), int((box[0] + box[2]) / 2 * cw)
            assert decode(crop[cy, cx])[2] == label


def test_ssd_crop_drops_faces_below_min_size(aug):
    w, h = 1000, 1000
    faces = [(100, 100, 300, 300), (500, 500, 504, 504)]     # the second: 4 px -> 2.56 px at 640
    img = canvas(w, h, faces)
    for seed in range(20):
        _, boxes, _ = A.ssd_square_crop(img, normalised(faces, w, h), np.array([0, 1]), aug,
                                        np.random.default_rng(seed))
        area = ((boxes[:, 2] - boxes[:, 0]) * aug.resize_width) * \
               ((boxes[:, 3] - boxes[:, 1]) * aug.resize_height)
        assert (area >= aug.min_face_size ** 2).all()


def test_ssd_crop_small_face_survives_only_a_tight_crop(aug):
    # a 2 px face in a 500 px crop of scale s is 2.56 / s px at 640: kept only for s <= 0.427
    w, h = 500, 500
    faces = [(250, 250, 252, 252)]
    img = canvas(w, h, faces)
    kept = 0
    for seed in range(200):
        crop, boxes, _ = A.ssd_square_crop(img, normalised(faces, w, h), np.array([1]), aug,
                                           np.random.default_rng(seed))
        assert len(boxes) == 0 or crop.shape[1] <= 0.427 * w + 1
        kept += len(boxes)
    assert kept > 0


# ---- steps 4-5 and the whole pipeline --------------------------------------------------------

def test_flip_mirrors_image_and_boxes():
    img = np.zeros((4, 10, 3), dtype=np.uint8)
    img[:, 1:3] = 255                                        # box x 0.1 .. 0.3
    boxes = np.array([[0.1, 0.2, 0.3, 0.4]])
    outcomes = set()
    for seed in range(10):
        out, b = A.random_flip(img, boxes, np.random.default_rng(seed))
        flipped = bool(out[0, 8, 0])
        outcomes.add(flipped)
        expected = [[0.7, 0.2, 0.9, 0.4]] if flipped else boxes
        assert np.allclose(b, expected)
        if flipped:
            assert np.array_equal(out, img[:, ::-1])
    assert outcomes == {True, False}
    assert np.allclose(boxes, [[0.1, 0.2, 0.3, 0.4]])        # input untouched


def test_random_resize_uses_the_configured_size(aug):
    aug.resize_width, aug.resize_height = 96, 64
    out = A.random_resize(Image.fromarray(canvas(30, 20)), aug, np.random.default_rng(0))
    assert out.size == (96, 64)


def _sample_image(w=320, h=240):
    faces = [(40, 40, 90, 100), (200, 120, 240, 170)]
    return Image.fromarray(canvas(w, h, faces)), normalised(faces, w, h), np.array([1, 1])


@pytest.mark.parametrize("anchor_sampling", [True, False])
def test_train_preprocess_shapes_and_box_content(aug, anchor_sampling):
    aug.resize_width, aug.resize_height = 128, 96
    aug.anchor_sampling = anchor_sampling
    aug.data_anchor_sampling_prob = 0.0      # with anchor_sampling: always data-anchor-sampling
    aug.apply_distort = False                # keep the face colour exact
    img, boxes, labels = _sample_image()
    for seed in range(6):
        x, b, l = A.train_preprocess(img, boxes, labels, aug, np.random.default_rng(seed))
        assert x.shape == (3, 96, 128) and x.dtype == np.float32
        assert b.dtype == np.float32 and b.shape == (len(l), 4)
        rgb = x.transpose(1, 2, 0) + np.array([123, 117, 104], dtype=np.float32)
        for box in b:
            assert np.allclose(centre_pixel(rgb, np.clip(box, 0, 1)), FACE_RGB, atol=2)


def test_train_preprocess_is_a_function_of_the_generator(aug):
    img, boxes, labels = _sample_image()
    aug.resize_width = aug.resize_height = 64
    a = A.train_preprocess(img, boxes, labels, aug, np.random.default_rng(7))
    b = A.train_preprocess(img, boxes, labels, aug, np.random.default_rng(7))
    c = A.train_preprocess(img, boxes, labels, aug, np.random.default_rng(8))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not (a[0].shape == c[0].shape and np.array_equal(a[0], c[0]))


def test_train_preprocess_does_not_touch_global_random_state(aug):
    import random
    img, boxes, labels = _sample_image()
    aug.resize_width = aug.resize_height = 64
    np.random.seed(0)
    random.seed(0)
    A.train_preprocess(img, boxes, labels, aug, np.random.default_rng(0))
    assert np.random.random() == np.random.RandomState(0).random_sample()
    assert random.random() == random.Random(0).random()


def test_val_preprocess_is_bilinear_resize_and_normalise(aug):
    img, boxes, labels = _sample_image()
    x, b, l = A.val_preprocess(img, boxes, labels, aug)
    ref = np.array(img.resize((640, 640), Image.Resampling.BILINEAR)).astype(np.float32)
    assert np.array_equal(x, (ref - [123, 117, 104]).transpose(2, 0, 1).astype(np.float32))
    assert np.allclose(b, boxes) and l.tolist() == [1, 1]
