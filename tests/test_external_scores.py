"""Fold models scored on an external set: rank-averaged risks, c-index from the reference library, paired CIs."""
import numpy as np
import pandas as pd
import pytest
from sksurv.metrics import concordance_index_censored

from msrl_plugin.cohort import Cohort, InMemoryBags
from msrl_plugin.evaluation.external import external_scores, fold_averaged_risk, format_external


def _cohort(n=200, seed=0):
    r = np.random.default_rng(seed)
    eta = r.normal(size=n)
    time = r.exponential(np.exp(-eta))
    censor = (r.random(n) < 0.4).astype(int)
    ids = [f"c{i}" for i in range(n)]
    cases = pd.DataFrame({"time": time + 1e-3, "censorship": censor}, index=ids)
    bags = InMemoryBags({c: np.zeros((2, 3), np.float32) for c in ids})
    return Cohort(cases, {c: [c] for c in ids}, bags, "survival"), pd.Series(eta, index=ids)


class _Fixed:
    """A fitted model stand-in: predicts a fixed risk per case."""

    def __init__(self, risk):
        self.risk = risk

    def predict(self, cohort):
        return pd.DataFrame({"risk": self.risk.loc[cohort.case_ids]})


def test_fold_ranks_are_averaged_so_scales_do_not_matter():
    cohort, eta = _cohort()
    one = fold_averaged_risk([_Fixed(eta), _Fixed(100 * eta + 5)], cohort)
    np.testing.assert_allclose(one.to_numpy(), eta.rank(pct=True).to_numpy())


def test_scores_match_scikit_survival_and_the_difference_is_paired():
    cohort, eta = _cohort()
    noisy = eta + np.random.default_rng(1).normal(scale=2.0, size=len(eta))
    risks = {"good": eta.rank(pct=True), "noisy": pd.Series(noisy, index=eta.index).rank(pct=True)}
    table = external_scores(risks, cohort, [("good", "noisy")], eta, n_boot=200, seed=0)
    event = cohort.events().astype(bool)
    for name, risk in risks.items():
        ref = concordance_index_censored(event, cohort.times(), risk.to_numpy())[0]
        assert table.loc[name, "c_index"] == pytest.approx(ref)
    diff = table.loc["good - noisy"]
    assert diff["c_index"] == pytest.approx(table.loc["good", "c_index"] - table.loc["noisy", "c_index"])
    assert diff["ci_low"] < diff["c_index"] < diff["ci_high"] and diff["ci_low"] > 0  # eta beats eta + noise
    assert table.loc["good", "spearman_eta"] == pytest.approx(1.0)
    text = format_external(table, len(cohort), 3)
    assert "the CI excludes 0" in text and "200 generated cases" in text
