"""Pseudo-label self-training; ``night``: adapting a detector to a user's own night footage."""
