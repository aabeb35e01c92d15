import math

import numpy as np
import pytest
import torch
from lifelines.utils import concordance_index as lifelines_cindex

from msrl_plugin.errors import BadInputError
from msrl_plugin.evaluation.metrics import concordance_index
from msrl_plugin.survival import (
    assign_bins,
    fit_bin_edges,
    nll_survival_loss,
    risk_from_logits,
)


def test_nll_matches_hand_computation():
    logits = torch.tensor([[0.2, -0.5, 1.0, 0.3], [-1.0, 0.4, 0.0, 2.0]])
    bins = torch.tensor([1, 2])
    cens = torch.tensor([0.0, 1.0])
    h = 1 / (1 + np.exp(-logits.numpy()))
    s = np.cumprod(1 - h, axis=1)
    # case 0: event in bin 1 -> -(log S0 + log h1); case 1: censored in bin 2 -> -log S2
    expected0 = -(math.log(s[0, 0]) + math.log(h[0, 1]))
    expected1 = -math.log(s[1, 2])
    for alpha in (0.0, 0.4):
        got = nll_survival_loss(logits, bins, cens, alpha=alpha).item()
        want = ((1 - alpha) * (expected0 + expected1) + alpha * expected0) / 2
        assert got == pytest.approx(want, rel=1e-6)


def test_nll_first_bin_event_uses_padded_survival_of_one():
    logits = torch.tensor([[0.7, 0.0, 0.0, 0.0]])
    got = nll_survival_loss(logits, torch.tensor([0]), torch.tensor([0.0])).item()
    assert got == pytest.approx(-math.log(1 / (1 + math.exp(-0.7))), rel=1e-6)


def test_risk_is_higher_for_higher_hazard():
    low, high = torch.full((1, 4), -2.0), torch.full((1, 4), 2.0)
    assert risk_from_logits(high).item() > risk_from_logits(low).item()


def test_cindex_sign_matches_lifelines_and_sksurv():
    rng = np.random.default_rng(0)
    n = 200
    risk = rng.normal(size=n)
    time = rng.exponential(np.exp(-risk)) + rng.random(n) * 1e-3  # no tied times
    event = rng.random(n) < 0.6
    ours = concordance_index(time, event, risk)
    assert ours > 0.6  # higher risk = earlier event is concordant
    # lifelines wants predicted times: pass -risk
    assert ours == pytest.approx(lifelines_cindex(time, -risk, event), abs=1e-9)
    sksurv = pytest.importorskip("sksurv.metrics")
    assert ours == pytest.approx(sksurv.concordance_index_censored(event, time, risk)[0], abs=1e-9)
    assert concordance_index(time, event, -risk) == pytest.approx(1 - ours, abs=1e-9)


def test_cindex_ties_follow_sksurv():
    sksurv = pytest.importorskip("sksurv.metrics")
    time = np.array([1.0, 1.0, 2.0, 2.0, 3.0, 3.0])
    event = np.array([True, False, True, True, False, True])
    risk = np.array([0.5, 0.5, 0.2, 0.3, 0.3, 0.1])
    assert concordance_index(time, event, risk) == pytest.approx(
        sksurv.concordance_index_censored(event, time, risk)[0])


def test_bins_from_uncensored_quartiles_with_widened_edges():
    times = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 20.0])
    cens = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1])
    edges = fit_bin_edges(times, cens, 4)
    assert edges[0] == pytest.approx(1 - 1e-6) and edges[-1] == pytest.approx(20 + 1e-6)
    np.testing.assert_allclose(edges[1:-1], np.quantile(times[:8], [0.25, 0.5, 0.75]))
    bins = assign_bins(times, edges)
    assert bins.min() == 0 and bins.max() == 3 and np.all(np.diff(bins) >= 0)
    assert assign_bins(np.array([0.01, 1e6]), edges).tolist() == [0, 3]


def test_too_few_events_is_a_clear_error():
    with pytest.raises(BadInputError, match="events"):
        fit_bin_edges(np.array([1.0, 2, 3]), np.array([1, 1, 0]), 4)


def _pairwise_harrell(time, event, risk):
    """The definition, pair by pair (comparable: i had the event first, or j was censored at t_i)."""
    concordant = comparable = 0.0
    for i in range(len(time)):
        for j in range(len(time)):
            if event[i] and (time[i] < time[j] or (time[i] == time[j] and not event[j])):
                comparable += 1
                concordant += 1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0
    return concordant / comparable


def test_cindex_is_harrells_definition_with_tied_times_and_risks():
    rng = np.random.default_rng(4)
    for _ in range(20):
        time = rng.integers(1, 8, 30).astype(float)
        event = rng.random(30) < 0.5
        risk = rng.integers(0, 5, 30).astype(np.float32)  # float32 risks as the models write them
        assert concordance_index(time, event, risk) == pytest.approx(_pairwise_harrell(time, event, risk), abs=1e-12)


def test_cindex_without_comparable_pairs_is_nan():
    assert math.isnan(concordance_index([1.0], [1], [0.5]))  # one case
    assert math.isnan(concordance_index([1.0, 2.0], [0, 0], [0.5, 1.0]))  # no event
    assert math.isnan(concordance_index([2.0, 1.0], [1, 0], [1.0, 2.0]))  # the event is after the censoring
    with pytest.raises(ValueError, match="NaN"):
        concordance_index([1.0, 2.0], [1, 1], [np.nan, 1.0])
