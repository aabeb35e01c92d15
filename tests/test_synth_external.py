"""Issue 20's generator knobs: external test cohorts, a pan-cancer pool, the second signal model."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from msrl_plugin.errors import MSRLPluginError
from msrl_plugin.synth import (
    CohortConfig,
    generate_cohort,
    generate_pancancer_pool,
    with_external,
    write_cohort,
)
from msrl_plugin.synth.genomics import Projector, gaussian_rows

TINY = {"n_cases": 48, "bag_min": 8, "bag_max": 16, "feature_dim": 16, "d_g": 8}


def _cohort(seed: int = 0, **kw):
    return generate_cohort(CohortConfig.test_tier(**{**TINY, **kw}), seed)


def _same(a, b) -> bool:
    return (a.cases.equals(b.cases) and a.genomics.equals(b.genomics)
            and all(np.array_equal(a.bags[s][0], b.bags[s][0]) for s in a.bags))


# -- external cohort -------------------------------------------------------------------------------
def test_external_shapes_sites_and_disjoint_cases():
    c = _cohort(n_external=64, n_external_sites=2)
    ext = c.external
    assert len(c.cases) == 48 and len(ext.cases) == 64 and ext.folds == []
    assert ext.genomics.shape == (64, 8) and list(ext.genomics.columns) == list(c.genomics.columns)
    assert set(ext.case_ids).isdisjoint(c.case_ids) and set(ext.bags).isdisjoint(c.bags)
    assert set(ext.cases["site"]) == {"external_site_0", "external_site_1"}
    assert set(ext.cases["site"]).isdisjoint(c.cases["site"])  # held-out sites
    assert ext.bags[ext.cases["slide_id"][0]][0].shape[1] == 16
    assert ext.truth.eta is not None and ext.truth.eta_wsi is not None
    # new rows of the population, never a training row again
    assert not np.isin(ext.genomics.to_numpy().round(5), c.genomics.to_numpy().round(5)).all(axis=1).any()


def test_external_is_deterministic_and_leaves_the_training_cohort_alone():
    a, b = _cohort(3, n_external=40), _cohort(3, n_external=40)
    assert _same(a, b) and _same(a.external, b.external)
    assert _same(a, _cohort(3))  # asking for an external set does not change the training cohort
    assert not _same(a.external, _cohort(4, n_external=40).external)
    assert _cohort(3).external is None


def test_external_cohort_has_the_same_signal():
    c = generate_cohort(CohortConfig.test_tier(n_cases=200, bag_min=8, bag_max=16, n_external=800), 1)
    ext = c.external
    assert abs(ext.cases["censorship"].mean() - 0.6) < 0.02
    assert 0.65 < ext.truth.oracle_cindex < 0.8 and 0.65 < c.truth.oracle_cindex < 0.8
    assert 0.6 < ext.truth.eta.std() < 1.0  # sd 0.8 on the training cohort, the same teacher


def test_projector_reproduces_the_reference_components():
    raw = gaussian_rows(120, 40, np.random.default_rng(0))
    from msrl_plugin.synth.genomics import principal_components, standardise

    values, _ = standardise(raw)
    proj = Projector.fit(raw, 16)
    np.testing.assert_allclose(proj.standardise(raw), values, atol=1e-10)
    np.testing.assert_allclose(proj.components(proj.standardise(raw)), principal_components(values, 16), atol=1e-8)


def test_with_external_combines_for_scoring():
    c = _cohort(n_external=40)
    both, train, test = with_external(c)
    cohort = both.to_cohort()
    assert len(cohort) == 88 and train == c.case_ids and test == c.external.case_ids
    assert both.truth.eta.index.tolist() == train + test
    with pytest.raises(MSRLPluginError, match="no external"):
        with_external(_cohort())


def test_external_needs_a_source_that_draws_new_rows():
    with pytest.raises(MSRLPluginError, match="draw new rows"):
        CohortConfig.test_tier(genomics_source="sksurv_breast", n_external=100)
    with pytest.raises(MSRLPluginError, match="n_external"):
        CohortConfig.test_tier(n_external=10)


# -- pan-cancer pool -------------------------------------------------------------------------------
def test_pool_types_sites_and_exclusions(tmp_path):
    cfg = CohortConfig.test_tier(**{**TINY, "n_external": 40})
    c = generate_cohort(cfg, 2)
    pool = generate_pancancer_pool(cfg, 2, n_types=5, n_cases=160)
    assert len(pool.cases) == 160 and pool.folds == []
    assert sorted(pool.cases["cancer_type"].unique()) == ["type1", "type2", "type3", "type4"]  # never type 0
    assert (pool.cases["cancer_type"].value_counts() == 40).all()
    ids = set(pool.case_ids)
    assert ids.isdisjoint(c.case_ids) and ids.isdisjoint(c.external.case_ids)
    rows = pool.genomics.to_numpy().round(5)
    for other in (c.genomics, c.external.genomics):  # no evaluated or external case's genomics in the pool
        assert not np.isin(rows, other.to_numpy().round(5)).all(axis=1).any()
    assert set(pool.cases["site"]).isdisjoint(set(c.cases["site"]) | set(c.external.cases["site"]))
    assert list(pool.genomics.columns) == list(c.genomics.columns)  # pre-training matches the cohort's columns
    # each type its own baseline: median survival differs between types
    medians = pool.cases.groupby("cancer_type")["survival_months"].median()
    assert medians.max() / medians.min() > 1.2
    paths = write_cohort(pool, tmp_path / "pool")
    assert len(pd.read_csv(paths["clinical"])) == 160 and not (tmp_path / "pool" / "splits").exists()
    again = generate_pancancer_pool(cfg, 2, n_types=5, n_cases=160)
    assert _same(pool, again)


def test_pool_types_have_their_own_hazards_on_the_shared_programme():
    cfg = CohortConfig.test_tier(n_cases=100, bag_min=4, bag_max=8, feature_dim=16)
    pool = generate_pancancer_pool(cfg, 0, n_types=3, n_cases=400)
    U, eta = pool.truth.components, pool.truth.eta
    betas = []
    for t in ("type1", "type2"):
        rows = (pool.cases["cancer_type"] == t).to_numpy()
        coef, *_ = np.linalg.lstsq(U.to_numpy()[rows, :8], eta.to_numpy()[rows], rcond=None)
        betas.append(coef / np.linalg.norm(coef))
    assert abs(betas[0] @ betas[1]) < 0.95  # different hazard weights over the same components


def test_pool_rejects_real_rows():
    with pytest.raises(MSRLPluginError, match="draw new rows"):
        generate_pancancer_pool(CohortConfig.test_tier(genomics_source="sksurv_breast", n_cases=100), 0)


# -- the second signal model -----------------------------------------------------------------------
def test_second_signal_model_differs_and_keeps_defaults():
    base = _cohort(5)
    b = _cohort(5, signal_model="abundance", hazard_form="quadratic")
    assert b.cases["site"].equals(base.cases["site"])
    assert not np.allclose(b.truth.eta, base.truth.eta)  # another hazard form
    slide = base.cases["slide_id"][0]
    assert not np.allclose(b.bags[slide][0][:8], base.bags[slide][0][:8])  # another morphology
    # each knob alone: the linear hazard with the abundance bags keeps the default's eta
    a = _cohort(5, signal_model="abundance")
    np.testing.assert_array_equal(a.truth.eta, base.truth.eta)
    q = _cohort(5, hazard_form="quadratic")
    assert all(np.array_equal(q.bags[s][0], base.bags[s][0]) for s in base.bags)
    assert CohortConfig().signal_model == "mixture" and CohortConfig().hazard_form == "linear"
    with pytest.raises(MSRLPluginError, match="f_needle"):
        CohortConfig.test_tier(signal_model="abundance", f_needle=0.2)


def test_quadratic_hazard_wsi_oracle_matches_its_formula():
    c = generate_cohort(CohortConfig.test_tier(n_cases=400, bag_min=4, bag_max=8, rho=1.0,
                                               hazard_form="quadratic", w_hidden=0.0), 0)
    # rho = 1 and no hidden part: the WSI latent is the visible state, so E[eta | z] = eta
    np.testing.assert_allclose(c.truth.eta_wsi, c.truth.eta, atol=1e-8)


def test_abundance_signal_share_follows_the_latent():
    cfg = CohortConfig.test_tier(n_cases=200, bag_min=64, bag_max=64, feature_dim=32, sigma_p=0.0,
                                 case_noise=0.0, sigma_site=0.0, signal_model="abundance", rho=1.0)
    c = generate_cohort(cfg, 0)
    from msrl_plugin.synth.signal import World

    world = World.draw(cfg, 0, sorted(set(c.cases["site"])))
    background = world.prototypes @ world.lift
    # without noise a background patch is exactly a prototype; a signal patch is not
    share = []
    for s in c.cases["slide_id"]:
        x = c.bags[s][0]
        share.append(np.mean(((x[:, None, :] - background[None]) ** 2).sum(-1).min(1) > 1e-6))
    score = c.truth.latent.to_numpy() @ world.abundance_weights
    assert np.corrcoef(share, score)[0, 1] > 0.8
    assert max(share) <= 0.3 + 1 / 64


@pytest.mark.parametrize("knobs", [{}, {"signal_model": "abundance", "hazard_form": "quadratic"}])
def test_rho_zero_still_has_no_wsi_signal(knobs):
    c = generate_cohort(CohortConfig.test_tier(n_cases=300, bag_min=16, bag_max=32, rho=0.0, n_external=300,
                                               **knobs), 0)
    for part in (c, c.external):
        assert part.truth.eta_wsi.std() < 1e-9  # E[eta | WSI latent] is a constant
        latent = part.truth.latent.to_numpy()
        corr = [abs(np.corrcoef(latent[:, j], part.truth.eta)[0, 1]) for j in range(latent.shape[1])]
        assert max(corr) < 0.2  # 300 cases: the sd of a null correlation is ~0.06
        if knobs:  # the quadratic term: no correlation with the squared latent either
            assert abs(np.corrcoef((latent ** 2).sum(1), part.truth.eta)[0, 1]) < 0.2
        means = np.stack([part.bags[s][0].mean(0) for s in part.cases["slide_id"]])
        top = np.abs([np.corrcoef(means[:, j], part.truth.eta)[0, 1] for j in range(means.shape[1])]).max()
        assert top < 0.25


def test_config_roundtrip_keeps_new_knobs():
    cfg = CohortConfig.test_tier(n_external=64, signal_model="abundance", hazard_form="quadratic")
    again = CohortConfig.from_dict(cfg.to_dict())
    assert again == cfg
    # old configs without the new keys still load, with the first generator's meaning
    old = {k: v for k, v in cfg.to_dict().items()
           if k not in ("n_external", "n_external_sites", "signal_model", "hazard_form", "abundance_max")}
    assert CohortConfig.from_dict(old) == dataclasses.replace(cfg, n_external=0, signal_model="mixture",
                                                              hazard_form="linear")
