"""The multimodal references that read genomics at test time: ``snn`` and ``fusion`` (concat / bilinear)."""
import numpy as np
import pandas as pd
import pytest
import torch
from _cohorts import easy_survival_cohort, labelled_genomics_cohort

import msrl_plugin.aggregators.multimodal  # noqa: F401  (registers snn and fusion)
from msrl_plugin import Cohort, create_aggregator, list_aggregators
from msrl_plugin.aggregators.base import Aggregator
from msrl_plugin.errors import BadInputError
from msrl_plugin.nn.fusion import ConcatFusion, GatedBilinearFusion, LateFusionNetwork

SMALL_FUSION = dict(hidden_dim=32, attn_dim=16, omic_dim=32, max_epochs=3, lr=1e-3, seed=0)
SMALL_SNN = dict(hidden_dim=32, max_epochs=3, lr=1e-3, seed=0)


def without_genomics(cohort: Cohort) -> Cohort:
    return Cohort(cohort.cases, cohort.slides, cohort.bags, cohort.task, None, cohort.class_names)


def complete_ids(cohort: Cohort) -> list[str]:
    return [c for c, h in zip(cohort.case_ids, cohort.has_genomics, strict=True) if h]


@pytest.fixture(scope="module")
def cohort() -> Cohort:
    return easy_survival_cohort(n=60, genomics_dim=8, missing_genomics=0.2)


def test_fusion_modules_shapes_and_gradients():
    v1 = torch.randn(3, 256, requires_grad=True)
    v2 = torch.randn(3, 256, requires_grad=True)
    assert ConcatFusion(256, 256)(v1, v2).shape == (3, 256)
    bilinear = GatedBilinearFusion(256, 256)
    assert bilinear.encoder1[0].in_features == 33 * 33  # (256/8 + 1)^2: the Kronecker product with a 1
    out = bilinear(v1, v2)
    assert out.shape == (3, 256)
    out.sum().backward()
    assert v1.grad.abs().sum() > 0 and v2.grad.abs().sum() > 0


@pytest.mark.parametrize("fusion", ["concat", "bilinear"])
def test_late_fusion_network_ignores_padding(fusion):
    net = LateFusionNetwork(16, 8, 4, fusion, hidden_dim=32, attn_dim=16, omic_dim=32).eval()
    x, g = torch.randn(2, 10, 16), torch.randn(2, 8)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 6:] = False
    logits = net(x, mask, g)
    assert logits.shape == (2, 4)
    torch.testing.assert_close(logits[1:], net(x[1:, :6], None, g[1:]), atol=1e-5, rtol=1e-5)


def test_snn_drops_training_cases_without_genomics_and_refuses_them_at_test(cohort, tmp_path):
    n_missing = int((~cohort.has_genomics).sum())
    assert n_missing > 0
    with pytest.warns(UserWarning, match=f"{n_missing} of 60 training case"):
        model = create_aggregator("snn", **SMALL_SNN).fit(cohort)
    assert model.training_case_ids_ == complete_ids(cohort)
    with pytest.raises(BadInputError, match=f"{n_missing} of 60 case"):
        model.predict(cohort)
    with pytest.raises(BadInputError, match="all 60 case"):
        model.predict(without_genomics(cohort))
    complete = cohort.subset(complete_ids(cohort))
    pred = model.predict(complete)
    assert list(pred.index) == complete_ids(cohort) and np.isfinite(pred["risk"]).all()
    loaded = Aggregator.load(model.save(tmp_path / "snn.pt"))
    pd.testing.assert_frame_equal(loaded.predict(complete), pred)


def test_snn_learns_risk_from_genomics():
    # signal=0: the bags carry no risk, genomic column 0 does
    cohort = easy_survival_cohort(n=160, genomics_dim=8, seed=3, signal=0.0)
    train, test = cohort.subset(cohort.case_ids[:110]), cohort.subset(cohort.case_ids[110:])
    model = create_aggregator("snn", hidden_dim=64, max_epochs=15, lr=1e-3, seed=0).fit(train)
    assert model.evaluate(test)["c_index"] > 0.65


@pytest.mark.parametrize("fusion", ["concat", "bilinear"])
def test_fusion_fit_predict_save_load(cohort, fusion, tmp_path):
    with pytest.warns(UserWarning, match="left out of training"):
        model = create_aggregator("fusion", fusion=fusion, **SMALL_FUSION).fit(cohort)
    test = cohort.subset(complete_ids(cohort))
    pred = model.predict(test)
    assert list(pred.index) == test.case_ids and np.isfinite(pred["risk"]).all()
    loaded = Aggregator.load(model.save(tmp_path / "fusion.pt"))
    pd.testing.assert_frame_equal(loaded.predict(test), pred)
    assert loaded.get_params() == model.get_params()
    # it reads genomics at test: shuffled genomics rows change the predictions
    shuffled = test.genomics.copy()
    shuffled[:] = shuffled.to_numpy()[::-1]
    other = Cohort(test.cases, test.slides, test.bags, test.task, shuffled)
    assert not np.allclose(model.predict(other)["risk"], pred["risk"])
    with pytest.raises(BadInputError, match="lack a complete genomics row"):
        model.predict(cohort)
    for att, _ in model.attention_scores(test.subset(test.case_ids[:2])).values():
        assert att.sum() == pytest.approx(1, abs=1e-5)


def test_fusion_impute_mean_keeps_cases_without_genomics(cohort):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no case is dropped, so no warning
        model = create_aggregator("fusion", missing_genomics="impute_mean", **SMALL_FUSION).fit(cohort)
    assert model.training_case_ids_ == cohort.case_ids
    assert np.isfinite(model.predict(cohort)["risk"]).all()


def test_bad_choices_and_no_genomics(cohort):
    with pytest.raises(BadInputError, match="fusion must be a str among .*got 'sum'"):
        create_aggregator("fusion", fusion="sum", **SMALL_FUSION).fit(cohort)
    with pytest.raises(BadInputError, match="missing_genomics must be a str among .*got 'drop'"):
        create_aggregator("fusion", missing_genomics="drop", **SMALL_FUSION).fit(cohort)
    with pytest.raises(BadInputError, match="needs genomics"):
        create_aggregator("snn", **SMALL_SNN).fit(without_genomics(cohort))


def test_classification_for_snn_and_fusion():
    cohort = labelled_genomics_cohort()
    train, test = cohort.subset(cohort.case_ids[:60]), cohort.subset(cohort.case_ids[60:])
    runs = [("snn", {**SMALL_SNN, "max_epochs": 8}), ("fusion", {**SMALL_FUSION, "max_epochs": 5})]
    for name, params in runs:
        model = create_aggregator(name, **params).fit(train)
        pred = model.predict(test)
        np.testing.assert_allclose(pred[["prob_normal", "prob_tumor"]].sum(1), 1, rtol=1e-5)
        assert model.evaluate(test)["auc"] > 0.75, name


def test_registered_with_genomics_flags():
    assert {"snn", "fusion"} <= set(list_aggregators())
    for name in ("snn", "fusion"):
        model = create_aggregator(name)
        assert model.uses_genomics and model.genomics_at_test
        assert model.get_params()["max_epochs"] == 20 and model.get_params()["lr"] == 2e-4
