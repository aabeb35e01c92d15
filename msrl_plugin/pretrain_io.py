"""Save and read stage-1 (GSL pre-training) checkpoints: tensors and plain values only."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .aggregators.base import cpu_state, read_checkpoint
from .atomic import write_torch

PRETRAIN_FORMAT = "msrl-plugin-pretrained-gsl"


def save_pretrained(path: str | Path, model: torch.nn.Module, feature_dim: int, genomics_columns: list[str],
                    case_ids: list[str], params: dict[str, Any], history: list[dict[str, float]]) -> Path:
    payload = {"format": PRETRAIN_FORMAT, "version": 1, "feature_dim": int(feature_dim),
               "genomics_columns": list(genomics_columns), "case_ids": list(case_ids),
               "params": {k: v for k, v in params.items() if isinstance(v, (int, float, str, bool, type(None)))},
               "history": [{k: float(v) for k, v in h.items()} for h in history],
               "state_dict": cpu_state(model)}
    write_torch(path, payload)
    return Path(path)


def read_pretrained(path: str | Path) -> dict[str, Any]:
    """A stage-1 checkpoint, read as safely as a model checkpoint (plain tensors and values only)."""
    return read_checkpoint(path, PRETRAIN_FORMAT)
