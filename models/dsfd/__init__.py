"""DSFD-VGG16, HLA-Face's detector: net, anchors, loss, post-processing, training transforms,
ONNX decoder and registry entry (docs/ARCHITECTURE.md: one folder per family)."""
