"""The controls of the benchmark protocol that catch fake wins (shared/benchmark.md)."""
import math

import numpy as np
import pandas as pd
import pytest

from msrl_plugin.evaluation.crossval import cross_validate
from msrl_plugin.evaluation.metrics import concordance_index
from msrl_plugin.evaluation.splits import kfold_splits
from msrl_plugin.synth import CohortConfig, generate_cohort

SMALL = dict(max_epochs=6, seed=0, batch_size=16)
MSRL_SMALL = dict(SMALL, pretrain_epochs=5, embed_dim=32, k=5, buffer_size=128, lr=1e-3)


def pooled_cindex(cohort, result) -> float:
    pred = pd.concat(result.predictions.values()).loc[cohort.case_ids]
    return concordance_index(cohort.times(), cohort.events(), pred["risk"].to_numpy())


@pytest.fixture(scope="module")
def null_cohort():
    config = CohortConfig.test_tier(rho=0.0, n_cases=240, bag_min=16, bag_max=32)
    return generate_cohort(config, seed=7).to_cohort()


@pytest.mark.parametrize("name,params", [("abmil", SMALL), ("msrl", MSRL_SMALL), ("msrl_h", MSRL_SMALL)])
def test_no_wsi_signal_gives_chance_cindex(null_cohort, name, params):
    """rho = 0: the WSI carries nothing about the outcome, so every WSI-inference model must score ~0.5."""
    folds = kfold_splits(null_cohort, 3, seed=0)
    result = cross_validate(null_cohort, folds, name, params, log=lambda *_: None)
    c = pooled_cindex(null_cohort, result)
    se = 0.5 / math.sqrt(null_cohort.events().sum())  # conservative standard error of a chance c-index
    assert abs(c - 0.5) < 2 * se, f"{name}: pooled c-index {c:.3f} at rho = 0 (leakage?)"


def test_shuffled_buffer_loses_the_borrowed_signal():
    """Permuting the buffer's genomics across cases must not leave MSRL better than ABMIL or than itself."""
    config = CohortConfig.test_tier(n_cases=160, bag_min=16, bag_max=48, w_hidden=1.0)
    cohort = generate_cohort(config, seed=3).to_cohort()
    from msrl_plugin import create_aggregator

    real, shuffled, abmil = [], [], []
    for fold in kfold_splits(cohort, 3, seed=0):
        train, test = cohort.subset(fold.train), cohort.subset(fold.test)
        model = create_aggregator("msrl", **MSRL_SMALL).fit(train)
        real.append(model.evaluate(test)["c_index"])
        control = model.with_shuffled_buffer(seed=1)
        assert not np.allclose(control.predict(test)["risk"], model.predict(test)["risk"])
        shuffled.append(control.evaluate(test)["c_index"])
        abmil.append(create_aggregator("abmil", **SMALL).fit(train).evaluate(test)["c_index"])
    assert np.mean(shuffled) <= np.mean(abmil) + 0.05, (shuffled, abmil)
    assert np.mean(shuffled) <= np.mean(real) + 0.05, (shuffled, real)
