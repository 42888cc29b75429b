"""The one configuration tree of the project, and its command-line / preset overrides.

Every default of the reference (HLA-Face ``train_code/data/config.py`` and the ``train.py``
arguments) lives here, grouped by what it controls, plus our own run settings under ``RUN``.
Entry points call :func:`load_config` with optional preset files (YAML or JSON, nested like
this tree) and ``KEY.SUB=VALUE`` overrides parsed with ``ast.literal_eval``. An unknown key or
a value of the wrong type raises :class:`ConfigError` naming the key (and the preset file when
it came from one).

Nothing reads this module's tree at import time or inside ``forward``: constructors receive the
values they need. ``docs/DECISIONS.md`` maps the reference's flat key names onto this tree.
"""
from __future__ import annotations

import ast
import copy
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from easydict import EasyDict

from utils.files import write_text_atomic


class ConfigError(ValueError):
    """A bad key or value in an override or a preset file."""


def default_config() -> EasyDict:
    """A fresh copy of every default (safe to mutate)."""
    C = EasyDict()

    # ---- data augmentation (the reference's AUG keys and WIDER training loader) ----
    C.AUG = EasyDict()
    C.AUG.apply_distort = True
    C.AUG.hue_prob = 0.5
    C.AUG.hue_delta = 18.0
    C.AUG.contrast_prob = 0.5
    C.AUG.contrast_delta = 0.5
    C.AUG.saturation_prob = 0.5
    C.AUG.saturation_delta = 0.5
    C.AUG.brightness_prob = 0.5
    C.AUG.brightness_delta = 0.125
    C.AUG.apply_expand = False          # the reference disables expand; kept as a switch
    C.AUG.expand_prob = 0.5
    C.AUG.expand_max_ratio = 4.0
    C.AUG.anchor_sampling = True
    C.AUG.data_anchor_sampling_prob = 0.5
    C.AUG.filter_min_face = True
    C.AUG.min_face_size = 6.0
    C.AUG.img_mean = [104.0, 117.0, 123.0]   # BGR mean, subtracted as R-123, G-117, B-104
    C.AUG.resize_width = 640
    C.AUG.resize_height = 640
    # ours: replace a training image by its simulated low-light copy (data/lowlight.py) with this
    # probability (the main teacher of docs/DUAL_TEACHER.md); 0 = off, the reference
    C.AUG.lowlight_prob = 0.0

    # ---- optimisation schedule (the reference's LR_STEPS, MAX_STEPS, train.py arguments) ----
    C.SOLVER = EasyDict()
    C.SOLVER.BATCH_SIZE = 8             # global batch: split evenly over DDP ranks
    C.SOLVER.OPTIMIZER = "sgd"          # sgd (the reference) | adamw (fast from-scratch demos)
    C.SOLVER.LR = 1e-4
    C.SOLVER.WARMUP_LR = 1e-6
    C.SOLVER.WARMUP_ITERS = 1000
    C.SOLVER.WARMUP_REFERENCE_END = False   # True: stay at the last warm-up lr (the reference)
    C.SOLVER.MOMENTUM = 0.9
    C.SOLVER.WEIGHT_DECAY = 5e-4
    C.SOLVER.GAMMA = 0.1
    C.SOLVER.LR_STEPS = [20000, 100000]
    C.SOLVER.MAX_STEPS = 70000
    C.SOLVER.EPOCHES = 100000
    C.SOLVER.STOP_AT_EPOCH_END = False  # True: the reference's 70,840-iteration stop
    C.SOLVER.GRAD_CLIP = 0.0            # 0 disables; the reference does not clip

    # ---- anchors (the reference's: one square anchor a location, PAL1 half of PAL2) ----
    C.ANCHOR = EasyDict()
    C.ANCHOR.STEPS = [4, 8, 16, 32, 64, 128]
    C.ANCHOR.ANCHOR_SIZES1 = [8, 16, 32, 64, 128, 256]
    C.ANCHOR.ANCHOR_SIZES2 = [16, 32, 64, 128, 256, 512]
    C.ANCHOR.VARIANCE = [0.1, 0.2]

    # ---- test-time post-processing (the reference's, on the second shot only) ----
    C.DETECT = EasyDict()
    C.DETECT.NMS_THRESH = 0.3
    C.DETECT.NMS_TOP_K = 5000
    C.DETECT.TOP_K = 750
    C.DETECT.CONF_THRESH = 0.05

    # ---- detection loss (the reference's MultiBoxLoss: 3 mined negatives a positive) ----
    C.LOSS = EasyDict()
    C.LOSS.NEG_POS_RATIOS = 3
    C.NUM_CLASSES = 2

    # ---- detector ----
    C.MODEL = EasyDict()
    C.MODEL.NAME = "dsfd_vgg"
    C.MODEL.WIDTH = 1.0                 # channel multiplier; < 1 only for demo and tests
    C.MODEL.WEIGHTS = "./pretrained_weights/dsfd_vgg_0.880.pth"   # detector init; '' = none
    C.MODEL.BASENET = ""                # vgg16_reducedfc.pth for the VGG when WEIGHTS is ''

    # ---- files (the reference's list files; their format: docs/DATASETS.md) ----
    C.FACE = EasyDict()
    C.FACE.SRC_TRAIN_FILE = "./dataset/wider_face_train.txt"
    C.FACE.SRC_VAL_FILE = "./dataset/wider_face_val.txt"   # train.py's RUN.EVAL_EVERY list
    C.FACE.TAR_TRAIN_FILE = "./dataset/mf_dsfd_dark_face_train.txt"
    C.FACE.DATA_ROOT = "."              # relative image paths in list files start here
    C.FACE.SRC_FORMAT = "auto"          # annotation format of SRC_TRAIN_FILE: auto | wider |
                                        # retinaface | labelv2 | laboro (data/annotations.py)
    C.FACE.IMAGE_ROOT = ""              # '' = the format's layout (wider: FACE.DATA_ROOT)
    C.FACE.VAL_FORMAT = "auto"          # annotation format of SRC_VAL_FILE (same choices); its
                                        # images: the format's layout (wider: FACE.DATA_ROOT)
    C.FACE.OVERLAP_THRESH = 0.35

    # ---- self-supervised task toggles and weights (the reference's defaults) ----
    C.TRAIN = EasyDict()
    C.TRAIN.MAIN = True
    C.TRAIN.ROTATION = False
    C.TRAIN.JIGSAW_33 = True
    C.TRAIN.JIGSAW_22 = False
    C.TRAIN.JIGSAW_41 = False
    C.TRAIN.JIGSAW_14 = False
    C.TRAIN.CONTRASTIVE = False
    C.TRAIN.CONTRASTIVE_SOURCE = False
    C.TRAIN.CONTRASTIVE_TARGET = True
    C.TRAIN.TRANSFER_CONTRASTIVE = True

    C.TRAIN_WEIGHT = EasyDict()
    C.TRAIN_WEIGHT.ROTATION = 0.5
    C.TRAIN_WEIGHT.JIGSAW_33 = 0.075
    C.TRAIN_WEIGHT.JIGSAW_22 = 0.05
    C.TRAIN_WEIGHT.JIGSAW_41 = 0.05
    C.TRAIN_WEIGHT.JIGSAW_14 = 0.05
    C.TRAIN_WEIGHT.CONTRASTIVE = 0.01
    C.TRAIN_WEIGHT.CONTRASTIVE_SOURCE = 0.05
    C.TRAIN_WEIGHT.CONTRASTIVE_TARGET = 0.05
    C.TRAIN_WEIGHT.TRANSFER_CONTRASTIVE = 0.05

    # ---- DARK FACE held-out evaluation (the offline proxy of the closed test server) ----
    C.DARKFACE = EasyDict()
    C.DARKFACE.IMAGE_DIR = "./dataset/DarkFace/images/train"   # the 6,000 labelled images (raw)
    C.DARKFACE.LABEL_DIR = "./dataset/DarkFace/label/train"    # <id>.txt: count, x1 y1 x2 y2
    C.DARKFACE.VAL_IDS = ""             # id list of the held-out split; '' = every k-th id rule
    C.DARKFACE.NUM_VAL = 500            # size of the rule-based split
    C.DARKFACE.FILTER_TRAIN = True      # drop held-out ids from the target-domain training list

    # ---- self-supervised heads and their loaders (docs/ADAPTATION.md) ----
    C.SSL = EasyDict()
    C.SSL.BATCH_SIZE = 8                # per auxiliary loader, global (split over ranks)
    C.SSL.NUM_WORKERS = 4               # per auxiliary loader
    C.SSL.NOISE_DIR = "./dataset/WiderFace/WIDER_images_add_noise/train"   # D(H) images
    C.SSL.HEADS_DIR = "./pretrained_weights"    # <name>_head.pth files
    C.SSL.LOAD_HEADS = True             # train.py starts from the pre-trained heads
    C.SSL.JIGSAW_KEEP_FACE = True       # False: the reference's bottom-right zoom (face may leave)
    C.SSL.MOCO_DIM = 128
    C.SSL.MOCO_K = 2048
    C.SSL.MOCO_M = 0.99
    C.SSL.MOCO_T = 0.07
    C.SSL.PRETRAIN_ITERS = 100000       # pretrain_fast_headers.py
    C.SSL.PRETRAIN_BATCH_SIZE = 16
    C.SSL.PRETRAIN_LR = 1e-4
    C.SSL.PRETRAIN_LR_HALVE_EVERY = 10000
    C.SSL.PRETRAIN_SAVE_EVERY = 10000
    C.SSL.PRETRAIN_LOAD_DETECTOR = True  # False: the reference's random, never-loaded detector

    # ---- low level: the illumination enhancer E(L) (docs/LOW_LEVEL.md) ----
    C.ENHANCE = EasyDict()
    C.ENHANCE.WEIGHTS = "./pretrained_weights/Illumination-Enhancer.pth"
    C.ENHANCE.TRAIN_DIR = "./dataset/ZeroDCE/train_data"   # any folder of images
    C.ENHANCE.SIZE = 256
    C.ENHANCE.BATCH_SIZE = 8
    C.ENHANCE.EPOCHS = 200
    C.ENHANCE.LR = 2e-4
    C.ENHANCE.WEIGHT_DECAY = 1e-4
    C.ENHANCE.GRAD_CLIP = 0.1
    C.ENHANCE.LR_DECAY = 0.95           # per epoch
    C.ENHANCE.W_TV = 200.0
    C.ENHANCE.W_SPA = 1.0
    C.ENHANCE.W_COL = 5.0
    C.ENHANCE.W_EXP = 10.0
    C.ENHANCE.EXPOSURE = 0.55
    C.ENHANCE.DARK_DIR = "./dataset/DarkFace/images/train"              # L
    C.ENHANCE.ENHANCED_DIR = "./dataset/DarkFace/images_enhanced/train"  # E(L)

    # ---- low level: noise synthesis D(H) (docs/LOW_LEVEL.md) ----
    C.NOISE = EasyDict()
    C.NOISE.GAUSS_SIGMA = 16.0          # monochrome Gaussian noise on WIDER before blurring
    C.NOISE.BILATERAL = [25, 75, 75]    # d, sigma_color, sigma_space
    C.NOISE.MEDIAN = 5
    C.NOISE.PAD = 256
    C.NOISE.BLUR_DIR = "./dataset/DarkFace/images_enhanced_denoise/train"   # E(L)_blur
    C.NOISE.WIDER_DIR = "./dataset/WiderFace/WIDER_train/images"            # H
    C.NOISE.WIDER_BLUR_DIR = "./dataset/WiderFace/WIDER_train_denoise"     # H_blur (padded)
    C.NOISE.OUT_DIR = "./dataset/WiderFace/WIDER_images_add_noise/train"   # D(H)
    C.NOISE.GENERATOR_WEIGHTS = "./pretrained_weights/noise_pix2pix_G.pth"
    C.NOISE.LR = 2e-4
    C.NOISE.BETA1 = 0.5
    C.NOISE.EPOCHS = 100                # at the initial lr
    C.NOISE.EPOCHS_DECAY = 100          # then linear decay to zero
    C.NOISE.BATCH_SIZE = 8
    C.NOISE.CROP = 256
    C.NOISE.LAMBDA_L1 = 100.0
    C.NOISE.NGF = 64                    # generator width (pix2pix default); small for demos
    C.NOISE.NDF = 64                    # discriminator width

    # ---- YuNet (libfacedetection.train's yunet_n / yunet_s configs); MODEL.NAME=yunet_n|yunet_s ----
    # Only read when MODEL.NAME selects a YuNet; configs/models/yunet_*.yaml set the shared keys
    # (DETECT.*, AUG.img_mean, SOLVER.*) to that code's values.
    C.YUNET = EasyDict()
    C.YUNET.STRIDES = [8, 16, 32]
    C.YUNET.CENTER_RADIUS = 2.5         # SimOTA assigner
    C.YUNET.W_CLS = 1.0
    C.YUNET.W_OBJ = 1.0
    C.YUNET.W_BBOX = 5.0                # EIoU
    C.YUNET.W_KPS = 0.1                 # smooth L1 on the landmarks
    C.YUNET.KPS_BETA = 0.1111111111111111
    C.YUNET.CROP_CHOICE = [0.5, 0.7, 0.9, 1.1, 1.3, 1.5]   # RandomSquareCrop (yunet_s: 0.3..1.0)
    C.YUNET.INPUT_SIZE = 640            # training resize (square)
    C.YUNET.FLIP_RATIO = 0.5            # RandomFlip (horizontal, landmarks swapped left/right)
    C.YUNET.BOX_LOSS = "eiou"           # eiou (released configs) | diou (what yunet_s.pth used)
    C.YUNET.SCORE = "sqrt"              # sqrt(cls*obj), deployed | product: mmdet's test score
    C.YUNET.NMS_BOXES = "opencv"        # opencv: NMS on int x,y,w,h (FaceDetectorYN) | float

    # ---- RetinaFace (biubug6/Pytorch_Retinaface cfg_mnet / cfg_re50); MODEL.NAME=retinaface_* ----
    C.RETINAFACE = EasyDict()
    C.RETINAFACE.MIN_SIZES = [[16, 32], [64, 128], [256, 512]]
    C.RETINAFACE.STEPS = [8, 16, 32]
    C.RETINAFACE.VARIANCE = [0.1, 0.2]
    C.RETINAFACE.CLIP = False
    C.RETINAFACE.LOC_WEIGHT = 2.0
    C.RETINAFACE.OVERLAP_THRESH = 0.35
    C.RETINAFACE.NEG_POS = 7
    C.RETINAFACE.IMAGE_SIZE = 640       # training crop size (840 for ResNet-50)
    C.RETINAFACE.KEEP_TOP_K = 750       # detections kept after NMS (detect.py); <= 0: all
    C.RETINAFACE.MATCH_MIN_IOU = 0.2    # faces whose best prior IoU is lower are not forced
    C.RETINAFACE.CROP_SCALES = [0.3, 0.45, 0.6, 0.8, 1.0]   # square crop side / short side
    C.RETINAFACE.MIN_FACE_PX = 0.0      # crop keeps faces with min(w+1, h+1) at IMAGE_SIZE > this

    # ---- ours: the pseudo-label student (train.py; docs/DUAL_TEACHER.md) ----
    C.PSEUDO = EasyDict()
    C.PSEUDO.ENABLE = False             # train on pseudo-labelled target images too
    C.PSEUDO.LIST = ""                  # tools/make_pseudo_labels.py's list (paths below DATA_ROOT)
    C.PSEUDO.HIGH = 0.5                 # score >= HIGH: a face
    C.PSEUDO.LOW = 0.3                  # LOW <= score < HIGH: ignored; below LOW: background
    C.PSEUDO.WEIGHT = 1.0               # weight of every pseudo-label detection term (pl_*)
    C.PSEUDO.BATCH_SIZE = 8             # global, split over the processes like SOLVER.BATCH_SIZE
    C.PSEUDO.STRONG_AUG = True          # student: strong photometric view (adapt/pseudo/strong_view.py)
    C.PSEUDO.STRONG_LOWLIGHT_PROB = 0.0  # strong view: extra darkening + sensor noise
    # the mean teacher: an EMA of the student's detector (adapt/pseudo/ema.py)
    C.EMA = EasyDict()
    C.EMA.ENABLE = False
    C.EMA.DECAY = 0.9996
    C.EMA.TAU = 0.0                     # warm-up d * (1 - exp(-k / TAU)); 0 = off
    C.EMA.REFRESH = False               # the EMA teacher's detections replace the fixed labels
    C.EMA.REFRESH_AFTER = 0             # ... from this step on (fixed labels before)

    # ---- ours: the low-light camera model (data/camera.py, docs/NIGHT.md "Camera model") ----
    # PRESET: dainet | darkface | eld. Each other key is one camera parameter (same name as in
    # data/camera.py PRESETS): [] / '' = the preset's draw; [v] fixes it; [lo, hi] is a range
    # drawn like the preset's (uniform / log-uniform), else uniform; a full spec is a list such
    # as ['loguniform', lo, hi], ['truncnormal', mu, sd, lo, hi], ['choice', a, b, ...] or
    # ['loglinear', 'system_gain', slope, bias, sigma].
    C.CAMERA = EasyDict()
    C.CAMERA.PRESET = "darkface"
    for _name in ("gamma", "red_gain", "blue_gain", "rgb_gain", "light_red", "light_blue",
                  "exposure",                                            # darkness (linear)
                  "white_level", "system_gain", "read_noise", "tukey_lambda", "row_noise",
                  "black_level_error", "black_offset", "bits", "digital_gain", "awb",
                  "invert_tone", "apply_tone", "safe_invert", "clip_linear", "mosaic",
                  "clip_raw", "quantize_output"):                        # switches: [0] / [1]
        C.CAMERA[_name] = []
    C.CAMERA.ccm = ""                   # identity | choice (one of 4) | mix (convex mix of 4)
    C.CAMERA.shot_dist = ""             # poisson | gaussian (same variance)
    C.CAMERA.read_dist = ""             # gaussian | tukey (Tukey-lambda, shape tukey_lambda)

    # ---- ours: darkness in training (docs/NIGHT.md); the camera's parameters: CAMERA.* ----
    # which simulation AUG.lowlight_prob applies: toy (data/lowlight.py, the earlier default;
    # outputs as before) | camera (data/camera.py with CAMERA.PRESET and its CAMERA.* ranges)
    C.AUG.lowlight_model = "toy"
    # zero-shot day-to-night fine-tuning (adapt/zero_shot.py, configs/zero_shot_night.yaml):
    # every detection batch is trained as itself plus its camera-model dark copy (same boxes)
    C.ZERO_SHOT = EasyDict()
    C.ZERO_SHOT.ENABLE = False
    C.ZERO_SHOT.CLEAN = True            # False: the dark copies alone carry the detection loss
    C.ZERO_SHOT.CONSISTENCY = 0.0       # weight of the clean/dark feature consistency; 0 = off
    C.ZERO_SHOT.TEMPERATURE = 4.0       # of that loss's channel softmax (DAI-Net's T)
    # tools/train_enhancer.py: True replaces every training image by a camera-model night copy
    # (CAMERA.*), drawn anew per (RUN.SEED, epoch, image); False trains on the images as they are
    C.ENHANCE.TRAIN_CAMERA = False

    # ---- ours: the thresholds of night mode's `--enhance auto` (lowlevel/enhancers.py AutoRule;
    # luma and noise in 8-bit grey levels; docs/NIGHT.md "Night mode") ----
    C.NIGHT = EasyDict()
    C.NIGHT.pass_mean = 100.0           # mean luma >= this: the image is returned unchanged
    C.NIGHT.noise_min = 0.8             # noise below this and ...
    C.NIGHT.clean_mean = 25.0           # ... mean luma >= this: unchanged (a dim, clean photo)
    C.NIGHT.dark_mean = 8.0             # below this the blur is dark_blur_sigma
    C.NIGHT.blur_sigma = 1.0            # Gaussian denoising before CLAHE, px
    C.NIGHT.dark_blur_sigma = 1.5
    C.NIGHT.dim_mean = 20.0             # below this CLAHE clips at dim_clahe_clip
    C.NIGHT.clahe_clip = 2.0
    C.NIGHT.dim_clahe_clip = 3.0
    C.NIGHT.clahe_grid = 8

    # ---- ours: self-training on a user's night footage (tools/adapt_to_night.py,
    # adapt/pseudo/night.py, configs/adapt_to_night.yaml; PSEUDO.HIGH/LOW/BATCH_SIZE, EMA.DECAY/TAU
    # and SOLVER.* apply too; docs/NIGHT.md "Adapting to your footage") ----
    C.ADAPT = EasyDict()
    C.ADAPT.IMAGES = ""                 # the footage: image, folder, list file, video, camera index
    C.ADAPT.EVERY = 1.0                 # seconds between sampled video frames (0: every frame)
    C.ADAPT.MAX_FRAMES = 0              # frames taken from the footage; 0 = all
    C.ADAPT.HOLDOUT = 0.2               # share of the frames held out for the before/after report
    C.ADAPT.ENHANCE = "auto"            # the teacher's night mode (lowlevel/enhancers.py)
    C.ADAPT.TEACHER_INPUT = "both"      # the teacher sees: raw | enhanced | both (fused)
    C.ADAPT.STUDENT_INPUT = "raw"       # the student trains/is measured on: raw | enhanced
    C.ADAPT.SCALES = [1.0]              # teacher passes: resize factors (each also flipped)
    C.ADAPT.FLIP = True
    C.ADAPT.FUSION = "wbf"              # merging the teacher's passes: wbf | nms
    C.ADAPT.IOU = 0.55                  # fusion IoU
    C.ADAPT.SKIP_THRESH = 0.1           # teacher boxes under this score are not fused
    C.ADAPT.ROUND_STEPS = 50            # steps between pseudo-label refreshes by the EMA teacher
    C.ADAPT.MAX_ROUNDS = 8
    C.ADAPT.PATIENCE = 2                # rounds without a better held-out score before stopping
    C.ADAPT.MIN_DELTA = 0.0             # what counts as better
    C.ADAPT.MATCH_IOU = 0.5             # teacher-student agreement: boxes matched at this IoU
    C.ADAPT.SYNTH_BATCH_SIZE = 4        # per step: confident frames, brightened then camera-darkened
    C.ADAPT.DARKEN_PRESET = "darkface"  # data/camera.py preset of that darkening
    C.ADAPT.LABELLED = ""               # optional labelled daylight images (annotation file)
    C.ADAPT.LABELLED_FORMAT = "auto"    # any format of data/annotations.py
    C.ADAPT.LABELLED_ROOT = ""          # their image root ('' = the format's default)
    C.ADAPT.LABELLED_BATCH_SIZE = 4
    C.ADAPT.LABELLED_DARKEN_PROB = 0.5  # labelled images camera-darkened with this probability
    C.ADAPT.KEEP = "ema"                # the adapted weights: ema (mean teacher) | student
    C.ADAPT.EXAMPLES = 4                # held-out frames drawn before/after in the report
    C.ADAPT.ONNX = True                 # export the adapted detector to ONNX

    # ---- ours: how a run executes ----
    C.RUN = EasyDict()
    C.RUN.DEVICE = "auto"               # auto | cpu | cuda | cuda:N
    C.RUN.AMP = "none"                  # none | bf16 | fp16
    C.RUN.CHANNELS_LAST = False
    C.RUN.NUM_WORKERS = 4
    C.RUN.SEED = 0
    C.RUN.OUTPUT_DIR = "./weights"
    C.RUN.NAME = ""                     # '' derives the reference-style folder name
    C.RUN.LOG_EVERY = 10
    C.RUN.CKPT_EVERY = 2500
    C.RUN.KEEP_CKPTS = 0                # 0 keeps every periodic checkpoint
    C.RUN.EVAL_EVERY = 0                # train.py: AP on FACE.SRC_VAL_FILE every N steps; 0 = off
    C.RUN.EVAL_IMAGES = 0               # evaluate the first N images of that list; 0 = all
    C.RUN.EVAL_PROTOCOL = "darkface"    # darkface: val_ap | wider: val_ap_wider (all faces) | both
    C.RUN.EVAL_METRIC = "val_ap"        # the metric best.pth maximises (engine/validation.py)
    C.RUN.TENSORBOARD = True
    C.RUN.DDP_BACKEND = "auto"          # auto: nccl on CUDA, gloo otherwise
    return C


# ---------------------------------------------------------------------------------------------
# overrides


def _check_type(key: str, default: Any, value: Any, origin: str) -> Any:
    """Return ``value`` converted to the type of ``default`` or raise naming ``key``."""
    where = f" (in {origin})" if origin else ""

    def fail(expected: str):
        raise ConfigError(f"config key {key}{where}: expected {expected}, got "
                          f"{type(value).__name__} {value!r}")

    if isinstance(default, bool):
        if not isinstance(value, bool):
            fail("a bool (True/False)")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            fail("an int")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail("a number")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            fail("a string")
        return value
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            fail("a list")
        if default and len(value) and not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value) \
                and all(isinstance(d, (int, float)) for d in default):
            fail("a list of numbers")
        return list(value)
    if isinstance(default, Mapping):
        fail("a section (give KEY.SUB=VALUE)")
    return value


def _parse_value(raw: str, default: Any) -> Any:
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw                       # a bare word: a string such as a path
    if isinstance(default, str) and not isinstance(value, str):
        return raw                       # e.g. RUN.NAME=123 stays the string "123"
    return value


def set_key(cfg: EasyDict, dotted: str, value: Any, origin: str = "") -> None:
    """Set ``cfg.A.B = value`` after checking that the key exists and the type fits."""
    parts = dotted.split(".")
    node = cfg
    for i, part in enumerate(parts):
        if not isinstance(node, Mapping) or part not in node:
            where = f" (in {origin})" if origin else ""
            known = ", ".join(sorted(node.keys())) if isinstance(node, Mapping) else ""
            raise ConfigError(f"unknown config key {'.'.join(parts[:i + 1])}{where}; "
                              f"known here: {known}")
        if i < len(parts) - 1:
            node = node[part]
    node[parts[-1]] = _check_type(dotted, node[parts[-1]], value, origin)


def apply_overrides(cfg: EasyDict, overrides: Iterable[str]) -> EasyDict:
    """Apply ``KEY.SUB=VALUE`` strings in order."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form KEY.SUB=VALUE")
        key, raw = item.split("=", 1)
        key = key.strip()
        node = cfg
        for part in key.split(".")[:-1]:
            node = node.get(part, {}) if isinstance(node, Mapping) else {}
        default = node.get(key.split(".")[-1]) if isinstance(node, Mapping) else None
        set_key(cfg, key, _parse_value(raw.strip(), default), origin="command line")
    return cfg


def _flatten(tree: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, name + "."))
        else:
            out[name] = v
    return out


def _yaml_loader():
    """PyYAML's SafeLoader reading floats as YAML 1.2 does: ``1e-3`` is a number (YAML 1.1,
    PyYAML's default, wants ``1.0e-3`` and reads ``1e-3`` as the string "1e-3")."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))
    return Loader


def apply_preset(cfg: EasyDict, path: str | Path) -> EasyDict:
    """Merge a YAML or JSON preset (nested like the tree, or flat dotted keys)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"preset file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            tree = json.loads(text)
        else:
            import yaml
            tree = yaml.load(text, Loader=_yaml_loader()) or {}
    except Exception as exc:             # noqa: BLE001 - any parser error becomes one message
        raise ConfigError(f"preset file {path} could not be parsed: {exc}") from exc
    if not isinstance(tree, Mapping):
        raise ConfigError(f"preset file {path}: the top level must be a mapping")
    for key, value in _flatten(tree).items():
        set_key(cfg, key, value, origin=str(path))
    return cfg


# configs/models/<MODEL.NAME>.yaml: the detector's own defaults (priors, thresholds, input
# normalisation, schedule), applied under the user's presets and overrides
MODEL_PRESET_DIR = Path(__file__).resolve().parents[1] / "configs" / "models"


def model_preset(name: str) -> Path | None:
    path = MODEL_PRESET_DIR / f"{name}.yaml"
    return path if path.is_file() else None


def load_config(presets: Iterable[str | Path] = (), overrides: Iterable[str] = (),
                base: EasyDict | None = None) -> EasyDict:
    """Defaults (or ``base``), then each preset file, then the overrides.

    Without ``base``, the preset of the selected detector (``configs/models/<MODEL.NAME>.yaml``)
    is applied first when MODEL.NAME names one, so that ``MODEL.NAME=yunet_n`` alone gives
    YuNet's thresholds, normalisation and schedule; the user's presets and overrides still win.
    A checkpoint's config (``base``) already holds its detector's values.
    """
    presets, overrides = list(presets or ()), list(overrides or ())

    def build(start: EasyDict) -> EasyDict:
        cfg = copy.deepcopy(start)
        for preset in presets:
            apply_preset(cfg, preset)
        apply_overrides(cfg, overrides)
        return cfg

    if base is not None:
        return build(base)
    cfg = build(default_config())
    preset = model_preset(cfg.MODEL.NAME)
    if preset is None:
        return cfg
    start = apply_preset(default_config(), preset)
    if start.MODEL.NAME != cfg.MODEL.NAME:
        raise ConfigError(f"model preset {preset} sets MODEL.NAME={start.MODEL.NAME!r}, not "
                          f"{cfg.MODEL.NAME!r}")
    return build(start)


def merge_saved(saved: Mapping) -> EasyDict:
    """Rebuild a config from one stored in a checkpoint, tolerating keys added since."""
    cfg = default_config()
    for key, value in _flatten(saved).items():
        try:
            set_key(cfg, key, value, origin="checkpoint")
        except ConfigError:
            continue                     # a key from another version of the project
    return cfg


def to_dict(cfg: Mapping) -> dict:
    """Plain nested dict (JSON/YAML serialisable) of a config tree."""
    return json.loads(json.dumps(cfg))


def dump(cfg: Mapping, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    import yaml
    write_text_atomic(yaml.safe_dump(to_dict(cfg), sort_keys=False), path)
