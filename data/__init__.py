"""Data shared by every family: formats, folders, lists, loaders, low-light ops and the config."""
from utils import moved

moved.install()           # the old import paths of modules that moved (utils/moved.py)
