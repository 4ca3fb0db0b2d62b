"""Inference by job: ``engine/`` (the one sliding-window loop, its settings, output head and
memory model), ``predict/`` (cases, checkpoints, parts, post-processing, decisions and
``segkit predict``), ``metrics/`` (one Dice on confusion counts, surface distances,
``segkit evaluate``), calibration of the inference settings, and export."""
