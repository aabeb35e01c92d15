"""Paired statistics: hand-computed Wilcoxon p-values, bootstrap CIs, per-fold pairing."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from msrl_plugin.evaluation import stats


def test_wilcoxon_exact_hand_cases():
    # all 5 differences positive: P(W+ = 15) = 1/32 under H0, two-sided 2/32
    assert stats.wilcoxon_p([1, 2, 3, 4, 5]) == pytest.approx(2 / 32)
    # ranks 1..4 with signs + - + -: W+ = 1 + 3 = 4; 7 of the 16 sign patterns have W+ <= 4, two-sided 14/16
    assert stats.wilcoxon_p([1, -2, 3, -4]) == pytest.approx(14 / 16)
    assert stats.wilcoxon_p([0.0, 0.0, 0.0]) == 1.0
    assert np.isnan(stats.wilcoxon_p([]))


def test_bootstrap_ci_hand_cases_and_seeding():
    assert stats.bootstrap_ci([0.25] * 7) == (0.25, 0.25)
    a = stats.bootstrap_ci([1.0, 2.0, 3.0, 10.0], n_boot=2000, seed=3)
    assert a == stats.bootstrap_ci([1.0, 2.0, 3.0, 10.0], n_boot=2000, seed=3)
    assert 1.0 <= a[0] < 4.0 < a[1] <= 10.0  # the sample mean 4 lies inside, bounds inside the data range
    sample = np.random.default_rng(0).normal(size=25)
    assert stats.bootstrap_ci(sample, 500, seed=1) != stats.bootstrap_ci(sample, 500, seed=2)
    assert all(np.isnan(stats.bootstrap_ci([])))


def test_bootstrap_ci_covers_the_truth_on_a_synthetic_paired_sample():
    rng = np.random.default_rng(0)
    covered, trials = 0, 200
    for t in range(trials):
        base = rng.normal(0.6, 0.05, size=30)
        diff = rng.normal(0.02, 0.03, size=30)
        lo, hi = stats.bootstrap_ci((base + diff) - base, n_boot=1000, seed=t)
        covered += lo <= 0.02 <= hi
    assert 0.88 <= covered / trials <= 0.99  # nominal 95%; percentile bootstrap is slightly narrow at n=30


def _per_fold() -> pd.DataFrame:
    rows = []
    for seed in (0, 1):
        for fold in range(3):
            base = 0.6 + 0.01 * fold + 0.02 * seed
            key = {"seed": seed, "fold": fold}
            rows += [{"model": "abmil", **key, "c_index": base, "ibs": 0.2},
                     {"model": "msrl", **key, "c_index": base + 0.05, "ibs": 0.18},
                     {"model": "bad", **key, "c_index": base - 0.1 * (fold + 1), "ibs": 0.3}]
    return pd.DataFrame(rows)


def test_paired_differences_pair_by_seed_and_fold():
    pf = _per_fold().sample(frac=1.0, random_state=1)  # pairing must not depend on row order
    d = stats.paired_differences(pf, "abmil", "c_index")
    assert set(d["model"]) == {"msrl", "bad"}
    assert np.allclose(d.loc[d["model"] == "msrl", "diff"], 0.05)
    bad = d[d["model"] == "bad"].sort_values(["seed", "fold"])
    assert np.allclose(bad["diff"], [-0.1, -0.2, -0.3] * 2)
    with pytest.raises(ValueError, match="reference"):
        stats.paired_differences(pf, "nope", "c_index")


def test_paired_table_and_mean_sd():
    pf = _per_fold()
    table = stats.paired_table(pf, "abmil", ["c_index", "ibs"], n_boot=500)
    msrl = table[(table["model"] == "msrl") & (table["metric"] == "c_index")].iloc[0]
    assert msrl["mean_diff"] == pytest.approx(0.05)
    assert msrl["ci_low"] == pytest.approx(0.05) and msrl["ci_high"] == pytest.approx(0.05)
    assert msrl["n_pairs"] == 6 and msrl["win_rate"] == 1.0
    assert msrl["wilcoxon_p"] == pytest.approx(2 / 64)
    ibs = table[(table["model"] == "msrl") & (table["metric"] == "ibs")].iloc[0]
    assert ibs["mean_diff"] < 0 and ibs["win_rate"] == 1.0  # lower Brier is a win
    summary = stats.mean_sd(pf)
    assert list(summary.index) == ["abmil", "msrl", "bad"]
    assert summary.loc["abmil", "c_index_mean"] == pytest.approx(pf[pf.model == "abmil"].c_index.mean())
    assert summary.loc["abmil", "n"] == 6
    assert stats.format_mean_sd(0.71234, 0.0312) == "0.712 +- 0.031"
    assert stats.format_mean_sd(0.5, float("nan")) == "0.500"


def test_bootstrap_ci_equals_the_hand_written_percentile_bootstrap():
    """scipy.stats.bootstrap (percentile) draws the same resamples as the earlier hand-written version."""
    rng = np.random.default_rng(9)
    for n in (2, 5, 40):
        values = rng.normal(size=n)
        draw = np.random.default_rng(3)
        means = values[draw.integers(0, n, size=(1000, n))].mean(axis=1)
        expected = tuple(np.quantile(means, [0.025, 0.975]))
        assert stats.bootstrap_ci(values, n_boot=1000, seed=3) == pytest.approx(expected, abs=1e-12)
    assert stats.bootstrap_ci([0.4]) == (0.4, 0.4)


def test_too_few_pairs_note_matches_the_exact_wilcoxon_floor():
    from scipy import stats as sps

    from msrl_plugin.evaluation.stats import min_wilcoxon_p, too_few_pairs_note

    for n in (3, 5, 6):  # every difference positive: the exact test's smallest p
        assert min_wilcoxon_p(n) == pytest.approx(sps.wilcoxon(np.arange(1.0, n + 1)).pvalue)
    assert "2/2^5 = 0.0625" in too_few_pairs_note(5)
    assert too_few_pairs_note(6) is None


def test_standard_error_matches_scipy():
    from scipy.stats import sem

    v = np.array([0.01, -0.02, 0.03, 0.005, 0.0])
    assert stats.standard_error(v) == pytest.approx(sem(v))
    assert np.isnan(stats.standard_error([0.1])) and np.isnan(stats.standard_error([]))
