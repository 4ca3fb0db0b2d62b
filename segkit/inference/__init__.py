"""Prediction: whole-volume or sliding-window logits, NIfTI writing, export."""

from segkit.inference.engine import predict_logits, sliding_window, whole_volume

__all__ = ["predict_logits", "sliding_window", "whole_volume"]
