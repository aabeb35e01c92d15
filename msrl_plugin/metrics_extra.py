"""Survival metrics beyond Harrell's c-index, computed the way SurvPath does (``formats.md`` §4.4).

Computed with scikit-survival (a core dependency); should it be missing from an environment,
:func:`survival_extras` returns ``{}`` and every caller simply reports fewer columns.

- ``c_index_ipcw``: Uno's IPCW c-index of ``risk`` (higher = earlier event, sksurv's convention);
  the censoring distribution is estimated on the *training* cases.
- ``ibs``: integrated Brier score of the predicted survival curve (lower is better).
- ``td_auc``: mean cumulative/dynamic AUC of ``1 - S`` at the inner evaluation times.

The discrete survival curve ``S_j`` (columns ``survival_bin0..``) is evaluated at SurvPath's times:
``[min(test) + 1e-4, edges[1], ..., edges[n_bins - 2], max(test) - 1e-4]`` (one time per bin), clipped into
the test follow-up range; collapsing times are merged. The training censoring distribution is unknown
past the last training time, so test follow-up is truncated there for the IBS and AUC (and the IPCW
c-index uses ``tau`` = that time). A metric that cannot be computed on a fold
(too few events, all times out of range) is NaN, never an exception.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

TIME_EPS = 1e-4
EXTRA_SURVIVAL_METRICS = ("c_index_ipcw", "ibs", "td_auc")


def sksurv_available() -> bool:
    try:
        import sksurv.metrics  # noqa: F401
    except ImportError:
        return False
    return True


def evaluation_times(test_time: np.ndarray, edges: Sequence[float], n_bins: int) -> np.ndarray:
    """``(n_bins,)`` times at which ``survival_bin0..n_bins-1`` are read (SurvPath's choice)."""
    lo, hi = float(np.min(test_time)) + TIME_EPS, float(np.max(test_time)) - TIME_EPS
    inner = [float(e) for e in list(edges)[1:n_bins - 1]]
    return np.clip(np.array([lo, *inner, hi], dtype=np.float64), lo, hi)


def _survival_columns(predictions: pd.DataFrame) -> list[str]:
    cols = [c for c in predictions.columns if c.startswith("survival_bin")]
    return sorted(cols, key=lambda c: int(c[len("survival_bin"):]))


def survival_extras(train_time: np.ndarray, train_event: np.ndarray, test_time: np.ndarray,
                    test_event: np.ndarray, predictions: pd.DataFrame,
                    edges: Sequence[float] | None) -> dict[str, float]:
    """IPCW c-index, IBS and mean time-dependent AUC of one fold; ``{}`` without scikit-survival.

    ``predictions`` is aligned with ``test_time`` (same order) and holds ``risk`` and ``survival_bin*``;
    ``edges`` are the training bin edges ``(n_bins + 1,)`` the model's survival curve refers to; without
    them (or without a survival curve) only the IPCW c-index is computed.
    """
    if not sksurv_available():
        return {}
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
        return out
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
            return out
        # Brier/AUC evaluate the training censoring KM at every test time: truncate test follow-up at the
        # last training time (evaluation times stay below it, so no term that is used changes)
        y_test = Surv.from_arrays(test_event, np.minimum(test_time, tau))
        times = np.minimum(evaluation_times(test_time, edges, surv.shape[1]), tau - TIME_EPS)
        times, first = np.unique(times, return_index=True)
        est = surv[:, first]
        if len(times) >= 2:
            try:
                out["ibs"] = float(integrated_brier_score(y_train, y_test, est, times))
            except ValueError:
                pass
            try:
                out["td_auc"] = float(cumulative_dynamic_auc(y_train, y_test, 1.0 - est[:, 1:], times[1:])[1])
            except ValueError:
                pass
    return out
