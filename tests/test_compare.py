"""compare_models, the shuffled-buffer control, the extra survival metrics and the HTML report."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch
from _cohorts import easy_classification_cohort, easy_survival_cohort

from msrl_plugin.aggregators.msrl_fitted import shuffle_buffer_genomics
from msrl_plugin.errors import MSRLPluginError
from msrl_plugin.evaluation import metrics as eval_metrics
from msrl_plugin.evaluation.compare import ComparisonResult, compare_models, resolve_params
from msrl_plugin.evaluation.report import km_figure, report_figures, write_report

MSRL_FAST = {"pretrain_epochs": 0, "embed_dim": 16, "buffer_size": 32}
MODELS = ["abmil", "msrl_random_gsl", "msrl_random_gsl:shuffled_buffer"]


@pytest.fixture(scope="module")
def cohort():
    return easy_survival_cohort(n=36, dim=8, seed=1, genomics_dim=4, missing_genomics=0.2)


@pytest.fixture(scope="module")
def compared(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    params = {"msrl_random_gsl": MSRL_FAST, "abmil": {"hidden_dim": 32, "attn_dim": 16}}
    result = compare_models(cohort, MODELS, 2, [0], params, budget={"max_epochs": 2}, n_boot=500, out_dir=out,
                            log=lambda m: None)
    return result, out


def test_identical_folds_and_budget_across_models(compared, cohort):
    result, _ = compared
    assignments = {m: result.predictions[(m, 0)]["fold"].sort_index() for m in MODELS}
    for m in MODELS[1:]:
        pd.testing.assert_series_equal(assignments[m], assignments["abmil"])
    assert sorted(assignments["abmil"].index) == sorted(cohort.case_ids)  # out-of-fold: every case once
    assert all(p["max_epochs"] == 2 for p in result.config["params"].values())
    full = result.config["model_params"]  # every value each model used, its own defaults included
    from msrl_plugin.cli.options import model_default

    assert full["abmil"]["lr"] == model_default("abmil", "lr")
    assert full["msrl_random_gsl"]["lr"] == model_default("msrl_random_gsl", "lr")
    assert full["msrl_random_gsl"]["embed_dim"] == 16 and full["abmil"]["hidden_dim"] == 32  # given values kept
    assert all(p["max_epochs"] == 2 and None not in (p["lr"], p["reg"], p["dropout"]) for p in full.values())
    assert result.config["selection_rule"].startswith("fixed epoch budget")
    for m in ("abmil", "msrl_random_gsl"):
        assert result.examples[m].model.max_epochs == 2 and result.examples[m].model.seed == 0


def test_tables_have_the_expected_shapes(compared):
    result, _ = compared
    metrics = result.metrics()
    assert metrics[0] == "c_index"
    extras = {"c_index_ipcw", "ibs", "td_auc"}
    assert extras <= set(metrics) or not eval_metrics.sksurv_available()
    assert len(result.per_fold) == len(MODELS) * 2
    assert list(result.summary().index) == MODELS
    paired = result.paired()
    # 18-case folds leave one evaluation time with 5 cases and 5 controls: no IBS (it needs two)
    scored = [m for m in metrics if result.per_fold[m].notna().any()]
    assert len(paired) == (len(MODELS) - 1) * len(scored)
    assert set(paired["model"]) == set(MODELS[1:])
    table = result.table()
    assert table.loc["abmil", "diff_c_index"] == "reference"
    assert "+-" in table.loc["msrl_random_gsl", "c_index"]
    assert "wilcoxon" in result.format() or "wilcoxon_p" in result.format()


def test_files_written(compared):
    _, out = compared
    for name in ("comparison.csv", "paired.csv", "per_fold.csv", "compare_config.json"):
        assert (out / name).is_file()
    for stem in ("abmil", "msrl_random_gsl", "msrl_random_gsl-shuffled_buffer"):
        frame = pd.read_csv(out / "predictions" / f"{stem}_seed0.csv", index_col="case_id")
        assert {"fold", "seed", "risk", "time", "censorship"} <= set(frame.columns)
    assert not list(out.rglob("*.tmp"))


def test_report_html_is_self_contained_and_every_axis_is_labelled(compared, cohort):
    result, out = compared
    path = write_report(result, cohort, out, time_unit="months")
    text = path.read_text()
    images = re.findall(r"<img src='([^']+)'", text)
    assert len(images) >= 5 and all(src.startswith("data:image/png;base64,") for src in images)
    assert "http" not in text and "<script" not in text and "href" not in text  # one file, opens offline
    assert "{" not in text.split("</style>")[1]  # no raw dicts printed
    assert not re.search(r"<tr>\s*(<th>\s*</th>\s*)+</tr>", text)  # no empty header rows
    assert "cannot go below 2/2^2 = 0.5" in text  # 2 folds: a Wilcoxon p cannot reach 0.05
    if eval_metrics.sksurv_available():  # each fold names where its IBS and td-AUC were evaluated
        assert "Evaluation times of the time-dependent metrics" in text
        assert all(times in text for times in result.per_fold["eval_times"].dropna())
    assert (out / "figures" / "kaplan_meier.png").is_file()
    figs, notes = report_figures(result, cohort, time_unit="months")
    assert {"metric", "kaplan_meier", "training_loss", "attention", "borrowing"} <= set(figs)
    assert not notes
    for name, fig in figs.items():
        for ax in fig.axes:
            if not ax.get_visible() or (not ax.get_ylabel() and not ax.get_title() and name == "kaplan_meier"):
                continue  # lifelines' number-at-risk table is a twin axis without labels
            if hasattr(ax, "_colorbar"):
                assert ax.get_ylabel() or ax.get_xlabel(), f"{name}: unlabelled colorbar"
                continue
            assert ax.get_xlabel() and ax.get_ylabel(), f"{name}: unlabelled axis"
            assert ax.get_title(), f"{name}: no title"


def test_km_figure_has_bands_censor_ticks_at_risk_table_and_time_unit(compared):
    result, _ = compared
    fig = km_figure(result, time_unit="months")
    main = fig.axes[0]
    assert main.get_xlabel() == "time (months)"
    assert main.collections, "no confidence band"  # fill_between
    assert any(line.get_marker() == "|" for line in main.lines), "no censoring ticks"
    table = [ax for ax in fig.axes if ax is not main and ax.get_visible() and not ax.get_ylabel()]
    labels = " ".join(t.get_text() for ax in table for t in ax.get_xticklabels())
    assert "At risk" in labels and "Censored" in labels and "Events" in labels


def test_training_histories_are_kept_and_written(compared):
    result, out = compared
    hist = result.histories
    fitted = ["abmil", "msrl_random_gsl"]
    assert set(hist["model"]) == set(fitted) and set(hist["stage"]) == {"training"}
    assert len(hist) == len(fitted) * 2 * 2  # models x folds x max_epochs
    assert hist["loss"].notna().all()
    written = pd.read_csv(out / "training_history.csv")
    assert list(written.columns) == ["model", "seed", "fold", "stage", "epoch", "loss"] and len(written) == len(hist)


def test_attention_panel_is_drawn_like_heatmap(compared, cohort):
    from msrl_plugin.evaluation.report import attention_figure

    result, _ = compared
    ex = result.examples["abmil"]
    fig = attention_figure(ex.model, cohort, str(ex.fold.test[0]))
    image = fig.axes[0].images[-1]
    assert image.get_cmap().name == "coolwarm" and image.get_clim() == (0.0, 1.0)  # percentiles, diverging
    bar = fig.axes[1]
    fig.canvas.draw()
    main_box, bar_box = fig.axes[0].get_position(), bar.get_position()
    assert abs(main_box.height - bar_box.height) < 1e-6  # the colour bar is as tall as the plot
    assert "percentile" in bar.get_ylabel()


def test_km_figure_survives_a_single_risk_group(compared):
    result, _ = compared
    flat = {k: v.assign(risk=1.0) for k, v in result.predictions.items()}
    same = ComparisonResult(result.task, result.models, result.reference, result.per_fold, flat,
                            result.config)
    fig = km_figure(same)
    assert "one risk group" in fig.axes[0].get_title()


def test_shuffled_buffer_permutes_only_the_genomic_half(compared):
    result, _ = compared
    model = result.examples["msrl_random_gsl"].model
    before = model.model_.buffer.features.clone()
    shuffled = shuffle_buffer_genomics(model, seed=3)
    after = shuffled.model_.buffer.features
    d, valid = model.embed_dim, model.model_.buffer.valid
    assert torch.equal(model.model_.buffer.features, before)  # the fitted model is untouched
    assert torch.equal(after[:, d:], before[:, d:])  # WSI half unchanged
    rows_b, rows_a = before[valid, :d], after[valid, :d]
    assert not torch.equal(rows_a, rows_b)
    # the same rows, permuted, and no row keeps its own genomics
    assert torch.allclose(rows_a.sum(0), rows_b.sum(0), atol=1e-5)
    assert not torch.isclose(rows_a, rows_b).all(dim=1).any()
    with pytest.raises(MSRLPluginError, match="buffer"):
        shuffle_buffer_genomics(result.examples["abmil"].model)


def test_classification_comparison_and_roc(tmp_path):
    cohort = easy_classification_cohort(n=30, dim=8)
    result = compare_models(cohort, ["abmil", "msrl_h"], 2, [0],
                            {"msrl_h": {"pretrain_epochs": 0, "embed_dim": 16}, "abmil": {"hidden_dim": 32}},
                            budget={"max_epochs": 1}, n_boot=200, log=lambda m: None)
    assert {"auc", "balanced_accuracy"} <= set(result.metrics())
    figs, _ = report_figures(result, cohort)
    assert "roc" in figs and figs["roc"].axes[0].get_xlabel() == "false positive rate"
    assert (write_report(result, cohort, tmp_path)).is_file()


def test_bad_requests_are_clear_errors(cohort):
    with pytest.raises(MSRLPluginError, match="reference"):
        compare_models(cohort, ["msrl", "msrl_h"], 2, [0], log=lambda m: None)
    with pytest.raises(MSRLPluginError, match="same budget"):
        resolve_params(["abmil", "msrl"], {"abmil": {"max_epochs": 3}}, {"max_epochs": 2})
    with pytest.raises(MSRLPluginError, match="unknown model variant"):
        compare_models(cohort, ["abmil", "msrl:nope"], 2, [0], log=lambda m: None)
    assert resolve_params(["abmil", "msrl:shuffled_buffer"], None, {"max_epochs": 4}) == {
        "abmil": {"max_epochs": 4}, "msrl": {"max_epochs": 4}}


@pytest.mark.skipif(not eval_metrics.sksurv_available(), reason="scikit-survival not installed")
def test_survival_extras_rank_good_predictions_above_shuffled_ones():
    rng = np.random.default_rng(0)
    n = 160
    eta = rng.normal(size=n)
    t = 20 * np.exp(-eta + 0.3 * rng.normal(size=n))
    e = (rng.random(n) < 0.6).astype(int)
    edges = np.quantile(t[:100][e[:100] == 1], [0, 0.25, 0.5, 0.75, 1.0])
    surv = np.exp(-np.exp(eta[100:, None]) * np.array([[0.1, 0.3, 0.6, 1.0]]))
    good = pd.DataFrame(surv, columns=[f"survival_bin{j}" for j in range(4)])
    good.insert(0, "risk", -surv.sum(1))
    bad = good.sample(frac=1.0, random_state=0).reset_index(drop=True)
    g = eval_metrics.survival_extras(t[:100], e[:100], t[100:], e[100:], good, edges)
    b = eval_metrics.survival_extras(t[:100], e[:100], t[100:], e[100:], bad, edges)
    assert set(g) == set(eval_metrics.EXTRA_SURVIVAL_METRICS)
    assert g["c_index_ipcw"] > 0.75 > b["c_index_ipcw"]
    assert g["td_auc"] > b["td_auc"] and g["ibs"] < b["ibs"]
    none = eval_metrics.survival_extras(t[:100], e[:100], t[100:], np.zeros(60), good, edges)
    assert all(np.isnan(v) for v in none.values())  # no test events: NaN, not an exception
    only_ipcw = eval_metrics.survival_extras(t[:100], e[:100], t[100:], e[100:], good[["risk"]], None)
    assert np.isfinite(only_ipcw["c_index_ipcw"]) and np.isnan(only_ipcw["ibs"])


def test_survival_extras_absent_without_sksurv(monkeypatch):
    monkeypatch.setattr(eval_metrics, "sksurv_available", lambda: False)
    frame = pd.DataFrame({"risk": [0.1, 0.2]})
    assert eval_metrics.survival_extras([1, 2], [1, 1], [1, 2], [1, 0], frame, [0, 1, 2]) == {}


def test_from_cv_results_rescores_finished_cross_validation(cohort):
    from msrl_plugin.evaluation.compare import from_cv_results
    from msrl_plugin.evaluation.crossval import cross_validate
    from msrl_plugin.evaluation.splits import kfold_splits

    folds = kfold_splits(cohort, 2, 0)
    params = {"max_epochs": 1, "hidden_dim": 16, "attn_dim": 8, "seed": 0}
    runs = {name: cross_validate(cohort, folds, "abmil", {**params, "lr": lr}, log=lambda m: None)
            for name, lr in (("abmil", 2e-4), ("abmil_fast", 1e-2))}
    result = from_cv_results(cohort, folds, runs, seed=0, reference="abmil")
    assert len(result.per_fold) == 4 and result.models == ["abmil", "abmil_fast"]
    expected = runs["abmil_fast"].fold_metrics["test_c_index"].to_numpy()
    got = result.per_fold.loc[result.per_fold["model"] == "abmil_fast", "c_index"].to_numpy()
    assert np.allclose(got, expected)
    assert len(result.paired()) >= 1 and not result.examples
    if eval_metrics.sksurv_available():  # bins refitted on each fold's training cases without a model
        assert result.per_fold["td_auc"].notna().all() and result.per_fold["eval_times"].str.startswith("bin").all()


def _benchmark_module(name: str):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_truth_correlation_is_added_per_fold():
    from scipy.stats import spearmanr

    bench = _benchmark_module("method_benchmark")
    eta = pd.Series(np.arange(8.0), index=[f"c{i}" for i in range(8)])
    pred = pd.DataFrame({"risk": [0, 1, 3, 2, 4, 5, 7, 6], "fold": [0] * 4 + [1] * 4}, index=eta.index)
    per_fold = pd.DataFrame({"model": ["m", "m"], "seed": [0, 0], "fold": [0, 1], "c_index": [0.6, 0.7]})
    result = ComparisonResult("survival", ["m"], "m", per_fold, {("m", 0): pred}, {})
    bench.add_truth_correlation(result, eta)
    expected = spearmanr([0, 1, 3, 2], [0, 1, 2, 3]).correlation
    np.testing.assert_allclose(result.per_fold["spearman_eta"], [expected, expected])


def test_benchmark_reads_back_finished_seeds_without_abmil(tmp_path):
    """A folder of finished seeds without ABMIL (MSRL on another encoder) prints its table against the first
    method named, from the saved rows alone (it raised 'reference model abmil has no rows' before)."""
    bench = _benchmark_module("method_benchmark")
    seed_dir = tmp_path / "seeds" / "default"
    seed_dir.mkdir(parents=True)
    for seed in (0, 1):
        rows = [{"model": m, "seed": seed, "fold": k, "c_index": 0.6 + shift + 0.01 * k, "spearman_eta": 0.3 + shift}
                for k in range(4) for m, shift in (("transmil", 0.0), ("msrl", 0.02), ("msrl_shuffled_buffer", 0.01))]
        pd.DataFrame(rows).to_csv(seed_dir / f"seed_{seed}.csv", index=False)
    methods = ["transmil", "msrl", "msrl_shuffled_buffer"]
    result = bench.run_grid_point({}, bench.TIERS["quick"], [0, 1], methods, n_boot=200, log=lambda _m: None,
                                  seed_dir=seed_dir)
    assert result.reference == "transmil" and len(result.per_fold) == 24
    paired = result.paired().set_index(["model", "metric"])
    assert paired.loc[("msrl", "c_index"), "reference"] == "transmil"
    assert paired.loc[("msrl", "c_index"), "mean_diff"] == pytest.approx(0.02)
    assert bench.ordering_table(result).loc["msrl", "diff_vs_transmil"] == "+0.020"
    assert "msrl > msrl_shuffled_buffer" in set(bench.check_orderings(result, rho=0.8, n_boot=200)["ordering"])


def test_grid_slug_is_a_portable_folder_name():
    """Result folders are committed: no ':' (SurvSet sources) or other characters a checkout may refuse."""
    bench = _benchmark_module("method_benchmark")
    slug = bench.grid_slug({"outcome": "real", "genomics_source": "survset:chop", "n_cases": 414})
    assert slug == "genomics_source-survset-chop_n_cases-414_outcome-real"
    assert bench.grid_slug({}) == "default"
    for knobs in bench.TIERS["real"]["grid"]:
        assert re.fullmatch(r"[A-Za-z0-9._=-]+", bench.grid_slug(knobs))


def test_benchmark_tiers_train_in_fp32_unless_asked():
    bench = _benchmark_module("method_benchmark")
    for name in bench.TIERS:
        assert bench.tier_settings(name)["budget"]["precision"] == "fp32"
    tier = bench.tier_settings("real", budget={"precision": "auto"}, msrl={"k": 5})
    assert tier["budget"]["precision"] == "auto" and tier["msrl"]["k"] == 5
    assert "precision" not in bench.TIERS["real"]["budget"]  # the tier table itself is left as it was
    params = resolve_params(["abmil", "fusion"], None, bench.tier_settings("real")["budget"])
    assert params["abmil"]["precision"] == "fp32" and params["abmil"]["max_epochs"] == 20
    assert "precision" not in params["fusion"]  # fusion has no such setting


def test_equal_budget_tuning_trains_in_fp32(monkeypatch):
    tuning = _benchmark_module("tune_equal_budget")
    seen = []

    class Recorder:
        def __init__(self, name, **params):
            seen.append((name, params))

        def fit(self, cohort, progress=True):
            return self

        def with_shuffled_buffer(self, seed):
            return self

    monkeypatch.setattr(tuning, "create_aggregator", Recorder)
    monkeypatch.setattr(tuning, "score", lambda fitted, test, eta: {"c_index": 0.5, "spearman_eta": 0.0})
    rows = tuning.tune("test", [0], ["abmil", "msrl"], None, log=lambda line: None)
    assert len(seen) == len(rows) == 2 * tuning.GRID_SIZE * rows["fold"].nunique()
    assert all(params["precision"] == "fp32" for _, params in seen)
    assert {params.get("lr") for name, params in seen if name == "abmil"} >= {1e-3, 5e-5}


def test_msrl_diagnostics_script_runs(capsys):
    diagnostics = _benchmark_module("msrl_diagnostics")
    assert diagnostics.main(["--cases", "60", "--param", "pretrain_epochs=1", "--param", "max_epochs=1"]) == 0
    out = capsys.readouterr().out
    for line in ("ABMIL", "its borrowed genomic risk", "ideal read-out", "recall@5", "shuffled-buffer"):
        assert line in out


def test_gap_share_is_msrl_difference_over_fusion_difference():
    bench = _benchmark_module("method_benchmark")
    rows = [{"model": m, "seed": seed, "fold": k, "c_index": 0.55 + 0.01 * k + shift}
            for seed in range(2) for k in range(3)
            for m, shift in (("abmil", 0.0), ("fusion", 0.08), ("msrl", 0.06), ("msrl_shuffled_buffer", -0.02))]
    result = ComparisonResult("survival", ["msrl", "fusion", "abmil", "msrl_shuffled_buffer"], "abmil",
                              pd.DataFrame(rows), {}, {})
    text = bench.gap_share_text(result)
    assert "(+0.080 c_index, SE 0.000)" in text and "msrl +0.75" in text and "msrl_shuffled_buffer -0.25" in text
    assert "fusion +" not in text  # fusion sees genomics at test time: not a row that recovers anything
    no_fusion = ComparisonResult("survival", ["msrl", "abmil"], "abmil",
                                 pd.DataFrame([r for r in rows if r["model"] in ("msrl", "abmil")]), {}, {})
    assert bench.gap_share_text(no_fusion) == ""
    noisy = pd.DataFrame([{**r, "c_index": r["c_index"] - 0.08 + (0.07 if r["fold"] == 0 else -0.03)}
                          if r["model"] == "fusion" else r for r in rows])  # fusion ahead by +0.003, SE 0.02
    result.per_fold = noisy
    assert bench.gap_share_text(result).endswith("no share reported, the gap is not 2 SE above zero")


def test_benchmark_ordering_verdicts():
    bench = _benchmark_module("method_benchmark")
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(4):
        for fold in range(4):
            base = 0.6 + 0.02 * rng.normal()
            for model, shift in (("abmil", 0.0), ("msrl", 0.05), ("msrl_shuffled_buffer", 0.0),
                                 ("msrl_knn_cosine", -0.08)):
                rows.append({"model": model, "seed": seed, "fold": fold, "c_index": base + shift,
                             "spearman_eta": 0.05 * rng.normal() + (0.3 if model == "msrl" else 0.0)})
    rows += [{**row, "model": "msrl_label_only"} for row in rows if row["model"] == "msrl"]  # lends as much
    models = ["msrl", "msrl_knn_cosine", "abmil", "msrl_shuffled_buffer", "msrl_label_only"]
    result = ComparisonResult("survival", models, "abmil", pd.DataFrame(rows), {}, {})
    verdicts = bench.check_orderings(result, rho=0.8, n_boot=500).set_index("ordering")["verdict"]
    assert verdicts["msrl > abmil"] == "held"
    assert verdicts["msrl > msrl_label_only"] == "did not hold"  # lending outcomes as well is no genomic win
    assert verdicts["msrl >= msrl_knn_cosine"] == "held"
    assert verdicts["msrl_shuffled_buffer ~ abmil"] == "held"
    assert "oracle >= msrl_multi" not in verdicts  # methods that did not run are not judged
    at_chance = bench.check_orderings(result, rho=0.0, n_boot=500).set_index("ordering")["verdict"]
    assert at_chance["msrl ~ 0.5 at rho=0"] == "did not hold"  # 0.65 at rho = 0 would be leakage
    by_rank = bench.check_orderings(result, rho=0.0, n_boot=500, metric="spearman_eta").set_index("ordering")
    assert by_rank.loc["abmil ~ 0 at rho=0", "verdict"] == "held"  # chance for a rank correlation is 0
    assert by_rank.loc["msrl ~ 0 at rho=0", "verdict"] == "did not hold"


def test_borrowing_controls_are_added_once_in_either_spelling():
    from msrl_plugin.evaluation.variants import borrowing_controls

    assert borrowing_controls(["abmil", "msrl", "msrl_multi", "msrl_h"]) == ["msrl:shuffled_buffer",
                                                                            "msrl_multi:shuffled_buffer"]
    assert borrowing_controls(["abmil", "msrl", "msrl_shuffled_buffer"]) == []
    assert borrowing_controls(["abmil", "msrl", "msrl:shuffled_buffer"]) == []


def test_borrowing_check_verdicts():
    import pandas as pd

    from msrl_plugin.evaluation.compare import ComparisonResult

    rows = [{"model": m, "seed": 0, "fold": k, "c_index": v}
            for k in range(8) for m, v in (("abmil", 0.6), ("msrl", 0.65 + 0.001 * k),
                                           ("msrl:shuffled_buffer", 0.6 + 0.002 * (k % 3)))]
    result = ComparisonResult("survival", ["abmil", "msrl", "msrl:shuffled_buffer"], "abmil", pd.DataFrame(rows),
                              {}, {}, n_boot=500)
    check = result.borrowing().iloc[0]
    assert (check["model"], check["control"], check["n_pairs"]) == ("msrl", "msrl:shuffled_buffer", 8)
    assert check["ci_low"] > 0 and check["verdict"] == "evidence of borrowing"
    assert "borrowing check: msrl - msrl:shuffled_buffer" in result.format()
    tied = pd.DataFrame([{**r, "c_index": 0.6 + 0.01 * ((r["fold"] + (r["model"] == "msrl")) % 2)} for r in rows])
    result.per_fold = tied
    assert result.borrowing().iloc[0]["verdict"].startswith("no evidence of borrowing")
