"""YuNet (libfacedetection.train's yunet_n / yunet_s): net, loss, post-processing, training
transforms, ONNX decoder and registry entry (docs/YUNET.md).

The names users import from ``models.yunet`` are re-exported here."""
from models.yunet.entry import yunet_entry
from models.yunet.net import YuNet, YuNetOutput, export_yunet_onnx, load_yunet_weights

__all__ = ["YuNet", "YuNetOutput", "export_yunet_onnx", "load_yunet_weights", "yunet_entry"]
