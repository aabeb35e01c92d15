"""A cross-validation's fold models scored on a large external test set (survival).

A c-index over a fold of a few dozen cases moves by several hundredths from noise alone; an external set of
hundreds of cases from the same population (at sites the training cohort never saw) can tell differences a
tenth that size. Each model's k fold models predict every external case; their risks are turned into ranks
(0..1) and averaged over the folds, so each model has one risk per external case. A difference between two
models is paired over the same cases, with a percentile bootstrap over them for its 95% CI.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..cohort import Cohort
from .metrics import concordance_index


def fold_averaged_risk(models: Sequence, cohort: Cohort) -> pd.Series:
    """The mean over ``models`` (fitted, one per fold) of each case's risk rank in ``cohort`` (0 = lowest)."""
    ranks = [model.predict(cohort)["risk"].rank(pct=True) for model in models]
    return pd.concat(ranks, axis=1).mean(axis=1).loc[cohort.case_ids]


def external_scores(risks: dict[str, pd.Series], cohort: Cohort, pairs: Sequence[tuple[str, str]],
                    eta: pd.Series | None = None, n_boot: int = 300, seed: int = 0) -> pd.DataFrame:
    """One row per model (``c_index``, and ``spearman_eta`` when the true log-hazard ``eta`` is known) and one per
    pair ``(a, b)``: the difference a - b with its paired bootstrap 95% CI over the external cases."""
    time, event = cohort.times(), cohort.events()
    rows = []
    for name, risk in risks.items():
        row = {"row": name, "c_index": concordance_index(time, event, risk.to_numpy())}
        if eta is not None:
            row["spearman_eta"] = float(risk.corr(eta.loc[risk.index], method="spearman"))
        rows.append(row)
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(time), len(time)) for _ in range(n_boot)]
    for a, b in pairs:
        ra, rb = risks[a].to_numpy(), risks[b].to_numpy()
        diff = concordance_index(time, event, ra) - concordance_index(time, event, rb)
        boots = [concordance_index(time[i], event[i], ra[i]) - concordance_index(time[i], event[i], rb[i])
                 for i in draws]
        low, high = np.nanpercentile(boots, [2.5, 97.5])
        rows.append({"row": f"{a} - {b}", "c_index": diff, "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows).set_index("row")


def format_external(table: pd.DataFrame, n_cases: int, n_folds: int) -> str:
    """The external scores as the demo prints them, with what the set can resolve."""
    lines = [f"External set: {n_cases} generated cases of the same population at sites the training cohort never "
             f"saw; each model's {n_folds} fold models, their risk ranks averaged over the folds."]
    for name, row in table.iterrows():
        if "ci_low" in row and pd.notna(row.get("ci_low")):
            verdict = "the CI excludes 0" if row["ci_low"] > 0 or row["ci_high"] < 0 else "the CI includes 0"
            lines.append(f"  {name:<40} {row['c_index']:+.4f}  95% CI [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]"
                         f" ({verdict})")
        else:
            extra = f", Spearman with the true risk {row['spearman_eta']:.3f}" if pd.notna(
                row.get("spearman_eta", np.nan)) else ""
            lines.append(f"  {name:<40} c-index {row['c_index']:.4f}{extra}")
    widths = [row["ci_high"] - row["ci_low"] for _, row in table.iterrows() if pd.notna(row.get("ci_low", np.nan))]
    if widths:
        lines.append(f"  a paired difference here is known to +-{np.median(widths) / 2:.3f} (half the CI width); "
                     "the folds' own test sets resolve far less.")
    return "\n".join(lines)
