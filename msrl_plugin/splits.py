"""Deprecated import path, kept for one release: the folds now live in :mod:`msrl_plugin.evaluation.splits`."""
from .evaluation.splits import Fold, folds_from_split_tables, kfold_splits, select_folds

__all__ = ["Fold", "folds_from_split_tables", "kfold_splits", "select_folds"]
