"""Defaults that several layers read, each written once here.

``conf/`` restates the user-facing ones (a YAML cannot import); ``tests`` check the
two agree.
"""

# Sliding-window overlap (fraction of the window) when none is given: validation during
# training (conf/train.yaml: val_overlap), segkit predict, and the inference functions.
DEFAULT_OVERLAP = 0.5

# Overlaps the end-of-training calibration measures on the validation fold
# (conf/train.yaml: calibrate.overlaps).
CALIBRATION_OVERLAPS = (0.0, 0.25, DEFAULT_OVERLAP)

__all__ = ["CALIBRATION_OVERLAPS", "DEFAULT_OVERLAP"]
