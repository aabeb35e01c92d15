"""Checkpoint files: reading them safely (tensors and plain values only), naming which msrl-plugin file a wrong
one is, and what a checkpoint's values must satisfy before a model is rebuilt from them.

A checkpoint is data: its survival-bin edges and scaler statistics are used as they are, so a damaged or edited
file with NaN, decreasing or too few edges would give bins with backwards intervals or the wrong count (and exit
0). Each check is one :class:`CheckpointError` naming the file.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import CheckpointError

CHECKPOINT_FORMAT = "msrl-plugin-model"
CHECKPOINT_VERSION = 1
TRAINING_STATE_FORMAT = "msrl-plugin-training-state"

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


def read_checkpoint(path: str | Path, expected_format: str = CHECKPOINT_FORMAT) -> dict[str, Any]:
    """Read a checkpoint safely: tensors and plain values only (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint file not found", path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        truncated = _truncated(path, exc)
        if truncated:
            raise CheckpointError(f"truncated or damaged checkpoint ({truncated})", path,
                                  "copy or download the file again (compare its size with the original), or "
                                  "re-save the model") from None
        # name the refused pickled global, not torch's advice on how to load the file unsafely
        refused = re.search(r"GLOBAL ([\w.]+)", str(exc))
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        what = f"it holds a pickled object, {refused.group(1)}" if refused else first[:160]
        raise CheckpointError(f"not a safe msrl-plugin checkpoint (refused to load: {what})", path,
                              "only checkpoints written by msrl-plugin can be loaded; "
                              "pickled objects are never executed") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != expected_format:
        found = ckpt.get("format") if isinstance(ckpt, dict) else None
        if found in _FORMATS and found != expected_format:  # another msrl-plugin file: say which
            model = ckpt.get("aggregator")
            of = f" of a {str(model)[:40]!r} model" if isinstance(model, str) else ""
            raise CheckpointError(f"this is {_FORMATS[found]}{of}, not {_FORMATS.get(expected_format, 'one')}",
                                  path, _FORMAT_FIX.get(expected_format))
        raise CheckpointError("not an msrl-plugin checkpoint (a CLAM/raw state_dict?)", path,
                              _FORMAT_FIX.get(expected_format, _FORMAT_FIX[CHECKPOINT_FORMAT]))
    version = ckpt.get("version", 0)
    if type(version) is not int or version > CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint version {str(version)[:40]!r} is not one this msrl-plugin reads "
                              f"(<= {CHECKPOINT_VERSION})", path, "upgrade msrl-plugin, or re-save the model")
    return ckpt


#: the files msrl-plugin writes, by their ``format`` value (pretrain_io's is spelled out: it imports this module)
_FORMATS = {CHECKPOINT_FORMAT: "a trained msrl-plugin model checkpoint (msrl-plugin train)",
            TRAINING_STATE_FORMAT: "an msrl-plugin training state (a fold in progress)",
            "msrl-plugin-pretrained-gsl": "an MSRL stage-1 pre-training checkpoint (msrl-plugin pretrain)"}
_FORMAT_FIX = {CHECKPOINT_FORMAT: "pass a model checkpoint written by msrl-plugin train (s_<k>_checkpoint.pt)",
               "msrl-plugin-pretrained-gsl": "pass a file written by msrl-plugin pretrain as pretrained=..., or "
                                             "leave pretrained unset to pre-train inside each fold"}


def _truncated(path: Path, exc: Exception) -> str | None:
    """Why the file looks cut short (an interrupted copy or download), or None."""
    text = str(exc)
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return None
    if not head:
        return "the file is empty"
    if head == b"PK\x03\x04" and ("central directory" in text or "zip archive" in text or "failed reading" in text):
        return "the file ends early: its table of contents is missing"
    if isinstance(exc, EOFError) or "Ran out of input" in text:
        return "the file ends early"
    return None


def cpu_state(module: nn.Module) -> dict[str, Any]:
    """A state_dict on the CPU (non-tensor extra state, e.g. the buffer's case ids, kept as is)."""
    return {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in module.state_dict().items()}


def embedded_provenance(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """The run record a checkpoint carries (None for older checkpoints, or one that is not a JSON object)."""
    try:
        record = json.loads(ckpt.get("provenance") or "null")
    except (TypeError, ValueError):
        return None
    return record if isinstance(record, dict) else None
