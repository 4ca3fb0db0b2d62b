"""Predicting folders of cases: discovery, checkpoints, parts, post-processing, decisions."""
