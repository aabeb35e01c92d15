"""scikit-learn estimators over cohorts: the estimator contract and the model-selection utilities."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _cohorts import easy_classification_cohort, easy_survival_cohort
from sklearn.base import clone, is_classifier
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score

from msrl_plugin import Cohort
from msrl_plugin.aggregators import ABMILAggregator, MSRLAggregator
from msrl_plugin.errors import BadInputError
from msrl_plugin.evaluation.metrics import concordance_index
from msrl_plugin.sklearn_api import (
    ABMILClassifier,
    ABMILSurvival,
    CohortCases,
    MSRLClassifier,
    MSRLSurvival,
    survival_arrays,
    survival_y,
)

TINY_ABMIL = {"max_epochs": 2, "hidden_dim": 16, "attn_dim": 8, "lr": 5e-3, "device": "cpu"}
TINY_MSRL = {"max_epochs": 1, "pretrain_epochs": 1, "embed_dim": 8, "buffer_size": 8, "k": 3, "device": "cpu"}



@pytest.fixture(scope="module")
def surv():
    return CohortCases(easy_survival_cohort(n=36, dim=8, seed=0, genomics_dim=4))


@pytest.fixture(scope="module")
def clf():
    return CohortCases(easy_classification_cohort(n=36, dim=8, seed=0))


def test_params_mirror_the_aggregators_and_clone():
    assert set(MSRLSurvival().get_params()) == set(MSRLAggregator().get_params())
    assert set(ABMILClassifier().get_params()) == set(ABMILAggregator().get_params())
    est = ABMILSurvival(lr=1e-3, hidden_dim=32)
    copy = clone(est)
    assert copy is not est and copy.get_params() == est.get_params()
    assert est.set_params(lr=0.5) is est and est.lr == 0.5
    assert is_classifier(ABMILClassifier()) and is_classifier(MSRLClassifier())
    assert not is_classifier(ABMILSurvival()) and not is_classifier(MSRLSurvival())


def test_cohort_cases_indexing(surv):
    assert surv.shape == (36,) and len(surv) == 36 and surv[0] == "c0"
    sub = surv[np.array([3, 1, 2])]
    assert isinstance(sub, CohortCases) and sub.case_ids == ["c3", "c1", "c2"] and sub.base is surv.base
    assert surv[np.arange(36) < 2].case_ids == ["c0", "c1"]
    assert surv[[4, 5], ...].case_ids == ["c4", "c5"]  # how scikit-learn's _safe_indexing indexes
    assert surv[2:4].case_ids == ["c2", "c3"] and list(sub.cohort.case_ids) == ["c3", "c1", "c2"]
    y = sub.targets()
    event, time = survival_arrays(y)
    np.testing.assert_array_equal(time, sub.cohort.times())
    np.testing.assert_array_equal(event, sub.cohort.events() == 1)
    with pytest.raises(IndexError):
        surv[np.array(["a"])]


def test_survival_fit_predict_score(surv):
    est = ABMILSurvival(**TINY_ABMIL)
    assert est.fit(surv[np.arange(24)]) is est
    test = surv[np.arange(24, 36)]
    risk = est.predict(test)
    assert risk.shape == (12,)
    np.testing.assert_allclose(risk, est.predict_frame(test)["risk"].to_numpy())
    manual = concordance_index(test.cohort.times(), test.cohort.events(), risk)
    assert est.score(test) == pytest.approx(manual)
    assert est.score(test, test.targets()) == pytest.approx(manual)
    assert est.predict_survival_function(test).shape == (12, est.n_bins)


def test_survival_y_overrides_the_cohort_targets(surv):
    train = surv[np.arange(24)]
    event, time = survival_arrays(train.targets())
    est = ABMILSurvival(**TINY_ABMIL).fit(train, survival_y(event, time * 10))
    default = ABMILSurvival(**TINY_ABMIL).fit(train)
    np.testing.assert_allclose(est.task_.edges[1:-1], default.task_.edges[1:-1] * 10)
    reordered = np.array(list(zip(time, event, strict=True)), dtype=[("days", float), ("dead", bool)])
    edges = ABMILSurvival(**TINY_ABMIL).fit(train, reordered).task_.edges
    assert edges[1] == pytest.approx(default.task_.edges[1])


def test_cross_val_score_survival(surv):
    scores = cross_val_score(ABMILSurvival(**TINY_ABMIL), surv, cv=KFold(3, shuffle=True, random_state=0))
    assert scores.shape == (3,) and np.all((scores >= 0) & (scores <= 1))
    with_y = cross_val_score(ABMILSurvival(**TINY_ABMIL), surv, surv.targets(), cv=KFold(3, shuffle=True,
                                                                                           random_state=0))
    np.testing.assert_allclose(with_y, scores)


def test_msrl_survival_in_cross_val_score(surv):
    scores = cross_val_score(MSRLSurvival(**TINY_MSRL), surv, cv=2)
    assert scores.shape == (2,) and np.all(np.isfinite(scores))


def test_grid_search_classifier(clf):
    search = GridSearchCV(ABMILClassifier(**TINY_ABMIL), {"lr": [1e-3, 1e-2]}, cv=2).fit(clf, clf.targets())
    assert search.best_params_["lr"] in (1e-3, 1e-2) and len(search.cv_results_["mean_test_score"]) == 2
    predicted = search.predict(clf[:6])
    assert set(predicted) <= {"normal", "tumor"}
    assert search.best_estimator_.classes_.tolist() == ["normal", "tumor"]


def test_classifier_with_integer_labels(clf):
    y = (clf.targets() == "tumor").astype(int)
    est = ABMILClassifier(**TINY_ABMIL).fit(clf, y)
    assert est.classes_.tolist() == [0, 1]
    proba = est.predict_proba(clf)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
    predicted = est.predict(clf)
    np.testing.assert_array_equal(predicted, np.array([0, 1])[proba.argmax(axis=1)])
    assert est.score(clf, y) == pytest.approx((predicted == y).mean())
    auc = cross_val_score(ABMILClassifier(**TINY_ABMIL), clf, y, cv=2, scoring="roc_auc")
    assert np.all((auc >= 0) & (auc <= 1))


def test_msrl_classifier(clf):
    base = clf.base
    genomics = pd.DataFrame(np.random.default_rng(0).normal(size=(len(base), 3)), index=base.case_ids)
    cases = CohortCases(Cohort(base.cases, base.slides, base.bags, "classification", genomics))
    est = MSRLClassifier(**TINY_MSRL).fit(cases[np.arange(24)])
    proba = est.predict_proba(cases[np.arange(24, 36)])
    assert proba.shape == (12, 2) and est.score(cases[np.arange(24, 36)]) >= 0


def test_bad_inputs(surv, clf):
    with pytest.raises(BadInputError, match="CohortCases"):
        ABMILSurvival(**TINY_ABMIL).fit(np.zeros((3, 4)))
    with pytest.raises(BadInputError, match="y has 2 rows"):
        ABMILSurvival(**TINY_ABMIL).fit(surv, survival_y([True, False], [1.0, 2.0]))
    with pytest.raises(BadInputError, match="structured array"):
        ABMILSurvival(**TINY_ABMIL).fit(surv, np.ones(len(surv)))
    with pytest.raises(BadInputError, match="needs a survival cohort"):
        ABMILSurvival(**TINY_ABMIL).fit(clf)
    unlabelled = Cohort(pd.DataFrame(index=surv.base.case_ids), surv.base.slides, surv.base.bags, "survival",
                        labelled=False)
    with pytest.raises(BadInputError, match="unlabelled"):
        ABMILSurvival(**TINY_ABMIL).fit(CohortCases(unlabelled))
