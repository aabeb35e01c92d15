"""``msrl-plugin demo``: the explicit equal budget, progress lines, the final table and the thread default."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from msrl_plugin import demo
from msrl_plugin.demo import DemoBudget, demo_threads, run_demo


def test_budget_goes_to_every_model_as_explicit_parameters():
    budget = DemoBudget(max_epochs=7, max_patches=32, pretrain_epochs=3, k=2)
    assert budget.params_for("abmil") == {"max_epochs": 7, "max_patches": 32}
    assert budget.params_for("msrl") == {"max_epochs": 7, "max_patches": 32, "pretrain_epochs": 3}
    assert "3 GSL pre-training epochs" in budget.describe("msrl") and "pre-training" not in budget.describe("abmil")
    quick = DemoBudget.quick()
    assert quick.max_epochs < DemoBudget().max_epochs and quick.k < DemoBudget().k


def test_threads_follow_the_flag_then_the_environment_then_the_idle_cores(monkeypatch):
    assert demo_threads(3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert demo_threads(None) == 2
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(demo, "available_cores", lambda: 8)
    monkeypatch.setattr(demo.os, "getloadavg", lambda: (5.2, 0.0, 0.0))
    assert demo_threads(None) == 3  # 8 cores, ~5 busy
    monkeypatch.setattr(demo.os, "getloadavg", lambda: (12.0, 0.0, 0.0))
    assert demo_threads(None) == 1


def test_demo_runs_with_progress_and_a_self_describing_table(tmp_path):
    lines: list[str] = []
    budget = DemoBudget(max_epochs=1, max_patches=16, pretrain_epochs=1, k=2, n_external=64)
    results = run_demo(tmp_path, ["abmil", "msrl"], budget, seed=0, log=lines.append, progress=False)
    text = "\n".join(lines)
    assert "[1/4] writing the semi-synthetic demo cohort" in text and "[4/4] summary" in text
    assert text.count("fold 0:") == 2 and "s)" in text  # a line per fold and model, with its time
    assert "abmil: 2 folds in" in text and "msrl: 2 folds in" in text
    assert "Held-out Harrell's c-index per fold" in text and "semi-synthetic" in text
    assert "1 epochs, <= 16 patches/bag per step, + 1 GSL pre-training epochs per fold" in text
    assert "cannot go below 2/2^2" in text  # 2 folds: the paired test cannot reach 0.05
    assert "borrowing check: msrl - msrl:shuffled_buffer" in text  # MSRL is always shown with its control
    for model in ("abmil", "msrl"):
        folder = tmp_path / "results" / f"demo_{model}_s0"
        assert pd.read_csv(folder / "split_0_history.csv")["stage"].iloc[-1] == "training"
        assert results[model].histories[0]["loss"].notna().all()
    assert set(pd.read_csv(folder / "split_0_history.csv")["stage"]) == {"pre-training", "training"}
    history = pd.read_csv(tmp_path / "compare" / "training_history.csv")
    assert set(history["model"]) == {"abmil", "msrl"}
    assert "data:image/png;base64," in (tmp_path / "compare" / "report.html").read_text()
    record = json.loads((tmp_path / "compare" / "provenance.json").read_text())
    assert record["command"] == "demo" and set(record["precision"]) == {"abmil", "msrl"}
    assert all(json.loads((tmp_path / "results" / f"demo_{m}_s0" / "provenance.json").read_text())["folds"]
               for m in ("abmil", "msrl"))
    # every fold model also scored on the generated external set, with the borrowing control
    assert "External set: 64 generated cases" in text and "msrl - msrl:shuffled_buffer" in text
    external = pd.read_csv(tmp_path / "external.csv", index_col=0)
    assert {"abmil", "msrl", "msrl:shuffled_buffer", "msrl - abmil"} <= set(external.index)
    assert external.loc["msrl - abmil", "c_index"] == pytest.approx(
        external.loc["msrl", "c_index"] - external.loc["abmil", "c_index"])


def test_demo_help_names_the_budget_flags(capsys):
    from msrl_plugin.cli import main

    try:
        main(["demo", "--help"])
    except SystemExit as exc:
        assert not exc.code
    out = capsys.readouterr().out
    for flag in ("--quick", "--max-epochs", "--pretrain-epochs", "--max-patches", "--k"):
        assert flag in out
