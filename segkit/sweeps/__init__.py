"""Sweeps: expanding sweep presets for pre-flight, SLURM dry runs, and multirun reports."""

from segkit.sweeps.preset import sweep_overrides
from segkit.sweeps.report import collect, write_report
from segkit.sweeps.slurm import preview_sbatch

__all__ = ["collect", "preview_sbatch", "sweep_overrides", "write_report"]
