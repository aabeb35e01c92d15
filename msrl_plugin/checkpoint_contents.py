"""What a checkpoint's values must satisfy before a model is rebuilt from them.

A checkpoint is data: its survival-bin edges and scaler statistics are used as they are, so a damaged or edited
file with NaN, decreasing or too few edges would give bins with backwards intervals or the wrong count (and exit
0). Each check is one :class:`CheckpointError` naming the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import CheckpointError

DAMAGED_FIX = "re-save the model with msrl-plugin train"


def check_bin_edges(edges: Any, n_bins: int, path: str | Path | None) -> None:
    """Survival-bin edges: ``n_bins + 1`` finite numbers, strictly increasing."""
    try:
        values = np.asarray(edges, dtype=np.float64)
    except (TypeError, ValueError):
        values = np.asarray([np.nan])
    if values.ndim != 1 or len(values) != n_bins + 1:
        count = values.size if values.ndim else 0
        raise CheckpointError(f"damaged checkpoint: {count} survival-bin edge(s) for {n_bins} bins (needs "
                              f"{n_bins + 1})", path, DAMAGED_FIX)
    if not np.isfinite(values).all():
        raise CheckpointError("damaged checkpoint: its survival-bin edges are not all finite numbers "
                              f"({_show(values)})", path, DAMAGED_FIX)
    if np.any(np.diff(values) <= 0):
        raise CheckpointError("damaged checkpoint: its survival-bin edges are not strictly increasing "
                              f"({_show(values)})", path, DAMAGED_FIX)


def check_scaler(mean: np.ndarray, std: np.ndarray, n_columns: int, path: str | Path | None) -> None:
    """Genomics scaler: one finite mean and one finite positive std per recorded genomic column."""
    if mean.shape != (n_columns,) or std.shape != (n_columns,):
        raise CheckpointError(f"damaged checkpoint: genomics scaler of shape {tuple(mean.shape)}/"
                              f"{tuple(std.shape)} for {n_columns} genomic column(s)", path, DAMAGED_FIX)
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        raise CheckpointError("damaged checkpoint: its genomics scaler holds non-finite or non-positive values",
                              path, DAMAGED_FIX)


def _show(values: np.ndarray) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:8])
    return shown + (", ..." if len(values) > 8 else "")
