"""Prediction: one inference path (mode decision, sliding window), NIfTI writing, export."""

from segkit.inference.engine import (
    Decision,
    InferenceSettings,
    decide,
    infer,
    predict_logits,
    sliding_window,
    whole_volume,
)

__all__ = [
    "Decision",
    "InferenceSettings",
    "decide",
    "infer",
    "predict_logits",
    "sliding_window",
    "whole_volume",
]
