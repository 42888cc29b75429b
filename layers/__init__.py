"""Generic box operations: encode/decode, IoU, voting, fusion."""
from utils import moved

moved.install()           # the old import paths of modules that moved (utils/moved.py)
