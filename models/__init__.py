"""Detector families (one folder each), the registry, the detector interface and inference."""
from utils import moved

moved.install()           # the old import paths of modules that moved (utils/moved.py)
