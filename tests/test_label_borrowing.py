"""The label-only control: a fitted MSRL whose buffer rows lend their cases' observed outcomes."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from _cohorts import easy_survival_cohort, labelled_genomics_cohort

from msrl_plugin import create_aggregator
from msrl_plugin.aggregators.base import Aggregator
from msrl_plugin.aggregators.label_borrowing import (
    as_outcome_lending,
    lend_observed_outcomes,
    observed_outcome_scores,
)
from msrl_plugin.errors import MSRLPluginError

TINY = dict(max_epochs=2, seed=0, batch_size=16, pretrain_epochs=1, embed_dim=16, k=4, buffer_size=64,
            genomic_teacher_steps=20)


@pytest.fixture(scope="module")
def fitted():
    cohort = easy_survival_cohort(n=60, dim=8, genomics_dim=6, seed=1)
    train, test = cohort.subset(cohort.case_ids[:44]), cohort.subset(cohort.case_ids[44:])
    return create_aggregator("msrl", **TINY).fit(train), train, test


def test_martingale_residuals():
    cohort = easy_survival_cohort(n=50, dim=4, seed=2)
    s = observed_outcome_scores(cohort)[:, 0]
    assert s.shape == (50,) and abs(s.sum()) < 1e-4  # Nelson-Aalen martingale residuals sum to zero
    assert (s[cohort.events() == 0] <= 0).all()  # a censored case can only be "later than expected"
    events = cohort.events() == 1
    t = cohort.times()[events]
    assert np.corrcoef(t, s[events])[0, 1] < -0.5  # an earlier event: a higher residual


def test_lending_the_genomic_risk_reproduces_msrl(fitted):
    """The lookup path weights rows exactly as MSRL does: lent logits = r_G(g) give MSRL's predictions."""
    model, _, test = fitted
    same = copy.deepcopy(model)
    net = as_outcome_lending(same.model_, same.task_.n_outputs)
    with torch.no_grad():
        lent = net.buffer.lent if net.buffer.lent_dim else net.genomic_head(net.buffer.features[:, : net.embed_dim])
        net.outcome_logits.copy_(lent)  # what MSRL lends: its rows' cross-fitted risks by default
        net.lend_outcomes.fill_(True)
    np.testing.assert_allclose(same.predict(test)["risk"], model.predict(test)["risk"], atol=1e-5)


def test_label_only_copy_changes_only_what_is_lent(fitted):
    model, train, test = fitted
    before = model.predict(test)["risk"].to_numpy()
    control = lend_observed_outcomes(model, train)
    np.testing.assert_array_equal(model.predict(test)["risk"].to_numpy(), before)  # the original is untouched
    after = control.predict(test)["risk"].to_numpy()
    assert not np.allclose(after, before)
    np.testing.assert_array_equal(control.model_.buffer.features, model.model_.buffer.features)
    # each row lends a risk that follows its case's observed outcome
    net = control.model_
    _, ids, valid = net.buffer.snapshot()
    scores = dict(zip(train.case_ids, observed_outcome_scores(train)[:, 0]))
    rows = [j for j, ok in enumerate(valid.tolist()) if ok]
    lent_risk = -torch.cumprod(1 - torch.sigmoid(net.outcome_logits[rows]), 1).sum(1).numpy()
    assert np.corrcoef(lent_risk, [scores[ids[j]] for j in rows])[0, 1] > 0.9
    with pytest.raises(MSRLPluginError, match="not in the cohort"):
        lend_observed_outcomes(model, test)


def test_registered_control_is_msrl_fit_then_the_transform(fitted, tmp_path):
    model, train, test = fitted
    control = create_aggregator("msrl_label_only", **TINY).fit(train)
    expected = lend_observed_outcomes(model, train).predict(test)["risk"].to_numpy()
    np.testing.assert_allclose(control.predict(test)["risk"].to_numpy(), expected, atol=1e-5)
    loaded = Aggregator.load(control.save(tmp_path / "label_only.pt"))
    np.testing.assert_allclose(loaded.predict(test)["risk"].to_numpy(), expected, atol=1e-5)


def test_classification_and_models_without_a_lent_risk():
    cohort = labelled_genomics_cohort(n=50)
    train, test = cohort.subset(cohort.case_ids[:36]), cohort.subset(cohort.case_ids[36:])
    control = create_aggregator("msrl_label_only", **TINY).fit(train)
    assert control.predict(test).shape[0] == 14
    paper = create_aggregator("msrl_paper", **{**TINY, "genomic_teacher_steps": 0}).fit(train)
    with pytest.raises(MSRLPluginError, match="lends none"):
        lend_observed_outcomes(paper, train)


def test_compare_pairs_the_label_only_control_with_msrl_own_fit():
    """In ``compare``, ``msrl_label_only`` (alias of ``msrl:label_only``) is the same fit as ``msrl``, transformed:
    one fit, and its predictions are the transform's."""
    from msrl_plugin.evaluation.compare import compare_models
    from msrl_plugin.evaluation.splits import Fold

    cohort = easy_survival_cohort(n=60, dim=8, genomics_dim=6, seed=1)
    fold = Fold(k=0, train=list(cohort.case_ids[:44]), test=list(cohort.case_ids[44:]))
    fits = []
    result = compare_models(cohort, ["msrl", "msrl_label_only"], [fold], [0], reference="msrl",
                            params={"msrl": {k: v for k, v in TINY.items() if k != "seed"}},
                            budget={"max_epochs": 2}, n_boot=50, log=lambda _m: None, borrowing_check=False,
                            epoch_log=lambda name, *_: fits.append(name))
    assert fits == ["msrl"]
    model, train = result.examples["msrl"].model, cohort.subset(fold.train)
    expected = lend_observed_outcomes(model, train).predict(cohort.subset(fold.test))["risk"].to_numpy()
    got = result.predictions[("msrl_label_only", 0)].loc[fold.test, "risk"].to_numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
