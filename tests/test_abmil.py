import numpy as np
import pandas as pd
import pytest
import torch
from _cohorts import easy_classification_cohort, easy_survival_cohort
from sklearn.base import clone

from msrl_plugin import create_aggregator, list_aggregators
from msrl_plugin.aggregators.base import Aggregator
from msrl_plugin.errors import CheckpointError, MSRLPluginError
from msrl_plugin.nn.abmil import ABMIL


def test_abmil_module_shapes_and_mask():
    model = ABMIL(16, 4).eval()
    x = torch.randn(2, 10, 16)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 6:] = False
    logits, scores = model(x, mask)
    assert logits.shape == (2, 4) and scores.shape == (2, 10)
    assert torch.isinf(scores[1, 6:]).all()
    alone, _ = model(x[1:, :6], None)  # padding must not change a bag's output
    torch.testing.assert_close(logits[1:], alone, atol=1e-5, rtol=1e-5)


def test_padded_batch_gradients_equal_bag_by_bag():
    """The packed (segment) path of the pool: same outputs and parameter gradients as one bag at a time."""
    torch.manual_seed(0)
    model = ABMIL(16, 4).eval()
    sizes = [9, 3, 6]
    bags = [torch.randn(n, 16) for n in sizes]
    x = torch.zeros(3, 9, 16)
    mask = torch.zeros(3, 9, dtype=torch.bool)
    for i, bag in enumerate(bags):
        x[i, : len(bag)], mask[i, : len(bag)] = bag, True
    model(x, mask)[0].square().sum().backward()
    batched = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for bag in bags:
        model(bag[None])[0].square().sum().backward()
    for got, want in zip(batched, (p.grad for p in model.parameters())):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)

def test_abmil_learns_easy_survival_task():
    cohort = easy_survival_cohort(n=160, seed=1)
    train, test = cohort.subset(cohort.case_ids[:110]), cohort.subset(cohort.case_ids[110:])
    model = create_aggregator("abmil", max_epochs=15, seed=0).fit(train)
    assert model.evaluate(test)["c_index"] > 0.7
    pred = model.predict(test)
    assert list(pred.index) == test.case_ids and "risk" in pred


@pytest.mark.parametrize("name", ["abmil", "msrl"])
def test_bf16_training_learns_and_keeps_float32_weights(name):
    cohort = easy_survival_cohort(n=160, seed=1)
    train, test = cohort.subset(cohort.case_ids[:110]), cohort.subset(cohort.case_ids[110:])
    # the precision path is under test; a genomic teacher pre-fitted on this test's pure-noise genomics would
    # add noise to the borrowed term (frozen by default), so it is off here
    extra = {"pretrain_epochs": 3, "embed_dim": 32, "genomic_teacher_steps": 0} if name == "msrl" else {}
    if name == "msrl":
        genomics = pd.DataFrame(np.random.default_rng(0).normal(size=(len(cohort), 4)), index=cohort.case_ids)
        train.genomics = genomics.loc[train.case_ids]
    model = create_aggregator(name, max_epochs=15, seed=0, precision="bf16", **extra).fit(train)
    assert model.evaluate(test)["c_index"] > 0.7
    assert np.issubdtype(model.predict(test)["risk"].dtype, np.floating)
    assert all(p.dtype == torch.float32 for p in model.model_.parameters())


def test_unknown_precision_is_a_clear_error():
    with pytest.raises(MSRLPluginError, match="precision must be"):
        create_aggregator("abmil", max_epochs=1, precision="fp8").fit(easy_survival_cohort(n=20))


def test_abmil_learns_easy_classification_task():
    cohort = easy_classification_cohort(n=120, seed=2)
    train, test = cohort.subset(cohort.case_ids[:80]), cohort.subset(cohort.case_ids[80:])
    model = create_aggregator("abmil", max_epochs=15, seed=0).fit(train)
    metrics = model.evaluate(test)
    assert metrics["auc"] > 0.8
    probs = model.predict(test)[["prob_normal", "prob_tumor"]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)


def test_same_seed_same_predictions_and_save_load_round_trip(tmp_path):
    cohort = easy_survival_cohort(n=60)
    a = create_aggregator("abmil", max_epochs=2, seed=3).fit(cohort)
    b = create_aggregator("abmil", max_epochs=2, seed=3).fit(cohort)
    np.testing.assert_array_equal(a.predict(cohort)["risk"], b.predict(cohort)["risk"])
    path = a.save(tmp_path / "m.pt")
    loaded = Aggregator.load(path)
    np.testing.assert_array_equal(loaded.predict(cohort)["risk"], a.predict(cohort)["risk"])
    assert loaded.get_params() == a.get_params()


def test_attention_scores_per_patch():
    cohort = easy_survival_cohort(n=30)
    model = create_aggregator("abmil", max_epochs=1).fit(cohort)
    scores = model.attention_scores(cohort.subset(cohort.case_ids[:3]))
    for case_id, (att, _) in scores.items():
        assert att.shape == (cohort.load_bag(case_id).features.shape[0],)
        assert att.sum() == pytest.approx(1, abs=1e-5)


def test_registry_and_sklearn_params():
    assert "abmil" in list_aggregators()
    model = create_aggregator("abmil", lr=1e-3)
    assert clone(model).get_params()["lr"] == 1e-3
    with pytest.raises(MSRLPluginError, match="no parameter"):
        create_aggregator("abmil", not_a_param=1)
    with pytest.raises(MSRLPluginError, match="unknown model"):
        create_aggregator("nope")


def test_feature_dim_mismatch_and_foreign_checkpoints(tmp_path):
    model = create_aggregator("abmil", max_epochs=1).fit(easy_survival_cohort(n=30, dim=16))
    with pytest.raises(CheckpointError, match="16-d"):
        model.predict(easy_survival_cohort(n=10, dim=8))
    raw = tmp_path / "clam_state.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, raw)
    with pytest.raises(CheckpointError, match="not an msrl-plugin checkpoint"):
        Aggregator.load(raw)
