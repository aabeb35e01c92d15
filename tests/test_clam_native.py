"""A CLAM user's flow end to end: dataset CSV + splits_<k>.csv + h5_files/ -> `msrl-plugin train` with CLAM's
flags -> results_dir/<exp_code>_s<seed>/ with CLAM's file names and summary columns."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from msrl_plugin.aggregators.base import Aggregator
from msrl_plugin.cli import main

CLAM_SUMMARY = ["folds", "test_auc", "val_auc", "test_acc", "val_acc"]



@pytest.fixture
def clam_project(tmp_path, kit):
    """CLAM's layout: a dataset CSV (one row per slide, case_3 has two slides), the feature dir with
    h5_files/, and splits/<task>_100/splits_<k>.csv (ragged slide-id columns, header ',train,val,test')."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(16):
        label = "tumor_tissue" if i % 2 else "normal_tissue"
        for j in range(2 if i == 3 else 1):
            slide = f"slide_{i}_{j}"
            x = rng.normal(size=(20, 8)).astype(np.float32)
            x[:4, 0] += 3.0 * (i % 2)
            kit.write_clam_h5(tmp_path / "features" / "h5_files" / f"{slide}.h5", x)
            rows.append((f"case_{i}", slide, label))
    dataset = pd.DataFrame(rows, columns=["case_id", "slide_id", "label"])
    dataset.to_csv(tmp_path / "tumor_vs_normal_dummy_clean.csv", index=False)
    split_dir = tmp_path / "splits" / "task_1_tumor_vs_normal_100"
    split_dir.mkdir(parents=True)
    cases = [f"case_{i}" for i in range(16)]
    for k in range(2):
        order = list(np.random.default_rng(k).permutation(cases))
        roles = {"train": order[:10], "val": order[10:13], "test": order[13:]}
        cols = {r: list(dataset[dataset.case_id.isin(c)].slide_id) for r, c in roles.items()}
        n = max(map(len, cols.values()))
        table = pd.DataFrame({r: v + [None] * (n - len(v)) for r, v in cols.items()})
        table.to_csv(split_dir / f"splits_{k}.csv")
    return tmp_path, dataset, split_dir


def test_clam_flags_and_layout_give_clam_results(clam_project, capsys):
    root, dataset, split_dir = clam_project
    args = ["train", "--task", "classification", "--data_root_dir", str(root / "features"),
            "--csv_path", str(root / "tumor_vs_normal_dummy_clean.csv"), "--split_dir", str(split_dir),
            "--results_dir", str(root / "results"), "--exp_code", "task_1_abmil", "--model_type", "abmil",
            "--max_epochs", "1", "--reg", "1e-5", "--drop_out", "0.25", "--seed", "1", "--device", "cpu",
            "--param", "hidden_dim=16", "--param", "attn_dim=8"]
    main(["-q", *args])
    out = root / "results" / "task_1_abmil_s1"
    assert str(out) in capsys.readouterr().out
    # summary.csv read the way CLAM users read it
    summary = pd.read_csv(out / "summary.csv", index_col=0)
    assert list(summary.columns[:5]) == CLAM_SUMMARY and summary["folds"].tolist() == [0, 1]
    metrics = summary[["test_auc", "val_auc", "test_acc", "val_acc"]]
    assert ((metrics >= 0) & (metrics <= 1)).all().all()
    # checkpoints named as CLAM names them, loadable safely
    for k in (0, 1):
        ckpt = out / f"s_{k}_checkpoint.pt"
        assert isinstance(torch.load(ckpt, map_location="cpu", weights_only=True), dict)
        assert Aggregator.load(ckpt).task_.class_names == ["normal_tissue", "tumor_tissue"]
        # per-split results: the test cases of CLAM's split k, one row per case (case_3's slides together)
        split = pd.read_csv(split_dir / f"splits_{k}.csv", index_col=0)
        test_cases = set(dataset.set_index("slide_id").loc[split["test"].dropna(), "case_id"])
        results = pd.read_csv(out / f"split_{k}_results.csv", index_col="case_id")
        assert set(results.index) == test_cases
        expected = {"slide_id", "prob_normal_tissue", "prob_tumor_tissue", "predicted", "label"}
        assert expected <= set(results.columns)
        assert (out / f"splits_{k}.csv").read_text().startswith(",train,val,test")
    config = json.loads((out / "config.json").read_text())
    assert config["exp_code"] == "task_1_abmil" and config["max_epochs"] == 1
    # an interrupted CLAM-style run is continued, keeping the finished folds
    main([*args, "--resume"])
    assert capsys.readouterr().out.count("already done") == 2


def test_saved_clam_run_evaluates_with_the_same_files(clam_project, capsys):
    root, _, split_dir = clam_project
    common = ["--data_root_dir", str(root / "features"),
              "--csv_path", str(root / "tumor_vs_normal_dummy_clean.csv"), "--task", "classification"]
    main(["-q", "train", *common, "--split_dir", str(split_dir), "--results_dir", str(root / "results"),
          "--exp_code", "e", "--k_end", "1", "--max_epochs", "1", "--device", "cpu",
          "--param", "hidden_dim=16", "--param", "attn_dim=8"])
    capsys.readouterr()
    main(["evaluate", "--ckpt_path", str(root / "results" / "e_s1" / "s_0_checkpoint.pt"), *common])
    lines = dict(line.split("\t") for line in capsys.readouterr().out.strip().splitlines())
    assert {"auc", "accuracy"} <= set(lines) and 0 <= float(lines["accuracy"]) <= 1
