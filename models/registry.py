"""THE detector registry: ``MODEL.NAME`` -> a :class:`models.interface.DetectorEntry`.

A detector family is one folder ``models/<family>/`` (net, loss, post-processing, training
transforms, ONNX decoder, ``entry.py``), one line in :data:`DETECTORS` (a function returning its
entry, imported lazily so that importing this module builds nothing) and one preset file
``configs/models/<name>.yaml``; docs/DETECTORS.md walks through it. Only this module imports the
families.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from models.interface import REQUIRED_FIELDS, DetectorEntry, check_interface


def _dsfd() -> DetectorEntry:
    from models.dsfd.entry import dsfd_entry
    return dsfd_entry()


def _yunet(variant: str) -> Callable[[], DetectorEntry]:
    def entry() -> DetectorEntry:
        from models.yunet.entry import yunet_entry
        return yunet_entry(variant)
    return entry


def _retinaface(variant: str) -> Callable[[], DetectorEntry]:
    def entry() -> DetectorEntry:
        from models.retinaface.entry import retinaface_entry
        return retinaface_entry(variant)
    return entry


DETECTORS: dict[str, Callable[[], DetectorEntry]] = {
    "dsfd_vgg": _dsfd,
    "yunet_n": _yunet("yunet_n"),
    "yunet_s": _yunet("yunet_s"),
    "retinaface_mnet": _retinaface("retinaface_mnet"),
    "retinaface_r50": _retinaface("retinaface_r50"),
}


def get_entry(name: str) -> DetectorEntry:
    if name not in DETECTORS:
        raise ValueError(f"config key MODEL.NAME={name!r} is not one of {sorted(DETECTORS)}")
    return DETECTORS[name]()


def entry_of(cfg) -> DetectorEntry:
    """The entry of the detector the config selects: the one place that reads MODEL.NAME."""
    return get_entry(cfg.MODEL.NAME)


def build_net(cfg) -> nn.Module:
    """The network of ``cfg.MODEL.NAME``, after checking the config fits it."""
    entry = entry_of(cfg)
    if entry.check is not None:
        entry.check(cfg)
    net = entry.build(cfg)
    check_interface(net)
    return net


def build_detector(model_cfg, num_classes: int = 2) -> nn.Module:
    """Build ``MODEL.NAME`` with ``MODEL.WIDTH`` from the MODEL section alone (DSFD's
    constructor arguments; other detectors need the whole config: :func:`build_net`)."""
    from models.dsfd.net import DSFD
    get_entry(model_cfg.NAME)                    # an unknown name is an error naming the key
    if model_cfg.NAME != "dsfd_vgg":
        raise ValueError(f"config key MODEL.NAME={model_cfg.NAME!r}: build it with "
                         f"models.registry.build_net(cfg)")
    return DSFD(num_classes=num_classes, width=model_cfg.WIDTH)


def ssl_input_is_bgr(cfg) -> bool:
    """The task loaders normalise RGB pixels by AUG.img_mean (given B, G, R); a BGR detector
    (YuNet, RetinaFace) reads the same tensors with the channels flipped, which is exact when
    its input mean is AUG.img_mean and it does not scale."""
    spec = entry_of(cfg).input_spec(cfg)
    bgr_mean = tuple(cfg.AUG.img_mean)
    mean = bgr_mean if spec.channel_order == "BGR" else bgr_mean[::-1]
    if tuple(spec.mean) != mean or any(s != 1 for s in spec.std):
        raise ValueError(f"config key AUG.img_mean={list(cfg.AUG.img_mean)} does not match the "
                         f"input normalisation of MODEL.NAME={cfg.MODEL.NAME} (mean "
                         f"{list(spec.mean)} in {spec.channel_order} order, std "
                         f"{list(spec.std)}); the self-supervised loaders would feed it "
                         f"wrongly normalised images")
    return spec.channel_order == "BGR"


def build_train_dataset(cfg, list_file, root, seed, records=None):
    """The training dataset of ``cfg.MODEL.NAME`` (its entry's ``train_dataset``): samples
    ``(input [3, S, S] float32, target [n, 5] or [n, 15], skipped)`` augmented as that detector's
    reference trains it, from ``records`` (FaceRecords, e.g. pseudo labels) when given, else
    ``list_file`` in FACE.SRC_FORMAT (``auto`` sniffs it: the WIDER list, RetinaFace
    ``label.txt``, labelv2 or a Laboro TV root), images under FACE.IMAGE_ROOT or the format's own
    layout (the WIDER list: FACE.DATA_ROOT)."""
    return entry_of(cfg).train_dataset(cfg, list_file, root, seed, records=records)


def missing_fields(entry: DetectorEntry) -> list[str]:
    """The :data:`models.interface.REQUIRED_FIELDS` that ``entry`` leaves empty."""
    return [f for f in REQUIRED_FIELDS if not getattr(entry, f)]
