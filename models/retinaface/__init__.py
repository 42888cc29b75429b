"""RetinaFace (biubug6/Pytorch_Retinaface's MobileNet-0.25 and ResNet-50): net, priors, loss,
training transforms, ONNX decoder and registry entry (docs/RETINAFACE.md).

The names users import from ``models.retinaface`` are re-exported here."""
from models.retinaface.entry import retinaface_entry
from models.retinaface.net import (RetinaFace, RetinaFaceOutput, export_retinaface_onnx,
                                   load_retinaface_weights)

__all__ = ["RetinaFace", "RetinaFaceOutput", "export_retinaface_onnx", "load_retinaface_weights",
           "retinaface_entry"]
