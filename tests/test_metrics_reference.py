"""The extra survival metrics equal scikit-survival computed directly on saved predictions (issue 25).

The documented choice (``msrl_plugin.evaluation.metrics``): ``survival_bin<j>`` is read at the end of bin j,
``edges[j + 1]``, clipped below ``min(max test, max train) - 1e-4``; a time with fewer than 5 test events at
or before it, or fewer than 5 test cases followed after it, is dropped. The reference below restates that
rule in a few lines and calls scikit-survival itself, so a change of either side shows up here.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from msrl_plugin.cohort import Cohort, InMemoryBags
from msrl_plugin.evaluation import metrics as eval_metrics
from msrl_plugin.evaluation.compare import compare_models
from msrl_plugin.survival import fit_bin_edges
from msrl_plugin.synth import CohortConfig, generate_cohort

pytestmark = pytest.mark.skipif(not eval_metrics.sksurv_available(), reason="scikit-survival not installed")
EPS = 1e-4
N_BINS = 4
BINS = [f"survival_bin{j}" for j in range(N_BINS)]


def reference(train_t, train_e, test_t, test_e, risk, surv, edges) -> dict:
    """c-index, IPCW c-index, IBS and td-AUC of one fold, straight from scikit-survival."""
    from sksurv.metrics import (
        concordance_index_censored,
        concordance_index_ipcw,
        cumulative_dynamic_auc,
        integrated_brier_score,
    )
    from sksurv.util import Surv

    train_e, test_e = np.asarray(train_e, bool), np.asarray(test_e, bool)
    tau = train_t.max() - EPS
    hi = min(test_t.max(), tau) - EPS
    times, cols = [], []
    for j in range(surv.shape[1]):
        t = min(edges[j + 1], hi)
        enough = ((test_t <= t) & test_e).sum() >= 5 and (test_t > t).sum() >= 5
        if enough and (not times or t > times[-1]):
            times.append(t)
            cols.append(j)
    y_train = Surv.from_arrays(train_e, train_t)
    y_test = Surv.from_arrays(test_e, np.minimum(test_t, tau))
    out = {"c_index": concordance_index_censored(test_e, test_t, risk, tied_tol=1e-8)[0],
           "c_index_ipcw": concordance_index_ipcw(y_train, Surv.from_arrays(test_e, test_t), risk, tau=tau)[0],
           "ibs": np.nan, "td_auc": np.nan, "times": np.array(times), "columns": cols}
    if len(times) >= 2:
        out["ibs"] = integrated_brier_score(y_train, y_test, surv[:, cols], times)
    if times:
        out["td_auc"] = cumulative_dynamic_auc(y_train, y_test, 1 - surv[:, cols], times)[1]
    return out


def curve(eta: np.ndarray, times: np.ndarray, scale: float = 20.0) -> np.ndarray:
    """``(n, len(times))`` exponential-model survival ``exp(-t / scale * e^eta)``."""
    return np.exp(-np.outer(np.exp(eta), np.asarray(times)) / scale)


def frame(surv: np.ndarray) -> pd.DataFrame:
    out = pd.DataFrame(surv, columns=BINS)
    out.insert(0, "risk", -surv.sum(axis=1))
    return out


def fold_data(seed: int, n_train: int = 140, n_test: int = 70, censoring: float = 0.4, noise: float = 0.7):
    """Exponential times (scale 20) with log-hazard eta; the model sees eta + noise."""
    rng = np.random.default_rng(seed)
    eta = rng.normal(size=n_train + n_test)
    t = 20 * rng.exponential(size=eta.size) * np.exp(-eta) + 0.05
    e = (rng.random(eta.size) >= censoring).astype(int)
    guess = eta + noise * rng.normal(size=eta.size)
    return t[:n_train], e[:n_train], t[n_train:], e[n_train:], guess[n_train:]


def check_against_reference(train_t, train_e, test_t, test_e, guess):
    edges = fit_bin_edges(train_t, 1 - train_e, N_BINS)
    pred = frame(curve(guess, edges[1:]))
    got = eval_metrics.fold_survival_metrics(train_t, train_e, test_t, test_e, pred, edges)
    ref = reference(train_t, train_e, test_t, test_e, pred["risk"].to_numpy(), pred[BINS].to_numpy(), edges)
    for name in eval_metrics.EXTRA_SURVIVAL_METRICS:
        np.testing.assert_allclose(got.metrics[name], ref[name], rtol=1e-12, err_msg=name)
    np.testing.assert_array_equal(got.times.times, ref["times"])
    np.testing.assert_array_equal(got.times.columns, ref["columns"])
    return got, ref, edges


def test_columns_are_read_at_the_end_of_their_bin():
    train_t, train_e, test_t, test_e, guess = fold_data(0, n_train=300, n_test=150)
    got, _, edges = check_against_reference(train_t, train_e, test_t, test_e, guess)
    # a 150-case fold: bins 0-2 end inside the follow-up with plenty of cases and controls; the last bin
    # ends past every training time, is clipped to the end of follow-up and dropped (too few controls)
    assert list(got.times.columns) == [0, 1, 2]
    np.testing.assert_array_equal(got.times.times, edges[1:4])
    assert "control(s)" in got.times.dropped[3]
    assert got.times.describe().startswith(f"bin0@{edges[1]:.4g}; bin1@")


@pytest.mark.parametrize("seed, censoring", [(1, 0.3), (2, 0.5), (3, 0.85), (4, 0.9)])
def test_synthetic_folds_match_scikit_survival(seed, censoring):
    got, ref, _ = check_against_reference(*fold_data(seed, censoring=censoring))
    if censoring >= 0.85:  # heavy censoring: ~10 test events, so early bins lack cases
        assert len(got.times.times) < N_BINS - 1
        assert any("case(s)" in why for why in got.times.dropped.values())


def test_fold_whose_largest_test_time_is_an_event():
    train_t, train_e, test_t, test_e, guess = fold_data(5)
    last = int(np.argmax(test_t))
    test_e[last] = 1
    test_t[last] = train_t.max() * 0.99  # inside the training follow-up, the largest test time
    assert test_e[np.argmax(test_t)] == 1
    got, _, _ = check_against_reference(train_t, train_e, test_t, test_e, guess)
    assert np.isfinite(got.metrics["td_auc"]) and np.isfinite(got.metrics["ibs"])


def test_test_follow_up_beyond_the_last_training_time_is_clipped_there():
    train_t, train_e, test_t, test_e, guess = fold_data(6, n_train=120, n_test=80)
    cut = np.quantile(train_t, 0.8)  # training follow-up ends early: the last bin ends at `cut` + 1e-6
    train_t = np.minimum(train_t, cut)
    got, _, edges = check_against_reference(train_t, train_e, test_t, test_e, guess)
    assert (test_t > cut).sum() >= 5  # enough test cases followed past the last training time ...
    assert got.times.columns[-1] == N_BINS - 1  # ... so the last bin is kept, clipped below that time
    assert got.times.times[-1] == pytest.approx(cut - 2 * EPS) and edges[-1] > cut


def test_degenerate_folds_give_nan_not_errors():
    train_t, train_e, test_t, test_e, guess = fold_data(7, n_test=12)
    got, ref, _ = check_against_reference(train_t, train_e, test_t, test_e, guess)
    assert np.isnan(got.metrics["ibs"])  # 12 cases: at most one time has 5 cases and 5 controls
    with pytest.raises(ValueError, match="bin edges"):
        eval_metrics.evaluation_times(train_t, test_t, test_e, [0.0, 1.0], N_BINS)


def test_the_issue_symptom_high_c_index_with_td_auc_below_chance():
    """Issue 25's shape: a fold ranks well (c-index > 0.6), but at SurvPath's times its td-AUC falls below
    0.5 because the last time, just before the largest test time, has one control, and that case is
    predicted high-risk. Read at the documented times it is not, and scikit-survival agrees."""
    from sksurv.metrics import cumulative_dynamic_auc
    from sksurv.util import Surv

    train_t, train_e, test_t, test_e, guess = fold_data(8, n_train=200, n_test=66, noise=0.5)
    train_t[np.argmax(train_t)] = 2 * test_t.max()  # training follow-up covers the test fold's
    guess[np.argmax(test_t)] = guess.max() + 1.0  # the longest follow-up predicted as the highest risk
    got, ref, edges = check_against_reference(train_t, train_e, test_t, test_e, guess)
    surv = curve(guess, edges[1:])
    c_index = ref["c_index"]
    y_train, y_test = Surv.from_arrays(train_e.astype(bool), train_t), Surv.from_arrays(test_e.astype(bool), test_t)
    survpath_times = np.array([test_t.min() + EPS, edges[1], edges[2], test_t.max() - EPS])
    survpath = cumulative_dynamic_auc(y_train, y_test, 1 - surv[:, 1:], survpath_times[1:])[1]
    assert c_index > 0.6 and survpath < 0.5  # the symptom, reproduced
    quartiles = np.quantile(test_t[test_e == 1], [0.25, 0.5, 0.75])
    at_quartiles = cumulative_dynamic_auc(y_train, y_test, -surv.sum(axis=1), quartiles)[1]
    assert got.metrics["td_auc"] > 0.5 and at_quartiles > 0.5
    assert abs(got.metrics["td_auc"] - at_quartiles) < 0.1


# -- end to end: the numbers compare_models writes, recomputed from its saved predictions -------------
def _cohort(n: int, censoring: float, seed: int) -> tuple[Cohort, pd.Series]:
    rng = np.random.default_rng(seed)
    ids = [f"c{i}" for i in range(n)]
    eta = pd.Series(rng.normal(size=n), index=ids)
    t = 20 * rng.exponential(size=n) * np.exp(-eta.to_numpy()) + 0.05
    cens = (rng.random(n) < censoring).astype(int)
    cens[np.argmax(t)] = 0  # the largest time is an event
    cases = pd.DataFrame({"time": t, "censorship": cens}, index=ids)
    bags = InMemoryBags({f"s{i}": np.zeros((2, 3), np.float32) for i in range(n)})
    return Cohort(cases, {c: [f"s{i}"] for i, c in enumerate(ids)}, bags, "survival"), eta


def _oracle(eta: pd.Series, noise: float, scale: float = 20.0):
    """An external model: the true log-hazard plus noise, as an exponential model's curve at the bin ends."""
    def predict(train: Cohort, test: Cohort, seed: int) -> pd.DataFrame:
        edges = fit_bin_edges(train.times(), train.censorship(), N_BINS)
        guess = eta.loc[test.case_ids].to_numpy() + noise * np.random.default_rng(seed).normal(size=len(test))
        return frame(curve(guess, edges[1:], scale)).set_index(pd.Index(test.case_ids, name="case_id"))
    return predict


@pytest.mark.parametrize("censoring", [0.4, 0.8])
def test_compare_numbers_equal_scikit_survival_on_saved_predictions(tmp_path, censoring):
    cohort, eta = _cohort(210, censoring, seed=int(censoring * 10))
    external = {"oracle": _oracle(eta, 0.3), "noisy": _oracle(eta, 1.5)}
    result = compare_models(cohort, [], 3, [0], reference="oracle", external=external, n_boot=50,
                            out_dir=tmp_path, log=lambda m: None)
    per_fold = pd.read_csv(tmp_path / "per_fold.csv").set_index(["model", "fold"])
    assert len(per_fold) == 6 and len(result.per_fold) == 6
    checked = 0
    for model in external:
        saved = pd.read_csv(tmp_path / "predictions" / f"{model}_seed0.csv", index_col="case_id")
        for k in range(3):
            test, train = saved[saved["fold"] == k], saved[saved["fold"] != k]
            train_t, train_e = train["time"].to_numpy(float), 1 - train["censorship"].to_numpy(int)
            edges = fit_bin_edges(train_t, 1 - train_e, N_BINS)
            ref = reference(train_t, train_e, test["time"].to_numpy(float), 1 - test["censorship"].to_numpy(int),
                            test["risk"].to_numpy(float), test[BINS].to_numpy(float), edges)
            row = per_fold.loc[(model, k)]
            for name in ("c_index", *eval_metrics.EXTRA_SURVIVAL_METRICS):
                np.testing.assert_allclose(row[name], ref[name], rtol=1e-9, err_msg=f"{model} fold {k} {name}")
            expected = "; ".join(f"bin{c}@{t:.4g}" for c, t in zip(ref["columns"], ref["times"]))
            assert (row["eval_times"] if isinstance(row["eval_times"], str) else "") == expected
            checked += np.isfinite(ref["td_auc"])
    assert checked >= 3


def _auc_at_event_quartiles(saved: pd.DataFrame, k: int) -> float:
    """The issue's yardstick: sksurv's mean AUC of the scalar risk at the quartiles of the test event times."""
    from sksurv.metrics import cumulative_dynamic_auc
    from sksurv.util import Surv

    test, train = saved[saved["fold"] == k], saved[saved["fold"] != k]
    tau = train["time"].max() - EPS
    t, e = np.minimum(test["time"].to_numpy(float), tau), test["censorship"].to_numpy(int) == 0
    q = np.quantile(test["time"].to_numpy(float)[e], [0.25, 0.5, 0.75])
    y_train = Surv.from_arrays(train["censorship"].to_numpy(int) == 0, train["time"].to_numpy(float))
    return float(cumulative_dynamic_auc(y_train, Surv.from_arrays(e, t), test["risk"].to_numpy(float),
                                        q[q < t.max()])[1])


def test_done_when_no_fold_of_a_200_case_3_fold_compare_ranks_well_with_td_auc_below_chance():
    """Issue 25's "done when", checkable: 200 cases, 3 folds, 2 seeds; ABMIL (one tiny epoch) and the
    generator's true hazard with noise (so that folds rank well)."""
    synth = generate_cohort(CohortConfig.test_tier(n_cases=200, k_folds=3, site_held_out=False), seed=1)
    lam = 36.0 / np.log(2.0)  # the generator's exponential baseline (median 36 months at eta = 0)
    oracle = {f"truth+{s}": _oracle(synth.truth.eta, s, scale=lam) for s in (0.5, 1.0)}
    result = compare_models(synth.to_cohort(), ["abmil"], 3, [0, 1], {"abmil": {"hidden_dim": 16, "attn_dim": 8}},
                            budget={"max_epochs": 1}, external=oracle, n_boot=50, log=lambda m: None,
                            borrowing_check=False)
    ranked_well = 0
    for row in result.per_fold.itertuples():
        assert isinstance(row.eval_times, str) and row.eval_times.startswith("bin")
        if row.c_index > 0.6:
            ranked_well += 1
            reference_auc = _auc_at_event_quartiles(result.predictions[(row.model, row.seed)], row.fold)
            assert row.td_auc >= 0.5 or reference_auc < 0.5, row
    assert ranked_well >= 6
