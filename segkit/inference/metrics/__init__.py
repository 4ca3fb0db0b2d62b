"""Scoring label maps: one Dice on confusion counts, surface distances, ``segkit evaluate``."""
