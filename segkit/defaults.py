"""Defaults that several layers read, each written once here.

``conf/`` restates the user-facing ones (a YAML cannot import); ``tests`` check the
two agree.
"""

# Sliding-window overlap (fraction of the window) when none is given: validation during
# training (conf/train.yaml: val_overlap), segkit predict, and the inference functions.
DEFAULT_OVERLAP = 0.5

# Overlaps, window sizes (multiples of the training patch) and the Dice tolerance of the
# end-of-training calibration on the validation fold (conf/train.yaml: calibrate_inference).
CALIBRATION_OVERLAPS = (0.0, 0.25, DEFAULT_OVERLAP)
CALIBRATION_WINDOW_SCALES = (1.0, 1.5)
CALIBRATION_TOLERANCE = 0.005

# Windows per forward call of the sliding window: 3D windows, and 2D windows (one slice
# each) of a 2D network on volumes.
SW_BATCH_SIZE = 4
SW_BATCH_SIZE_2D = 32

# The volume axis a 2D network slices across when the data module names none.
SLICE_AXIS = 2

__all__ = [
    "CALIBRATION_OVERLAPS",
    "CALIBRATION_TOLERANCE",
    "CALIBRATION_WINDOW_SCALES",
    "DEFAULT_OVERLAP",
    "SLICE_AXIS",
    "SW_BATCH_SIZE",
    "SW_BATCH_SIZE_2D",
]
