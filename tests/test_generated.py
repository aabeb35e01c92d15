"""Generated-genomics baselines: ``recon_fusion`` (G-HANet-style) and ``cvae_fusion`` (LD-CVAE-style)."""
import numpy as np
import pandas as pd
import pytest
import torch
from _cohorts import easy_survival_cohort, labelled_genomics_cohort

import msrl_plugin.aggregators.generated  # noqa: F401  (registers recon_fusion and cvae_fusion)
from msrl_plugin import Cohort, create_aggregator, list_aggregators
from msrl_plugin.aggregators.base import Aggregator
from msrl_plugin.batching import collate, load_case_data
from msrl_plugin.errors import BadInputError
from msrl_plugin.nn.fusion import CVAEFusionNetwork, ReconFusionNetwork, gaussian_kl, reconstruction_loss

GENERATED = ["recon_fusion", "cvae_fusion"]
SMALL = dict(hidden_dim=32, attn_dim=16, omic_dim=32, decoder_dim=32, max_epochs=3, lr=1e-3, seed=0)


@pytest.fixture(scope="module")
def cohort() -> Cohort:
    return easy_survival_cohort(n=60, genomics_dim=8, missing_genomics=0.2)


def without_genomics(cohort: Cohort) -> Cohort:
    return Cohort(cohort.cases, cohort.slides, cohort.bags, cohort.task, None, cohort.class_names)


def test_reconstruction_loss_and_kl():
    g = torch.randn(5, 8)
    assert reconstruction_loss(g, g).item() == pytest.approx(0, abs=1e-6)
    assert reconstruction_loss(-g, g).item() == pytest.approx(4 * g.pow(2).mean().item() + 8, rel=1e-4)
    assert reconstruction_loss(g[:0], g[:0]).item() == 0
    mu, logvar = torch.randn(4, 3), torch.randn(4, 3)
    assert gaussian_kl(mu, logvar, mu, logvar).abs().max() < 1e-6
    mu_p, logvar_p = torch.randn(4, 3), torch.randn(4, 3)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(mu_p, (0.5 * logvar_p).exp())
    expected = torch.distributions.kl_divergence(q, p).sum(1)
    torch.testing.assert_close(gaussian_kl(mu, logvar, mu_p, logvar_p), expected)


def test_generated_networks_shapes_and_wsi_only_evaluation():
    x, g = torch.randn(3, 12, 16), torch.randn(3, 8)
    recon = ReconFusionNetwork(16, 8, 4, "bilinear", hidden_dim=32, attn_dim=16, omic_dim=32, decoder_dim=32)
    logits, generated = recon.eval()(x)
    assert logits.shape == (3, 4) and generated.shape == (3, 8)
    cvae = CVAEFusionNetwork(16, 8, 4, hidden_dim=32, attn_dim=16, omic_dim=32, latent_dim=4, decoder_dim=32)
    has = torch.tensor([True, False, True])
    _, generated, kl = cvae.train()(x, None, g, has)
    assert generated.shape == (3, 8) and kl[1] == 0 and (kl[has] > 0).all()
    cvae.eval()
    first = cvae(x, None, g, has)[0]
    torch.testing.assert_close(first, cvae(x)[0])  # evaluation: prior mean, genomics never read
    torch.testing.assert_close(first, cvae(x, None, torch.randn(3, 8), has)[0])


@pytest.mark.parametrize("name", GENERATED)
def test_wsi_only_inference_round_trip_and_generated_genomics(cohort, name, tmp_path):
    train, test = cohort.subset(cohort.case_ids[:45]), cohort.subset(cohort.case_ids[45:])
    model = create_aggregator(name, **SMALL).fit(train)
    assert model.training_case_ids_ == train.case_ids  # cases without genomics still train the task
    pred = model.predict(test)
    assert list(pred.index) == test.case_ids and np.isfinite(pred["risk"]).all()
    pd.testing.assert_frame_equal(model.predict(without_genomics(test)), pred)
    pd.testing.assert_frame_equal(model.predict(test), pred)  # deterministic
    loaded = Aggregator.load(model.save(tmp_path / f"{name}.pt"))
    pd.testing.assert_frame_equal(loaded.predict(without_genomics(test)), pred)
    assert loaded.get_params() == model.get_params()
    generated = model.predict_genomics(without_genomics(test))
    assert generated.shape == (15, 8) and list(generated.columns) == list(cohort.genomics.columns)
    for att, _ in model.attention_scores(test.subset(test.case_ids[:2])).values():
        assert att.sum() == pytest.approx(1, abs=1e-5)


@pytest.mark.parametrize("name", GENERATED)
def test_reconstruction_loss_decreases_and_tracks_real_genomics(cohort, name):
    model = create_aggregator(name, **{**SMALL, "max_epochs": 12}).fit(cohort)
    recon = [row["recon_loss"] for row in model.history_]
    assert np.isfinite(recon).all() and np.mean(recon[-3:]) < recon[0]
    # genomic column 0 carries the bag's risk: the generated column should follow the real one
    real = cohort.genomics
    generated = model.predict_genomics(cohort).loc[real.index]
    assert np.corrcoef(generated["g0"], real["g0"])[0, 1] > 0.5


@pytest.mark.parametrize("name", GENERATED)
def test_generation_loss_only_on_cases_with_genomics(cohort, name):
    model = create_aggregator(name, **{**SMALL, "max_epochs": 1}).fit(cohort)
    data = load_case_data(cohort, model.scaler_, model.task_.targets(cohort), model.genomics_columns_)
    batch = collate(data, torch.arange(8))
    net = model.model_.eval()  # no dropout, prior mean: the loss is deterministic
    task_only = model.task_.loss(model._forward(net, batch), batch.targets)
    none = collate(data, torch.arange(8))
    none.has_genomics = torch.zeros(8, dtype=torch.bool)
    none.genomics = torch.randn(8, 8)  # must be ignored: nobody has genomics
    with torch.no_grad():
        torch.testing.assert_close(model._training_loss(net, none), task_only)
        assert model._training_loss(net, batch) > task_only
    assert np.isnan(model._step_log[-2]["recon_loss"])


def test_cvae_resume_matches_an_uninterrupted_run(cohort, tmp_path):
    params = {**SMALL, "max_epochs": 4, "kl_warmup": 3}
    whole = create_aggregator("cvae_fusion", **params).fit(cohort)
    crashed = create_aggregator("cvae_fusion", **params).enable_resume(tmp_path / "state.pt")
    train_step = crashed._training_loss

    def crash_in_third_epoch(model, batch):
        if crashed._epoch() == 2:
            raise KeyboardInterrupt
        return train_step(model, batch)

    crashed._training_loss = crash_in_third_epoch
    with pytest.raises(KeyboardInterrupt):
        crashed.fit(cohort)
    resumed = create_aggregator("cvae_fusion", **params).enable_resume(tmp_path / "state.pt").fit(cohort)
    pd.testing.assert_frame_equal(resumed.predict(cohort), whole.predict(cohort))
    assert resumed.history_ == whole.history_  # KL warm-up and logged terms continue where they stopped


def test_kl_warmup_and_bad_choices(cohort):
    model = create_aggregator("cvae_fusion", kl_weight=2.0, kl_warmup=4)
    assert [model.kl_beta(e) for e in (0, 2, 4, 9)] == [0.0, 1.0, 2.0, 2.0]
    assert create_aggregator("cvae_fusion", kl_warmup=0).kl_beta(0) == 1.0
    with pytest.raises(BadInputError, match="fusion must be a str among .*got 'sum'"):
        create_aggregator("recon_fusion", fusion="sum", **SMALL).fit(cohort)
    with pytest.raises(BadInputError, match="needs genomics"):
        create_aggregator("cvae_fusion", **SMALL).fit(without_genomics(cohort))


@pytest.mark.parametrize("name", GENERATED)
def test_classification(name):
    cohort = labelled_genomics_cohort()
    train, test = cohort.subset(cohort.case_ids[:60]), cohort.subset(cohort.case_ids[60:])
    model = create_aggregator(name, **{**SMALL, "max_epochs": 15, "seed": 1}).fit(train)
    pred = model.predict(without_genomics(test))
    np.testing.assert_allclose(pred[["prob_normal", "prob_tumor"]].sum(1), 1, rtol=1e-5)
    assert model.evaluate(test)["auc"] > 0.75


def test_registered_as_wsi_only_models():
    assert set(GENERATED) <= set(list_aggregators())
    for name in GENERATED:
        model = create_aggregator(name)
        assert model.uses_genomics and not model.genomics_at_test
        assert model.get_params()["max_epochs"] == 20 and model.get_params()["lr"] == 2e-4
    assert create_aggregator("recon_fusion").get_params()["recon_weight"] == 0.3
