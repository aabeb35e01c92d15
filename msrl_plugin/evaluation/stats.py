"""Paired comparison statistics: every model against a reference on the same (seed, fold) pairs.

All functions are pure: they take a long per-fold table (one row per ``model, seed, fold`` with one
column per metric) and return new frames. Differences are ``model - reference``, so for metrics where
lower is better (the integrated Brier score) a negative difference is an improvement.

The (seed, fold) pairs of one cohort are not independent (folds share training cases), so the
Wilcoxon p-value and the bootstrap CI are a descriptive guide, as in the MIL literature, not exact.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

PAIR_KEYS = ("seed", "fold")
#: metrics where a smaller value is better; every other metric is "higher is better"
LOWER_IS_BETTER = frozenset({"ibs", "brier", "fit_seconds", "epoch_seconds"})


def metric_columns(per_fold: pd.DataFrame) -> list[str]:
    """Numeric metric columns of a per-fold table (not the keys, not timings)."""
    skip = {"model", *PAIR_KEYS}
    return [c for c in per_fold.columns if c not in skip and not c.endswith("seconds")
            and pd.api.types.is_numeric_dtype(per_fold[c])]


def mean_sd(per_fold: pd.DataFrame, metrics: Sequence[str] | None = None, by: str = "model") -> pd.DataFrame:
    """``(models, metrics)`` table with columns ``<metric>_mean``, ``<metric>_sd``, and ``n`` (pairs).

    Models keep their order of first appearance; sd uses ``ddof=1`` (NaN with one pair).
    """
    metrics = list(metrics) if metrics is not None else metric_columns(per_fold)
    order = list(dict.fromkeys(per_fold[by]))
    grouped = per_fold.groupby(by, sort=False)[metrics]
    means, sds = grouped.mean().reindex(order), grouped.std(ddof=1).reindex(order)
    out = pd.DataFrame(index=pd.Index(order, name=by))
    for m in metrics:
        out[f"{m}_mean"] = means[m]
        out[f"{m}_sd"] = sds[m]
    out["n"] = per_fold.groupby(by, sort=False).size().reindex(order)
    return out


def paired_differences(per_fold: pd.DataFrame, reference: str, metric: str,
                       keys: Sequence[str] = PAIR_KEYS, by: str = "model") -> pd.DataFrame:
    """Long frame ``model, *keys, value, reference_value, diff`` for every non-reference model.

    Only pairs where both the model and the reference have a finite value are kept.
    """
    keys = list(keys)
    ref = per_fold.loc[per_fold[by] == reference, keys + [metric]].rename(columns={metric: "reference_value"})
    if ref.empty:
        raise ValueError(f"reference model {reference!r} has no rows in the per-fold table")
    if ref.duplicated(keys).any():
        raise ValueError(f"reference {reference!r} has several rows for one ({', '.join(keys)}) pair")
    others = per_fold.loc[per_fold[by] != reference, [by, *keys, metric]].rename(columns={metric: "value"})
    merged = others.merge(ref, on=keys, how="inner")
    merged["diff"] = merged["value"] - merged["reference_value"]
    return merged[np.isfinite(merged["diff"].to_numpy(dtype=float))].reset_index(drop=True)


def wilcoxon_p(diffs: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (zeros dropped, 'wilcox').

    Returns 1.0 when every difference is zero and NaN when there are no pairs.
    """
    d = np.asarray(diffs, dtype=float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan")
    if np.all(d == 0):
        return 1.0
    return float(sps.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def bootstrap_ci(values: Sequence[float], n_boot: int = 10_000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (``scipy.stats.bootstrap``; resampling whole
    pairs: a paired bootstrap when ``values`` are per-pair differences). Seeded, so the same inputs give
    the same interval; NaN without values, the value itself when there is one."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size == 1:  # scipy needs two observations; every resample of one value is that value
        return float(v[0]), float(v[0])
    ci = sps.bootstrap((v,), np.mean, n_resamples=n_boot, confidence_level=level, method="percentile",
                       vectorized=True, rng=np.random.default_rng(seed)).confidence_interval
    return float(ci.low), float(ci.high)


def paired_table(per_fold: pd.DataFrame, reference: str, metrics: Sequence[str] | None = None,
                 n_boot: int = 10_000, seed: int = 0, by: str = "model") -> pd.DataFrame:
    """One row per (model, metric): ``mean_diff, sd_diff, ci_low, ci_high, wilcoxon_p, n_pairs, win_rate``.

    ``win_rate`` is the fraction of pairs where the model is better than the reference (direction-aware).
    """
    metrics = list(metrics) if metrics is not None else metric_columns(per_fold)
    rows = []
    for metric in metrics:
        diffs = paired_differences(per_fold, reference, metric, by=by)
        sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
        for model in dict.fromkeys(diffs[by]):
            d = diffs.loc[diffs[by] == model, "diff"].to_numpy(dtype=float)
            lo, hi = bootstrap_ci(d, n_boot, seed=seed)
            rows.append({by: model, "metric": metric, "reference": reference, "mean_diff": float(d.mean()),
                         "sd_diff": float(d.std(ddof=1)) if d.size > 1 else float("nan"),
                         "ci_low": lo, "ci_high": hi, "wilcoxon_p": wilcoxon_p(d), "n_pairs": int(d.size),
                         "win_rate": float(np.mean(sign * d > 0))})
    columns = [by, "metric", "reference", "mean_diff", "sd_diff", "ci_low", "ci_high", "wilcoxon_p",
               "n_pairs", "win_rate"]
    return pd.DataFrame(rows, columns=columns)


def mean_ci_table(per_fold: pd.DataFrame, metric: str, n_boot: int = 10_000, seed: int = 0,
                  by: str = "model") -> pd.DataFrame:
    """Per model: ``mean, ci_low, ci_high, n`` of one metric over its (seed, fold) values (bootstrap CI)."""
    rows = []
    for model, group in per_fold.groupby(by, sort=False):
        v = group[metric].to_numpy(dtype=float)
        v = v[np.isfinite(v)]
        lo, hi = bootstrap_ci(v, n_boot, seed=seed)
        rows.append({by: model, "mean": float(v.mean()) if v.size else float("nan"), "ci_low": lo,
                     "ci_high": hi, "n": int(v.size)})
    return pd.DataFrame(rows, columns=[by, "mean", "ci_low", "ci_high", "n"])


def format_mean_sd(mean: float, sd: float, digits: int = 3) -> str:
    """``0.712 +- 0.031`` (``0.712`` alone when sd is undefined)."""
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if not np.isfinite(sd) else f"{mean:.{digits}f} +- {sd:.{digits}f}"


def standard_error(values: Sequence[float]) -> float:
    """Standard error of the mean, sd (ddof 1) / sqrt(n); NaN with fewer than two values."""
    v = np.asarray(values, dtype=float)
    return float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")


def min_wilcoxon_p(n_pairs: int) -> float:
    """The smallest two-sided p an exact Wilcoxon signed-rank test can give with ``n_pairs`` pairs: 2 / 2^n
    (every difference of one sign)."""
    return 2.0 / 2.0 ** n_pairs if n_pairs > 0 else 1.0


def too_few_pairs_note(n_pairs: int, alpha: float = 0.05) -> str | None:
    """A warning sentence when ``n_pairs`` cannot give a Wilcoxon p below ``alpha`` (n <= 5 for 0.05)."""
    floor = min_wilcoxon_p(n_pairs)
    if floor < alpha:
        return None
    return (f"With {n_pairs} paired (seed, fold) value(s) the Wilcoxon signed-rank p cannot go below "
            f"2/2^{n_pairs} = {floor:.3g}, so it can never reach {alpha}; add seeds or folds "
            f"(at least {int(np.ceil(np.log2(2 / alpha) + 1e-9))} pairs) before reading p.")
