"""Per-epoch training scalars for TensorBoard (``--log-data``, CLAM's ``--log_data``).

An :class:`EpochLog` is handed to an aggregator (``Aggregator.log_epochs_to``); its training loops report
to it and it writes the scalars with ``torch.utils.tensorboard`` (the optional ``tensorboard`` extra):

- ``train/loss`` (mean over the epoch's steps), ``train/lr``, and each loss term the model reports
  (MSRL: ``train/task``, ``train/task_borrowed``, ``train/teacher``, ``train/distill``, ``train/f_align``,
  ``train/g_align``, ``train/s_align``, and ``train/borrowed_share``, the share of the prediction's
  magnitude that comes from the borrowed genomic risk);
- ``val/<metric>`` (``c_index`` or ``auc`` ...) after every epoch when the fold has validation cases;
- MSRL's stage 1: ``pretrain/loss``, ``pretrain/intra``, ``pretrain/inter``, ``pretrain/fused``,
  ``pretrain/recall_at_k`` (held-out WSI -> genomics retrieval) and ``pretrain/chance``; the genomic
  teacher's pre-fit: ``teacher/loss`` per step.

The step of every scalar is the 1-based epoch (the step for ``teacher/``) of its stage. Logging changes no
result: the validation pass runs with the random number generators saved and restored.
"""
from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .errors import MSRLPluginError

EXTRA = "tensorboard"


def summary_writer_class():
    """``torch.utils.tensorboard.SummaryWriter``, or one error line naming the extra to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch's module raises ImportError when the tensorboard package is absent
        raise MSRLPluginError("--log-data writes TensorBoard event files, but the tensorboard package is not "
                              "installed", fix=f"pip install 'msrl-plugin[{EXTRA}]' (or pip install tensorboard), "
                              "or drop --log-data") from None
    return SummaryWriter


class EpochLog:
    """Scalars of one fit, written to ``log_dir`` as TensorBoard event files (flushed every epoch)."""

    def __init__(self, log_dir: str | Path, validation=None):
        self.log_dir = Path(log_dir)
        self.validation = validation  # a Cohort scored after every training epoch, or None
        self._writer = summary_writer_class()(log_dir=str(self.log_dir))
        self._terms: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._val_data = None

    # -- what the training loops call ----------------------------------------------------------------
    def add_terms(self, terms: dict[str, torch.Tensor | float | None]) -> None:
        """One step's loss terms (kept detached on their device; averaged and read once per epoch)."""
        for name, value in terms.items():
            if value is not None:
                self._terms[name].append(value.detach().float() if torch.is_tensor(value)
                                         else torch.tensor(float(value)))

    def end_epoch(self, aggregator, epoch: int, loss: float, optimiser) -> None:
        """After stage-2 epoch ``epoch`` (1-based): loss, learning rate, the terms' means, validation."""
        values = {"loss": loss, "lr": optimiser.param_groups[0]["lr"]}
        for name, parts in self._terms.items():
            values[name] = float(torch.stack([p.to(parts[0].device) for p in parts]).mean())
        self._terms.clear()
        self.scalars("train", epoch, values)
        if self.validation is not None and len(self.validation):
            self.scalars("val", epoch, self._validate(aggregator))
        self._writer.flush()

    def scalars(self, stage: str, step: int, values: dict[str, Any]) -> None:
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self._writer.add_scalar(f"{stage}/{name}", float(value), step)

    def pretrain_epoch(self, epoch: int, row: dict[str, float]) -> None:
        self.scalars("pretrain", epoch, row)
        self._writer.flush()

    def teacher_steps(self, losses: list[float]) -> None:
        for step, value in enumerate(losses, start=1):
            self.scalars("teacher", step, {"loss": value})
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    # -- validation ------------------------------------------------------------------------------
    def _validate(self, aggregator) -> dict[str, float]:
        """The fold's validation metrics with the model as it is now (the RNG states left untouched)."""
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            if self._val_data is None:
                self._val_data = aggregator._case_data(self.validation)
            logits = aggregator.predict_logits(self._val_data)
            predictions = aggregator.task_.predictions(logits, self._val_data.case_ids)
            return aggregator.task_.evaluate(predictions, self.validation)


@contextlib.contextmanager
def attached(model, log: EpochLog | None) -> Iterator[None]:
    """``model`` reports to ``log`` inside the block; the log is closed and detached after it (even on error),
    so a fitted model never carries a writer (it is copied and saved later)."""
    if log is None:
        yield
        return
    model.log_epochs_to(log)
    try:
        yield
    finally:
        model.log_epochs_to(None)
        log.close()


def compare_logs(out: str | Path):
    """``(model, seed, fold, validation) -> EpochLog`` in ``<out>/tensorboard/<model>_seed<s>_fold<k>/``."""
    def make(model: str, seed: int, fold, validation=None) -> EpochLog:
        return EpochLog(Path(out) / "tensorboard" / f"{model}_seed{seed}_fold{fold.k}", validation)

    return make
