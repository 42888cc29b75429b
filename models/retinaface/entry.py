"""RetinaFace's registry entry (``retinaface_mnet``, ``retinaface_r50``; ``models/registry.py``
registers it)."""
from __future__ import annotations

from torch import Tensor

from models.interface import DetectorEntry, EntryDecoder, InputSpec, variant_spec
from models.retinaface.loss import RetinaFaceLoss
from models.retinaface.net import (ANCHORS_PER_CELL, NUM_LANDMARKS, SPECS, RetinaFace,
                                   RetinaFaceOutput, export_retinaface_onnx,
                                   load_retinaface_weights)
from models.retinaface.priors import PriorCache, detect_faces
from models.retinaface.transforms import build_retinaface_dataset

def _check(cfg) -> None:
    r = cfg.RETINAFACE
    if cfg.MODEL.NAME not in SPECS:
        raise ValueError(f"config key MODEL.NAME={cfg.MODEL.NAME!r} is not a RetinaFace "
                         f"({sorted(SPECS)})")
    if len(r.STEPS) != 3 or len(r.MIN_SIZES) != 3:
        raise ValueError("config keys RETINAFACE.STEPS and RETINAFACE.MIN_SIZES need 3 levels "
                         f"(got {len(r.STEPS)} and {len(r.MIN_SIZES)})")
    if any(len(sizes) != ANCHORS_PER_CELL for sizes in r.MIN_SIZES):
        raise ValueError(f"config key RETINAFACE.MIN_SIZES: the heads predict "
                         f"{ANCHORS_PER_CELL} anchors per cell, got {r.MIN_SIZES}")
    if cfg.NUM_CLASSES != 2:
        raise ValueError(f"config key NUM_CLASSES={cfg.NUM_CLASSES}: RetinaFace has 2 classes")


def _criterion(cfg):
    r = cfg.RETINAFACE
    return RetinaFaceLoss(r.MIN_SIZES, r.STEPS, r.VARIANCE, clip=r.CLIP,
                          overlap_thresh=r.OVERLAP_THRESH, neg_pos=r.NEG_POS,
                          loc_weight=r.LOC_WEIGHT, match_min_iou=r.MATCH_MIN_IOU)


def retinaface_postprocess(cfg):
    """``fn(out, image_size) -> list of [k, 15]``: x1, y1, x2, y2, score, 5 x (x, y), normalised
    by the input size (DETECT.CONF_THRESH, DETECT.NMS_TOP_K, DETECT.NMS_THRESH,
    RETINAFACE.KEEP_TOP_K; a cap <= 0 is no cap, as test_widerface.py)."""
    r, d = cfg.RETINAFACE, cfg.DETECT
    priors = PriorCache(r.MIN_SIZES, r.STEPS, r.CLIP)
    variances = tuple(r.VARIANCE)

    def run(out: RetinaFaceOutput, image_size) -> list[Tensor]:
        return detect_faces(out.loc, out.conf, out.landms, priors(image_size, out.loc.device),
                            image_size, variances, d.CONF_THRESH, d.NMS_THRESH, d.NMS_TOP_K,
                            r.KEEP_TOP_K)
    return run


def _input_spec(cfg) -> InputSpec:
    return InputSpec("BGR", tuple(float(v) for v in cfg.AUG.img_mean))


def _graph_output(a: dict) -> RetinaFaceOutput:
    """The exported graph's outputs as the network's: its softmax back to logits
    (softmax(log p) = p)."""
    return RetinaFaceOutput(a["loc"], a["conf"].clamp_min(1e-30).log(), a["landms"], [])


def _export_opencv(net, path, size, opset):
    export_retinaface_onnx(net, path, opset=opset, example_size=size, dynamic=False)


def retinaface_entry(name: str) -> DetectorEntry:
    variant_spec(SPECS, name, "RetinaFace")
    entry = DetectorEntry(build=lambda cfg: RetinaFace(name), criterion=_criterion,
                          postprocess=retinaface_postprocess, input_spec=_input_spec,
                          num_landmarks=NUM_LANDMARKS,
                          preset=f"configs/models/{name}.yaml", check=_check,
                          export_onnx=export_retinaface_onnx,
                          extra={"load_weights": load_retinaface_weights},
                          train_dataset=build_retinaface_dataset,
                          onnx_decoder=lambda cfg: EntryDecoder(cfg, entry, _graph_output),
                          export_opencv=_export_opencv)
    return entry
