"""conf/ restates the user-facing defaults of segkit.defaults (a YAML cannot import them)."""

from __future__ import annotations

from omegaconf import OmegaConf

from segkit.defaults import (
    CALIBRATION_OVERLAPS,
    CALIBRATION_TOLERANCE,
    CALIBRATION_WINDOW_SCALES,
    DEFAULT_OVERLAP,
)
from tests.utils import REPO


def test_train_yaml_states_the_code_defaults():
    train = OmegaConf.load(REPO / "conf" / "train.yaml")
    assert train.val_overlap == DEFAULT_OVERLAP
    assert tuple(train.calibrate_inference.overlaps) == CALIBRATION_OVERLAPS
    assert tuple(train.calibrate_inference.window_scales) == CALIBRATION_WINDOW_SCALES
    assert train.calibrate_inference.tolerance == CALIBRATION_TOLERANCE
