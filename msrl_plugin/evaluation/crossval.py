"""Cross-validation: the same folds, seed and budget for any registered aggregator.

Data flows one way: cohort -> folds -> aggregator.fit/predict -> predictions -> metrics -> a results
sink (``msrl_plugin.adapters.results.ResultsFolder`` writes the CLAM-style folder).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from .. import distributed
from ..aggregators.base import Aggregator
from ..cohort import Cohort
from ..divergence import TrainingDivergedError
from ..errors import BadInputError
from ..registry import create_aggregator
from ..training_log import attached
from .splits import Fold

SELECTION_RULE = "fixed epoch budget, last-epoch model (no early stopping; MCAT/SurvPath convention)"


class ResultsSink(Protocol):
    def fold_done(self, fold: Fold) -> bool: ...
    def training_state_path(self, fold: Fold): ...
    def load_fold(self, fold: Fold) -> tuple[pd.DataFrame, dict[str, float]]: ...
    def write_fold(self, fold: Fold, model: Aggregator, predictions: pd.DataFrame,
                   metrics: dict[str, float], extra: dict[str, Any]) -> None: ...
    def write_summary(self, rows: list[dict[str, Any]], task: str) -> None: ...


@dataclass
class CVResult:
    model: str
    fold_metrics: pd.DataFrame
    predictions: dict[int, pd.DataFrame] = field(default_factory=dict)
    #: per fold: mean loss per epoch (``stage, epoch, loss``; see ``Aggregator.training_history``)
    histories: dict[int, pd.DataFrame] = field(default_factory=dict)

    def mean_sd(self) -> pd.DataFrame:
        numeric = self.fold_metrics.drop(columns=["fold"], errors="ignore").select_dtypes("number")
        return pd.DataFrame({"mean": numeric.mean(), "sd": numeric.std(ddof=1)})


def run_fold(cohort: Cohort, fold: Fold, model_name: str, params: dict[str, Any], progress: bool = False,
             training_state=None, epoch_log=None) -> tuple[Aggregator, pd.DataFrame, dict[str, float], dict[str, Any]]:
    """Fit on the fold's training cases only, predict its held-out cases, score them.

    With ``training_state`` (a path) the fit checkpoints every epoch there and resumes from it; with
    ``epoch_log`` (an :class:`~msrl_plugin.training_log.EpochLog`) it reports per-epoch scalars there.
    """
    fold.check(cohort)
    model = create_aggregator(model_name, **params)
    if training_state is not None:
        model.enable_resume(training_state)
    train = cohort.subset(fold.train)
    start = time.perf_counter()
    with attached(model, epoch_log):
        model.fit(train, progress=progress)
    fit_seconds = time.perf_counter() - start
    test = cohort.subset(fold.test)
    predictions = model.predict(test)
    metrics = {f"test_{k}": v for k, v in model.evaluate(test, predictions).items()}
    if fold.val:
        val = cohort.subset(fold.val)
        metrics.update({f"val_{k}": v for k, v in model.evaluate(val).items()})
    pretrain_seconds = getattr(model, "pretrain_seconds_", 0.0)
    extra = {"fit_seconds": fit_seconds, "pretrain_seconds": pretrain_seconds,
             "epoch_seconds": (fit_seconds - pretrain_seconds) / max(1, len(model.history_)),
             "n_train": len(fold.train), "n_test": len(fold.test)}
    if hasattr(model, "precision_"):  # what precision="auto" chose for this fold, and why
        extra.update(precision=model.precision_, precision_reason=getattr(model, "precision_reason_", ""))
    return model, predictions, metrics, extra


def check_pool_overlap(model: str, params: dict[str, Any], folds, allow: bool = False) -> None:
    """Refuse a fold whose test cases are in the stage-1 pool of ``params["pretrained"]`` (stage 1 saw their
    slides and genomics); ``allow`` turns that into a warning (the run's config records the choice)."""
    if not params.get("pretrained"):
        return
    import warnings

    from ..pretrain_io import read_pretrained

    path = params["pretrained"]
    pool = set(read_pretrained(path)["case_ids"])
    for fold in folds:
        seen = [str(c) for c in fold.test if str(c) in pool]
        if not seen:
            continue
        what = (f"{len(seen)} test case(s) of fold {fold.k} (e.g. {seen[0]!r}) are in the pre-training pool of "
                f"{path}, used by {model!r}: stage 1 saw their slides and genomics")
        if not allow:
            raise BadInputError(what, fix="pre-train on a pool without this cohort's test cases, or pass "
                                          "--allow-pool-overlap (the run's config records it)")
        warnings.warn(f"{what}; kept, as --allow-pool-overlap asks", UserWarning, stacklevel=2)


def check_fold_inputs(model: str, params: dict[str, Any], cohort, folds, allow_pool_overlap: bool = False) -> None:
    """Every fold's genomics preconditions and pre-training pool, before anything is written (a run must not
    stop at fold 2)."""
    check_pool_overlap(model, params, folds, allow_pool_overlap)
    aggregator = create_aggregator(model, **params)
    imputes = getattr(aggregator, "missing_genomics", "error") == "impute_mean"
    has = dict(zip(cohort.case_ids, cohort.has_genomics.tolist()))
    for fold in folds:
        if aggregator.uses_genomics and not any(has[c] for c in fold.train):
            raise BadInputError(f"model {model!r} needs genomics but no training case of fold {fold.k} has a "
                                "genomics row", fix="check that the genomics case ids match the clinical ones "
                                "(they are compared as text: '0012' is not '12'), or use --model abmil")
        lacking = [c for c in fold.test if not has[c]]
        if aggregator.genomics_at_test and not imputes and lacking:
            raise BadInputError(f"model {model!r} reads genomics at test time; {len(lacking)} test case(s) of "
                                f"fold {fold.k} have no genomics row (e.g. {lacking[0]!r})",
                                fix="pass --genomics with a row for every case, or use a WSI-only model")


def cross_validate(cohort: Cohort, folds: list[Fold], model_name: str, params: dict[str, Any],
                   sink: ResultsSink | None = None, progress: bool = False, log=print) -> CVResult:
    rows, preds, histories = [], {}, {}
    writer = sink if distributed.is_main() else None  # only rank 0 writes files
    for fold in folds:
        if sink is not None and sink.fold_done(fold):
            predictions, metrics = sink.load_fold(fold)
            log(f"fold {fold.k}: already done, kept ({_fmt(metrics)})")
            extra = {}
            history = getattr(sink, "load_history", lambda fold: None)(fold)
            if history is not None:
                histories[fold.k] = history
        else:
            state = None if sink is None else sink.training_state_path(fold)
            try:
                model, predictions, metrics, extra = run_fold(cohort, fold, model_name, params, progress, state,
                                                              _epoch_log(writer, cohort, fold))
            except TrainingDivergedError as exc:
                raise exc.in_fold(fold.k, _diverged_fix(writer, fold)) from None
            histories[fold.k] = model.training_history()
            if writer is not None:
                writer.write_fold(fold, model, predictions, metrics, extra)
                model.clear_training_state()
            distributed.barrier()
            log(f"fold {fold.k}: {_fmt(metrics)}  ({extra['fit_seconds']:.1f}s)")
        rows.append({"fold": fold.k, **metrics, **{k: v for k, v in extra.items() if k.endswith("seconds")}})
        preds[fold.k] = predictions
    result = CVResult(model_name, pd.DataFrame(rows), preds, histories)
    if writer is not None:
        writer.write_summary(rows, cohort.task)
    return result


def _epoch_log(sink, cohort: Cohort, fold: Fold):
    """The sink's per-epoch log of ``fold`` (validated on its validation cases), when it keeps one."""
    make = getattr(sink, "epoch_log", None)
    return None if make is None else make(fold, cohort.subset(fold.val) if fold.val else None)


def _diverged_fix(writer: ResultsSink | None, fold: Fold) -> str:
    """Set the diverged fold's training state aside (it would diverge again on --resume) and say how to go on."""
    fix = "lower the learning rate or rescale the inputs"
    set_aside = getattr(writer, "set_aside_training_state", None)
    if set_aside is None:
        return fix + ", then fit again"
    moved, holds_results = set_aside(fold)
    where = ("under another --exp-code (a run with changed settings cannot --resume this one; its finished folds "
             "are kept)" if holds_results else "(this results folder holds no finished fold)")
    kept = f"; the fold's last finite training state was set aside as {moved.name}" if moved is not None else ""
    return f"{fix}, then run again {where}{kept}"


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float) and np.isfinite(v))


def distributed_cross_validate(cohort: Cohort, folds: list[Fold], model_name: str, params: dict[str, Any],
                               sink: ResultsSink | None, quiet: bool, summary_file=None) -> None:
    """One rank of ``msrl-plugin train --devices N`` (run through :func:`distributed.launch`)."""
    log = print if distributed.is_main() and not quiet else (lambda *_: None)
    result = cross_validate(cohort, folds, model_name, params, sink, log=log)
    if distributed.is_main() and summary_file is not None:
        result.fold_metrics.to_csv(summary_file, index=False)
