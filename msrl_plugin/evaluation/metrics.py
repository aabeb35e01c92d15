"""Every metric computed on saved predictions: Harrell's c-index (what training and ``evaluate`` report), and for
``compare`` the IPCW c-index, integrated Brier score and time-dependent AUC. (The discrete-time survival model
itself, bins, NLL and risk, is :mod:`msrl_plugin.survival`; statistics across folds are
:mod:`msrl_plugin.evaluation.stats`.)

Computed with scikit-survival (a core dependency); should it be missing from an environment,
:func:`survival_extras` returns ``{}`` and every caller simply reports fewer columns.

- ``c_index_ipcw``: Uno's IPCW c-index of ``risk`` (higher = earlier event, sksurv's convention);
  the censoring distribution is estimated on the *training* cases; ``tau`` = the last training time.
- ``ibs``: integrated Brier score of the predicted survival curve at the evaluation times (lower is better).
- ``td_auc``: scikit-survival's mean cumulative/dynamic AUC of ``1 - S`` over the evaluation times (the
  AUC at each time weighted by the drop of the test Kaplan-Meier estimate, as ``cumulative_dynamic_auc``).

Evaluation times (our choice). ``survival_bin<j>`` is the probability of surviving past the *end* of bin j,
``edges[j + 1]`` (the training bin edges). So column j is read at ``t_j = edges[j + 1]``, and nowhere else:

1. ``t_j`` is clipped below ``min(max test time, max training time) - 1e-4``: sksurv's AUC and Brier score
   need times inside the test follow-up, and the training censoring distribution (the IPC weights) is
   undefined past the last training time. Only the last bin's end (``max training time + 1e-6``) is
   normally clipped.
2. A time is dropped when fewer than :data:`MIN_CASES` (5) test cases had their event at or before it, or
   fewer than :data:`MIN_CONTROLS` (5) test cases are still followed after it (sksurv's own definitions of
   cases and controls). The clipped last time usually fails this, and is dropped.
3. Times that collapse after clipping keep the earlier column. ``td_auc`` needs one kept time, ``ibs`` two;
   otherwise they are NaN.

SurvPath (``_calculate_metrics``) reads column j at ``[min(test) + 1e-4, edges[1], edges[2],
max(test) - 1e-4][j]`` for the IBS, and columns 1..3 at the last three of those times for the AUC. That
differs from ours twice, and both matter on a 60-case fold: (a) it reads each column at the *start* of
its bin, one bin early, so the AUC and Brier compare the risk of dying by ``edges[j + 1]`` with the status
at ``edges[j]``; (b) its last time is just before the largest test time, where one control is left, so
the AUC there (and the IBS tail) swings with a single case. We read each column at the time it refers
to and drop times without enough cases and controls, instead. Test follow-up past the last training
time is truncated there for the IBS and AUC (no term at an evaluation time changes). A metric that
cannot be computed on a fold (too few events, no usable time) is NaN, never an exception.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

TIME_EPS = 1e-4
#: a time is evaluated only with at least this many test events at or before it ...
MIN_CASES = 5
#: ... and at least this many test cases still followed after it
MIN_CONTROLS = 5
EXTRA_SURVIVAL_METRICS = ("c_index_ipcw", "ibs", "td_auc")
#: the rule in one sentence, for reports
EVALUATION_TIMES_RULE = (
    "The integrated Brier score and time-dependent AUC of a fold read column survival_bin<j> (the probability "
    "of surviving past the end of bin j) at that end, bin<j>@t, clipped inside the test follow-up; a time with "
    f"fewer than {MIN_CASES} test events at or before it or fewer than {MIN_CONTROLS} test cases followed after "
    "it is left out. The td-AUC needs one time, the IBS two; a fold with fewer reports NaN.")


def concordance_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray,
                      tied_tol: float = 1e-8) -> float:
    """Harrell's c-index for risk scores (higher = earlier event): scikit-survival's
    ``concordance_index_censored``, the implementation SurvPath reports (ties in risk count one half).

    Returns NaN when no pair is comparable (no event, or every event at the last time).
    """
    from sksurv.metrics import concordance_index_censored

    try:  # scikit-survival names the case; older versions divide by zero
        from sksurv.exceptions import NoComparablePairException as no_comparable_pair
    except ImportError:  # pragma: no cover
        no_comparable_pair = ZeroDivisionError
    time = np.asarray(time, dtype=np.float64)
    event = np.asarray(event).astype(bool)
    risk = np.asarray(risk, dtype=np.float64)
    if not np.all(np.isfinite(risk)):
        raise ValueError("risk scores contain NaN or Inf")
    if len(time) < 2 or not event.any():
        return float("nan")
    try:
        with np.errstate(invalid="ignore", divide="ignore"):
            return float(concordance_index_censored(event, time, risk, tied_tol)[0])
    except no_comparable_pair:  # events, but no comparable pair
        return float("nan")


def sksurv_available() -> bool:
    try:
        import sksurv.metrics  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class EvaluationTimes:
    """Where a fold's survival curve is evaluated: ``column[i]`` (``survival_bin<column[i]>``) at ``times[i]``.

    ``dropped`` says why each other column was left out (``{column: reason}``).
    """

    times: np.ndarray  # (k,) float64, increasing
    columns: np.ndarray  # (k,) int64
    dropped: dict[int, str] = field(default_factory=dict)

    def describe(self, digits: int = 4) -> str:
        """``"bin0@8.118; bin1@15.3"`` (empty when no time is usable)."""
        return "; ".join(f"bin{c}@{t:.{digits}g}" for c, t in zip(self.columns, self.times, strict=True))


def evaluation_times(train_time: np.ndarray, test_time: np.ndarray, test_event: np.ndarray,
                     edges: Sequence[float], n_bins: int, min_cases: int = MIN_CASES,
                     min_controls: int = MIN_CONTROLS) -> EvaluationTimes:
    """The times at which ``survival_bin0..n_bins-1`` are evaluated on one fold (module docstring).

    ``edges``: the training bin edges ``(n_bins + 1,)``; column j is read at ``edges[j + 1]``, clipped below
    ``min(max test time, max train time) - TIME_EPS``, and kept only with ``>= min_cases`` test events at or
    before it and ``>= min_controls`` test cases followed beyond it.
    """
    test_time = np.asarray(test_time, dtype=np.float64)
    test_event = np.asarray(test_event).astype(bool)
    edges = np.asarray(edges, dtype=np.float64)
    if len(edges) < n_bins + 1:
        raise ValueError(f"{n_bins} survival columns need {n_bins + 1} bin edges, got {len(edges)}")
    hi = min(float(np.max(test_time)), float(np.max(train_time)) - TIME_EPS) - TIME_EPS
    times, columns, dropped = [], [], {}
    for j in range(n_bins):
        t = min(float(edges[j + 1]), hi)
        cases = int(np.sum(test_event & (test_time <= t)))
        controls = int(np.sum(test_time > t))
        if t < float(np.min(test_time)):
            dropped[j] = f"{t:.4g} is before the first test time"
        elif cases < min_cases or controls < min_controls:
            dropped[j] = f"{cases} case(s), {controls} control(s) at {t:.4g}"
        elif times and t <= times[-1]:
            dropped[j] = f"clipped onto bin{columns[-1]}'s time {t:.4g}"
        else:
            times.append(t)
            columns.append(j)
    return EvaluationTimes(np.asarray(times, dtype=np.float64), np.asarray(columns, dtype=np.int64), dropped)


def _survival_columns(predictions: pd.DataFrame) -> list[str]:
    cols = [c for c in predictions.columns if c.startswith("survival_bin")]
    return sorted(cols, key=lambda c: int(c[len("survival_bin"):]))


@dataclass(frozen=True)
class FoldSurvivalMetrics:
    """One fold's extra survival metrics and the evaluation times behind ``ibs`` / ``td_auc`` (None when
    no survival curve or no edges were given)."""

    metrics: dict[str, float]
    times: EvaluationTimes | None = None


def fold_survival_metrics(train_time: np.ndarray, train_event: np.ndarray, test_time: np.ndarray,
                          test_event: np.ndarray, predictions: pd.DataFrame,
                          edges: Sequence[float] | None) -> FoldSurvivalMetrics | None:
    """:func:`survival_extras` with the evaluation times it used; None without scikit-survival."""
    if not sksurv_available():
        return None
    from sksurv.metrics import concordance_index_ipcw, cumulative_dynamic_auc, integrated_brier_score
    from sksurv.util import Surv

    risk = predictions["risk"].to_numpy(dtype=float)
    keep = np.isfinite(risk)  # SurvPath drops NaN risks first
    test_time, test_event = np.asarray(test_time, float)[keep], np.asarray(test_event).astype(bool)[keep]
    risk = risk[keep]
    columns = _survival_columns(predictions)
    surv = predictions[columns].to_numpy(dtype=float)[keep]
    out = dict.fromkeys(EXTRA_SURVIVAL_METRICS, float("nan"))
    if len(risk) < 2 or not test_event.any():
        return FoldSurvivalMetrics(out)
    y_train = Surv.from_arrays(np.asarray(train_event).astype(bool), np.asarray(train_time, float))
    y_test = Surv.from_arrays(test_event, test_time)
    # the censoring KM of the training cases is undefined past their last time: truncate there
    tau = float(np.max(train_time)) - TIME_EPS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out["c_index_ipcw"] = float(concordance_index_ipcw(y_train, y_test, risk, tau=tau)[0])
        except (ValueError, ZeroDivisionError):
            pass
        if edges is None or not columns:
            return FoldSurvivalMetrics(out)
        at = evaluation_times(train_time, test_time, test_event, edges, surv.shape[1])
        # Brier/AUC evaluate the training censoring KM at every test time: truncate test follow-up at the
        # last training time (evaluation times stay below it, so no term that is used changes)
        y_test = Surv.from_arrays(test_event, np.minimum(test_time, tau))
        est = surv[:, at.columns]
        if len(at.times) >= 2:
            try:
                out["ibs"] = float(integrated_brier_score(y_train, y_test, est, at.times))
            except ValueError:
                pass
        if len(at.times) >= 1:
            try:
                out["td_auc"] = float(cumulative_dynamic_auc(y_train, y_test, 1.0 - est, at.times)[1])
            except ValueError:
                pass
    return FoldSurvivalMetrics(out, at)


def survival_extras(train_time: np.ndarray, train_event: np.ndarray, test_time: np.ndarray,
                    test_event: np.ndarray, predictions: pd.DataFrame,
                    edges: Sequence[float] | None) -> dict[str, float]:
    """IPCW c-index, IBS and mean time-dependent AUC of one fold; ``{}`` without scikit-survival.

    ``predictions`` is aligned with ``test_time`` (same order) and holds ``risk`` and ``survival_bin*``;
    ``edges`` are the training bin edges ``(n_bins + 1,)`` the model's survival curve refers to; without
    them (or without a survival curve) only the IPCW c-index is computed.
    """
    result = fold_survival_metrics(train_time, train_event, test_time, test_event, predictions, edges)
    return {} if result is None else result.metrics
