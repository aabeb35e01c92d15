"""The semi-synthetic cohort generator: determinism, on-disk formats, and the controls of benchmark.md."""
from __future__ import annotations

import json
import sys

import h5py
import numpy as np
import pandas as pd
import pytest

from msrl_plugin.errors import MSRLPluginError
from msrl_plugin.synth import CohortConfig, SynthCohort, generate_cohort, write_cohort
from msrl_plugin.synth.genomics import gaussian_surrogate, principal_components, standardise

# survset 0.2.11 unpickles through numpy.core, which numpy 2 flags as deprecated
survset_warning = pytest.mark.filterwarnings("ignore:numpy.core.numeric is deprecated:DeprecationWarning")
SMALL = {"n_cases": 60, "bag_min": 16, "bag_max": 32}
NINE_COORDS_ATTRS = {
    "patch_size": np.int64, "patch_size_level0": np.float64, "level0_magnification": np.int64,
    "target_magnification": np.float64, "overlap": np.int64, "name": str, "savetodir": str,
    "level0_width": np.int64, "level0_height": np.int64,
}


@pytest.fixture(scope="module")
def cohort() -> SynthCohort:
    return generate_cohort(CohortConfig.test_tier(), seed=3)


def _cindex(time, event, risk) -> float:
    from lifelines.utils import concordance_index

    return concordance_index(time, -np.asarray(risk), event)


def _wsi_only_oof_cindex(c: SynthCohort) -> float:
    """A simple WSI-only model: ridge Cox on standardised bag means, out-of-fold over the cohort's folds."""
    from lifelines import CoxPHFitter

    X = np.stack([c.bags[s][0].mean(axis=0) for s in c.cases["slide_id"]])
    time_, event = c.cases["survival_months"].to_numpy(), 1 - c.cases["censorship"].to_numpy()
    pos = {k: i for i, k in enumerate(c.case_ids)}
    risk = np.zeros(len(X))
    for train, test in c.folds:
        tr, te = [pos[k] for k in train], [pos[k] for k in test]
        Z = (X - X[tr].mean(0)) / X[tr].std(0)
        frame = pd.DataFrame(Z[tr]).assign(t=time_[tr], e=event[tr])
        model = CoxPHFitter(penalizer=0.5).fit(frame, "t", "e")
        risk[te] = model.predict_log_partial_hazard(pd.DataFrame(Z[te])).to_numpy().ravel()
    return _cindex(time_, event, risk)


# -- config --------------------------------------------------------------------------------------
def test_tiers_and_defaults():
    small, big, default = CohortConfig.test_tier(), CohortConfig.benchmark_tier(), CohortConfig()
    assert 60 <= small.n_cases <= 120 and (small.bag_min, small.bag_max) == (32, 128)
    assert (small.feature_dim, small.d_g) == (64, 32)
    assert (big.n_cases, big.bag_min, big.bag_max, big.feature_dim) == (400, 128, 512, 384)
    assert (default.rho, default.w_hidden, default.censoring_rate, default.k_vis) == (0.8, 0.5, 0.6, 8)
    assert (default.sigma_p, default.f_needle, default.sigma_site, default.d_g) == (0.3, 1.0, 0.5, 256)
    assert default.genomics_distribution == "real" and default.site_held_out
    assert CohortConfig.test_tier(rho=0.0).rho == 0.0


def test_config_yaml_roundtrip_and_validation(tmp_path):
    path = tmp_path / "cohort.yaml"
    path.write_text("rho: 0.5\nn_cases: 80\ngenomics_form: blocks\n")
    cfg = CohortConfig.from_yaml(path)
    assert (cfg.rho, cfg.n_cases, cfg.genomics_form) == (0.5, 80, "blocks")
    assert CohortConfig.from_dict(cfg.to_dict()) == cfg
    path.write_text("rhoo: 0.5\n")
    with pytest.raises(MSRLPluginError, match="unknown cohort config key"):
        CohortConfig.from_yaml(path)
    for bad in ({"rho": 1.5}, {"k_vis": 13}, {"genomics_source": "tcga"}, {"bag_min": 9, "bag_max": 8},
                {"outcome": "real"}, {"genomics_form": "pca"}, {"encoder_name": "a/b"}):
        with pytest.raises(MSRLPluginError):
            CohortConfig.test_tier(**bad)


# -- determinism ---------------------------------------------------------------------------------
def _assert_same(a: SynthCohort, b: SynthCohort) -> None:
    pd.testing.assert_frame_equal(a.cases, b.cases)
    pd.testing.assert_frame_equal(a.genomics, b.genomics)
    assert a.bags.keys() == b.bags.keys()
    for s in a.bags:
        assert np.array_equal(a.bags[s][0], b.bags[s][0]) and np.array_equal(a.bags[s][1], b.bags[s][1])
    assert all(np.array_equal(x, y) for fa, fb in zip(a.folds, b.folds) for x, y in zip(fa, fb))
    pd.testing.assert_series_equal(a.truth.eta, b.truth.eta)


def test_same_seed_same_cohort_other_seed_differs():
    cfg = CohortConfig.test_tier(**SMALL)
    a, b, other = generate_cohort(cfg, 7), generate_cohort(cfg, 7), generate_cohort(cfg, 8)
    _assert_same(a, b)
    assert not np.array_equal(a.truth.eta, other.truth.eta)
    assert not np.array_equal(a.bags[a.cases.slide_id[0]][0][:5], other.bags[other.cases.slide_id[0]][0][:5])


def test_in_memory_shapes_and_dtypes(cohort):
    cfg = cohort.config
    assert list(cohort.cases.columns) == ["case_id", "slide_id", "survival_months", "censorship", "site"]
    assert len(cohort.cases) == cfg.n_cases and cohort.cases["case_id"].is_unique
    assert (cohort.cases["survival_months"] > 0).all() and set(cohort.cases["censorship"]) <= {0, 1}
    assert cohort.genomics.shape == (cfg.n_cases, cfg.d_g) and cohort.genomics.index.name == "case_id"
    for slide, (features, coords) in cohort.bags.items():
        assert features.dtype == np.float32 and coords.dtype == np.int64
        assert features.shape[1] == cfg.feature_dim and cfg.bag_min <= len(features) <= cfg.bag_max
        assert coords.shape == (len(features), 2)
        # row-major (y outer, x inner) on the 512-px level-0 grid, inside the slide
        assert np.array_equal(np.lexsort((coords[:, 0], coords[:, 1])), np.arange(len(coords)))
        assert not (np.diff(coords, axis=0) % 512).any()
        width, height = cohort.slide_dims[slide]
        assert (coords >= 0).all() and coords[:, 0].max() + 512 <= width and coords[:, 1].max() + 512 <= height


# -- on disk -------------------------------------------------------------------------------------
def test_write_cohort_layout_and_formats(cohort, tmp_path):
    paths = write_cohort(cohort, tmp_path / "job")
    feats_dir = tmp_path / "job" / "20x_256px_0px_overlap" / "features_synthetic"
    assert paths["features_dir"] == feats_dir.resolve()
    slide = cohort.cases["slide_id"][0]
    features, coords = cohort.bags[slide]
    with h5py.File(feats_dir / f"{slide}.h5", "r") as h5:
        assert sorted(h5.keys()) == ["coords", "features"] and not dict(h5.attrs)
        f, c = h5["features"], h5["coords"]
        assert f.dtype == np.float32 and f.shape == features.shape and np.array_equal(f[:], features)
        assert f.chunks == (1, features.shape[1]) and f.maxshape == (None, features.shape[1])
        assert dict(f.attrs) == {"name": slide, "savetodir": str(feats_dir.resolve()), "encoder": "synthetic"}
        assert c.dtype == np.int64 and c.chunks == (1, 2) and c.maxshape == (None, 2)
        assert np.array_equal(c[:], coords)
        attrs = dict(c.attrs)
        assert set(attrs) == set(NINE_COORDS_ATTRS)
        for name, kind in NINE_COORDS_ATTRS.items():
            assert isinstance(attrs[name], kind), name
        assert (attrs["patch_size"], attrs["patch_size_level0"], attrs["level0_magnification"]) == (256, 512.0, 40)
        assert (attrs["target_magnification"], attrs["overlap"], attrs["name"]) == (20.0, 0, slide)
        assert attrs["savetodir"] == str(paths["coords_dir"])
    with h5py.File(paths["patches_dir"] / f"{slide}_patches.h5", "r") as h5:
        assert list(h5.keys()) == ["coords"] and np.array_equal(h5["coords"][:], coords)
        assert dict(h5["coords"].attrs).keys() == attrs.keys()
    assert len(list(feats_dir.glob("*.h5"))) == len(cohort.cases)
    assert not list(tmp_path.rglob("*.tmp"))

    clinical = pd.read_csv(paths["clinical"], dtype={"case_id": str, "slide_id": str})
    assert list(clinical.columns) == ["case_id", "slide_id", "survival_months", "censorship", "site"]
    np.testing.assert_allclose(clinical["survival_months"], cohort.cases["survival_months"])
    genomics = pd.read_csv(paths["genomics"], index_col="case_id")
    assert genomics.shape == cohort.genomics.shape and list(genomics.index) == cohort.case_ids

    for k, (train, test) in enumerate(cohort.folds):
        split_file = paths["splits_dir"] / f"splits_{k}.csv"
        assert split_file.read_text().splitlines()[0] == ",train,val,test"
        split = pd.read_csv(split_file, index_col=0, dtype=str)
        assert list(split.index) == list(range(len(split)))  # the unnamed 0..M-1 index
        assert list(split["train"].dropna()) == list(train)
        assert list(split["val"].dropna()) == list(test) == list(split["test"].dropna())
    truth = pd.read_csv(paths["truth"], index_col="case_id")
    np.testing.assert_allclose(truth["eta"], cohort.truth.eta)
    saved = json.loads(paths["config"].read_text())
    assert saved["seed"] == 3 and CohortConfig.from_dict(saved["config"]) == cohort.config


# -- outcome -------------------------------------------------------------------------------------
@pytest.mark.parametrize("target,model", [(0.6, "uniform"), (0.3, "exponential"), (0.7, "uniform")])
def test_censoring_rate_hits_target(target, model):
    c = generate_cohort(CohortConfig.test_tier(censoring_rate=target, censoring_model=model, **SMALL), 1)
    assert abs(c.cases["censorship"].mean() - target) <= 0.1


def test_higher_eta_means_earlier_event():
    c = generate_cohort(CohortConfig.test_tier(n_cases=300, bag_min=4, bag_max=8, censoring_rate=0.0), 2)
    assert c.cases["censorship"].sum() == 0
    assert c.truth.oracle_cindex > 0.65


def test_oracle_beats_wsi_oracle_only_with_hidden_signal():
    hidden = generate_cohort(CohortConfig.test_tier(w_hidden=1.0, rho=1.0, **SMALL), 4)
    assert hidden.truth.oracle_cindex > hidden.truth.wsi_oracle_cindex + 0.02
    visible = generate_cohort(CohortConfig.test_tier(w_hidden=0.0, rho=1.0, **SMALL), 4)
    np.testing.assert_allclose(visible.truth.eta_wsi, visible.truth.eta)


def test_classification_teacher_label_is_eta_above_median():
    c = generate_cohort(CohortConfig.test_tier(task="classification", **SMALL), 5)
    assert list(c.cases.columns) == ["case_id", "slide_id", "label", "site"]
    assert np.array_equal(c.cases["label"], (c.truth.eta > c.truth.eta.median()).astype(int).to_numpy())
    assert c.truth.oracle_cindex == 1.0 and 0.5 < c.truth.wsi_oracle_cindex < 1.0


# -- the visibility controls ---------------------------------------------------------------------
def test_rho_one_is_learnable_from_the_wsi_and_rho_zero_is_not():
    base = {"n_cases": 400, "bag_min": 16, "bag_max": 32}
    seen = generate_cohort(CohortConfig.test_tier(rho=1.0, **base), 0)
    blind = generate_cohort(CohortConfig.test_tier(rho=0.0, **base), 0)
    seen_c, blind_c = _wsi_only_oof_cindex(seen), _wsi_only_oof_cindex(blind)
    assert seen_c > 0.57 and seen_c > blind_c + 0.07
    assert abs(blind_c - 0.5) < 0.1  # 400 cases: the standard error is ~0.03
    assert blind.truth.wsi_oracle_cindex == 0.5
    # nothing but the bag carries the latent: bag size and site know nothing of eta at rho = 0
    sizes = [len(blind.bags[s][0]) for s in blind.cases["slide_id"]]
    time_, event = blind.cases["survival_months"], 1 - blind.cases["censorship"]
    assert abs(_cindex(time_, event, sizes) - 0.5) < 0.08
    site_means = blind.truth.eta.groupby(blind.cases["site"].to_numpy()).mean()
    assert site_means.abs().max() < 0.25


# -- genomics ------------------------------------------------------------------------------------
def test_missing_genomics_rate_is_honoured(cohort):
    c = generate_cohort(CohortConfig.test_tier(missing_genomics_rate=0.25), 3)
    assert len(c.genomics) == round(0.75 * c.config.n_cases)
    assert set(c.genomics.index) < set(c.case_ids)
    # the kept rows are the full-cohort rows, unchanged
    pd.testing.assert_frame_equal(c.genomics, cohort.genomics.loc[c.genomics.index])


@pytest.mark.parametrize("form,width", [("raw", 200), ("blocks", 50), ("projection", 32)])
def test_genomics_forms(form, width):
    c = generate_cohort(CohortConfig.test_tier(genomics_form=form, **SMALL), 0)
    assert c.genomics.shape == (60, width) and (c.genomics.dtypes == np.float32).all()


def test_pca_components_are_unit_variance_and_uncorrelated():
    rng = np.random.default_rng(0)
    X, _keep = standardise(rng.standard_normal((100, 30)) @ rng.standard_normal((30, 30)))
    U = principal_components(X, 16)
    np.testing.assert_allclose(np.cov(U, rowvar=False), np.eye(16), atol=1e-8)


def test_gaussian_surrogate_matches_covariance():
    rng = np.random.default_rng(1)
    real, _ = standardise(rng.standard_normal((300, 6)) @ rng.standard_normal((6, 20)) + rng.standard_normal((300, 20)))
    fake = gaussian_surrogate(real, 5000, np.random.default_rng(2))
    np.testing.assert_allclose(np.cov(fake, rowvar=False), np.cov(real, rowvar=False), atol=0.15)


# -- splits --------------------------------------------------------------------------------------
def test_site_held_out_folds_are_leave_one_site_out(cohort):
    sites = cohort.cases.set_index("case_id")["site"]
    assert len(cohort.folds) == sites.nunique() == cohort.config.n_sites
    held = []
    for train, test in cohort.folds:
        assert sites[test].nunique() == 1 and sites[test].iloc[0] not in set(sites[train])
        assert set(train) | set(test) == set(cohort.case_ids) and not set(train) & set(test)
        held.append(sites[test].iloc[0])
    assert sorted(held) == sorted(sites.unique())


def test_stratified_kfold_is_patient_level_and_balanced():
    c = generate_cohort(CohortConfig.test_tier(site_held_out=False, bag_min=8, bag_max=16), 6)
    assert len(c.folds) == 5
    tests = np.concatenate([te for _, te in c.folds])
    assert sorted(tests) == sorted(c.case_ids)
    event = 1 - c.cases.set_index("case_id")["censorship"]
    rates = [event[te].mean() for _, te in c.folds]
    assert max(rates) - min(rates) < 0.1
    assert all(np.array_equal(a, b) for f, g in zip(c.folds, generate_cohort(c.config, 6).folds)
               for a, b in zip(f, g))


def test_to_cohort_view(cohort):
    core = cohort.to_cohort()
    assert len(core) == len(cohort.cases) and core.feature_dim == cohort.config.feature_dim
    bag = core.load_bag(cohort.case_ids[0])
    assert np.array_equal(bag.features, cohort.bags[cohort.cases["slide_id"][0]][0])


# -- real sources (the optional benchmark extra) --------------------------------------------------
@survset_warning
def test_survset_ovarian_real_rows_sites_and_outcome():
    pytest.importorskip("SurvSet")
    c = generate_cohort(CohortConfig.test_tier(genomics_source="survset:dataOvarian1", genomics_form="raw",
                                               outcome="real", n_cases=300, bag_min=8, bag_max=16), 0)
    assert c.genomics.shape == (300, 158)
    assert sorted(c.cases["site"].unique()) == ["study_13", "study_16", "study_4", "study_9"]
    assert len(c.folds) == 4 and c.truth.eta is None
    months = c.cases["survival_months"]
    assert (months > 0).all() and 100 < months.max() < 200  # 5,480 days is ~180 months


@survset_warning
def test_survset_multi_study_and_teacher():
    pytest.importorskip("SurvSet")
    c = generate_cohort(CohortConfig.test_tier(genomics_source="survset:gse1992+gse4335+gse3143", **SMALL), 0)
    assert sorted(c.cases["site"].unique()) == ["gse1992", "gse3143", "gse4335"]
    assert c.truth.oracle_cindex > 0.55


def test_sksurv_breast_source():
    pytest.importorskip("sksurv")
    c = generate_cohort(CohortConfig.test_tier(genomics_source="sksurv_breast", genomics_form="raw",
                                               outcome="real", task="classification", **SMALL), 0)
    assert c.genomics.shape == (60, 76) and set(c.cases["label"]) == {0, 1}
    with pytest.raises(MSRLPluginError, match="198 usable rows"):
        generate_cohort(CohortConfig.test_tier(genomics_source="sksurv_breast", n_cases=400), 0)


def test_surrogate_of_real_rows_keeps_their_covariance():
    pytest.importorskip("sksurv")
    real = generate_cohort(CohortConfig.test_tier(genomics_source="sksurv_breast", genomics_form="raw",
                                                  n_cases=198, bag_min=2, bag_max=4), 0)
    fake = generate_cohort(real.config.replace(genomics_distribution="gaussian_surrogate", n_cases=1000), 0)
    c_real, c_fake = np.corrcoef(real.genomics.T), np.corrcoef(fake.genomics.T)
    off = ~np.eye(len(c_real), dtype=bool)
    assert np.corrcoef(c_real[off], c_fake[off])[0, 1] > 0.9
    assert np.abs(c_real[off] - c_fake[off]).mean() < 0.1


@survset_warning
def test_missing_optional_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "SurvSet", None)
    monkeypatch.setitem(sys.modules, "SurvSet.data", None)
    with pytest.raises(MSRLPluginError, match=r"msrl-plugin\[benchmark\]"):
        generate_cohort(CohortConfig.test_tier(genomics_source="survset:dataOvarian1", **SMALL), 0)
    monkeypatch.setitem(sys.modules, "sksurv.datasets", None)
    with pytest.raises(MSRLPluginError, match=r"msrl-plugin\[benchmark\]"):
        generate_cohort(CohortConfig.test_tier(genomics_source="sksurv_breast", **SMALL), 0)
    with pytest.raises(MSRLPluginError, match="(?i)choose from"):
        generate_cohort(CohortConfig.test_tier(genomics_source="survset:nosuchset", **SMALL), 0)
