"""Cross-validation: folds through the launcher, out-of-fold predictions, selection."""

from segkit.crossval.folds import Fold, FoldSet, read_folds
from segkit.crossval.oof import run_cv, summarise
from segkit.crossval.select import select

__all__ = ["Fold", "FoldSet", "read_folds", "run_cv", "select", "summarise"]
