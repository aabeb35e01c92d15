"""benchmarks/external_benchmark.py: the per-seed paired table, and one tiny cell end to end (slow)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest


def _module():
    path = Path(__file__).parents[1] / "benchmarks" / "external_benchmark.py"
    spec = importlib.util.spec_from_file_location("external_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paired_table_se_and_gap_recovered():
    bench = _module()
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(10):
        noise = rng.normal(0, 0.01)
        for model, c in (("abmil", 0.60), ("fusion", 0.70), ("msrl", 0.67 + noise)):
            rows.append({"signal": "A", "n_train": 100, "seed": seed, "model": model, "c_index": c,
                         "spearman_eta": c - 0.3})
    table = bench.paired_table(pd.DataFrame(rows)).set_index("model")
    msrl = table.loc["msrl"]
    d = np.array([r["c_index"] for r in rows if r["model"] == "msrl"]) - 0.60
    assert msrl["diff_vs_abmil"] == pytest.approx(d.mean())
    assert msrl["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(10))
    assert msrl["resolves"] == pytest.approx(2.8 * msrl["se"])
    assert msrl["gap_recovered"] == pytest.approx(d.mean() / 0.10)
    assert np.isnan(table.loc["fusion", "gap_recovered"]) and "diff_vs_abmil" in table
    assert table.loc["abmil", "seeds"] == 10


@pytest.mark.slow
def test_one_tiny_cell_end_to_end(tmp_path):
    bench = _module()
    tier = dict(bench.TIERS["smoke"], n_external=64, n_train=[40])
    frame = bench.run_cell(tier, "B", 40, 0, ["oracle", "abmil", "msrl", "msrl:shuffled_buffer",
                                               "msrl:label_only"], None, log=lambda _m: None)
    assert list(frame["model"]) == ["oracle", "abmil", "msrl", "msrl:shuffled_buffer", "msrl:label_only"]
    assert frame.loc[frame["model"] == "oracle", "spearman_eta"].item() == pytest.approx(1.0)
    assert frame["c_index"].between(0, 1).all()
    # the controls reuse msrl's fit: they predict differently from it
    c = frame.set_index("model")["c_index"]
    assert c["msrl:label_only"] != c["msrl"]


def test_model_params_route_each_family_its_settings(tmp_path):
    bench = _module()
    tier = dict(bench.TIERS["full"], msrl={"pretrain_epochs": 30, "embed_dim": 64}, abmil={"lr": 5e-5})
    fp32 = {"precision": "fp32"}  # pinned: the tables must not depend on the CPU's bf16 support
    assert bench.model_params("abmil", tier, 3, None) == ("abmil", {**fp32, **tier["budget"], "seed": 3, "lr": 5e-5})
    name, msrl = bench.model_params("msrl", tier, 3, None)
    assert name == "msrl" and msrl["embed_dim"] == 64 and "lr" not in msrl
    # the pool's checkpoint carries stage 1: no stage-1 epochs are passed (they would be ignored with a warning)
    name, pan = bench.model_params("msrl_pancancer", tier, 3, tmp_path / "pool.pt")
    assert name == "msrl" and pan["pretrained"] == str(tmp_path / "pool.pt") and "pretrain_epochs" not in pan
    # the paper's form keeps its own architecture; only the budget is shared, stage-1 epochs included
    paper = bench.model_params("msrl_paper", tier, 3, None)[1]
    assert paper == {**fp32, **tier["budget"], "seed": 3, "pretrain_epochs": 30}
    assert bench.model_params("msrl_paper", dict(tier, msrl={}), 3, None)[1] == {**fp32, **tier["budget"], "seed": 3}
    assert "precision" not in bench.model_params("fusion", tier, 3, None)[1]  # fusion has no such setting
    assert bench.model_params("msrl", dict(tier, msrl={"precision": "auto"}), 3, None)[1]["precision"] == "auto"


def test_report_seeds_are_fresh_and_abmil_setting_is_named():
    bench = _module()
    assert bench.TIERS["full"]["seeds"] == list(range(200, 210))  # fixed before any external run on them
    assert not set(bench.TIERS["full"]["seeds"]) & (set(range(0, 5)) | set(range(100, 120)))
    assert bench.TIERS["full"]["abmil"] == bench.TIERS["quick"]["abmil"] == bench.ABMIL_TUNED


def test_contrast_table_pairs_the_method_issue_questions():
    bench = _module()
    rows = []
    for seed in range(6):
        for model, c in (("abmil", 0.60), ("msrl", 0.63 + 0.01 * seed), ("msrl:shuffled_buffer", 0.61),
                         ("fusion", 0.70)):
            rows.append({"signal": "B", "n_train": 200, "seed": seed, "model": model, "c_index": c,
                         "spearman_eta": 2 * c})
    table = bench.contrast_table(pd.DataFrame(rows)).set_index("contrast")
    # only contrasts whose two models ran
    assert set(table.index) == {"msrl - msrl:shuffled_buffer", "msrl:shuffled_buffer - abmil"}
    row = table.loc["msrl - msrl:shuffled_buffer"]
    d = 0.02 + 0.01 * np.arange(6)
    assert row["diff"] == pytest.approx(d.mean()) and row["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(6))
    assert row["spearman_diff"] == pytest.approx(2 * d.mean()) and row["seeds"] == 6
    assert row["wilcoxon_p"] == pytest.approx(0.03125)  # 6 positive pairs: the smallest two-sided p
