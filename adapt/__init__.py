"""Adaptation methods that train a detector for the night (docs/ARCHITECTURE.md: adapt/)."""
