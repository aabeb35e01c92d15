"""Resuming a fit: the training state written after every epoch, and the checks before it is read back."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import distributed
from ..atomic import write_torch
from ..checkpoint import TRAINING_STATE_FORMAT, cpu_state, read_checkpoint
from ..cohort import Cohort
from ..errors import CheckpointError

_OTHER_STATE_FIX = "resume with the same flags and features, or move the file away to restart that fold"


class TrainingStateMixin:
    """The resume half of :class:`~msrl_plugin.aggregators.base.Aggregator` (model, optimiser, EMA target, RNG
    states and epoch, written atomically after every epoch)."""

    _training_state_path: Path | None = None

    def enable_resume(self, path: str | Path) -> TrainingStateMixin:
        """Checkpoint the training state to ``path`` after each epoch and resume from it if it exists."""
        self._training_state_path = Path(path)
        return self

    def has_training_state(self) -> bool:
        return self._training_state_path is not None and self._training_state_path.is_file()

    def _save_training_state(self, epoch: int, model: nn.Module, optimiser, extra_modules) -> None:
        if self._training_state_path is None or not distributed.is_main():
            return
        state = {"format": TRAINING_STATE_FORMAT, "aggregator": self.name, "epoch": epoch,
                 "params": json.dumps(self.get_params(), default=str), "model": cpu_state(model),
                 "feature_dim": int(self.feature_dim_), "genomics_columns": list(self.genomics_columns_),
                 "optimiser": optimiser.state_dict(), "modules": {k: cpu_state(m) for k, m in extra_modules.items()},
                 "history": json.dumps(self.history_), "extra": json.dumps(self._resume_extra()),
                 "generator": self._generator.get_state(), "torch_rng": torch.get_rng_state()}
        write_torch(self._training_state_path, state)

    def _restore_training_state(self, model: nn.Module, optimiser, extra_modules) -> int:
        if not self.has_training_state():
            return 0
        state = self._read_training_state(self._training_state_path)
        if state.get("feature_dim", self.feature_dim_) != self.feature_dim_:
            raise CheckpointError(f"training state was written for {state['feature_dim']}-d features, these are "
                                  f"{self.feature_dim_}-d", self._training_state_path, _OTHER_STATE_FIX)
        try:
            model.load_state_dict(state["model"])
            optimiser.load_state_dict(state["optimiser"])
        except (RuntimeError, ValueError, KeyError) as exc:  # other features or genomics columns
            raise CheckpointError(f"training state does not fit this model ({str(exc).splitlines()[0][:120]})",
                                  self._training_state_path, _OTHER_STATE_FIX) from None
        for name, module in extra_modules.items():
            module.load_state_dict(state["modules"][name])
        self.history_ = json.loads(state["history"])
        for name, value in json.loads(state["extra"]).items():
            setattr(self, name, value)
        self._generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        return int(state["epoch"])

    def _read_training_state(self, path: Path) -> dict[str, Any]:
        state = read_checkpoint(path, TRAINING_STATE_FORMAT)
        if state.get("aggregator") != self.name or json.loads(state["params"]) != json.loads(
                json.dumps(self.get_params(), default=str)):
            raise CheckpointError("training state was written by a run with other settings", path,
                                  _OTHER_STATE_FIX)
        tensors = [v for part in (state.get("model"), *state.get("modules", {}).values()) if isinstance(part, dict)
                   for v in part.values() if torch.is_tensor(v) and v.is_floating_point()]
        if not all(bool(torch.isfinite(t).all()) for t in tensors):  # left by a diverged run of an older version
            raise CheckpointError("training state holds non-finite weights (NaN/Inf): that run diverged and cannot "
                                  "be resumed", path, "move the file away and run again with a lower --lr (or "
                                  "rescaled inputs) under another --exp-code")
        return state

    def check_training_state(self, path: str | Path, cohort: Cohort) -> None:
        """Refuse, before any work, a training state of another model, settings or features than ``cohort``'s."""
        state = self._read_training_state(Path(path))
        columns = [] if cohort.genomics is None else [str(c) for c in cohort.genomics.columns]
        if state.get("feature_dim", cohort.feature_dim) != cohort.feature_dim or \
                state.get("genomics_columns", columns) != columns:
            raise CheckpointError(f"training state was written for {state.get('feature_dim')}-d features and "
                                  f"{len(state.get('genomics_columns', columns))} genomic column(s), not this "
                                  f"cohort's {cohort.feature_dim}-d and {len(columns)}", path, _OTHER_STATE_FIX)

    def _resume_extra(self) -> dict[str, Any]:
        """Fitted attributes outside the modules that a resumed run restores (name -> JSON-able value)."""
        return {}

    def clear_training_state(self) -> None:
        if self._training_state_path is not None:  # another job of the same fold may have removed it already
            self._training_state_path.unlink(missing_ok=True)
