"""Low-level image processing in front of a detector: the enhancer registry (night mode)."""
