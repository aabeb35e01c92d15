"""Stage 1 logs its losses and a held-out cross-modal retrieval score per epoch, and writes a report."""
import numpy as np
import pandas as pd
import pytest
import torch
from _cohorts import easy_survival_cohort

from msrl_plugin import create_aggregator
from msrl_plugin.pretrain import PretrainSettings, split_holdout
from msrl_plugin.pretrain_io import write_pretrain_report

FAST = dict(embed_dim=32, k=5, pretrain_batch_size=16, max_patches=64, seed=0)


@pytest.fixture(scope="module")
def cohort():
    # genomics column 0 carries the risk that feature 0 of a quarter of the patches shows: cross-modal signal
    return easy_survival_cohort(n=120, genomics_dim=8, seed=2, signal=3.0)


def test_history_has_every_term_and_retrieval_per_epoch(cohort):
    model = create_aggregator("msrl", pretrain_epochs=3, **FAST)
    model.pretrain(model._prepare_fit(cohort))
    history = pd.DataFrame(model.pretrain_history_)
    assert len(history) == 3
    assert {"loss", "intra", "inter", "fused", "recall_at_k", "chance"} <= set(history.columns)
    np.testing.assert_allclose(history["loss"], history[["intra", "inter", "fused"]].sum(axis=1), rtol=1e-5)
    assert history["chance"].iloc[0] == pytest.approx(5 / 18)  # k / held-out cases (15% of 120)


def test_held_out_cases_have_genomics_and_are_not_trained_on(cohort):
    model = create_aggregator("msrl", **FAST)
    data = model._prepare_fit(cohort)
    train, held = split_holdout(data, PretrainSettings(holdout=0.2), torch.Generator().manual_seed(0))
    assert len(held) == round(0.2 * int(data.has_genomics.sum()))
    assert data.has_genomics[held].all() and not set(held.tolist()) & set(train.tolist())
    assert len(train) + len(held) == len(data)
    _, none = split_holdout(data, PretrainSettings(holdout=0.0), torch.Generator().manual_seed(0))
    assert len(none) == 0


def test_stage1_aligns_the_modalities(cohort):
    """With enough optimiser steps, WSI -> genomics retrieval on held-out cases rises above chance."""
    model = create_aggregator("msrl", pretrain_epochs=25, **FAST)
    model.pretrain(model._prepare_fit(cohort))
    last = model.pretrain_history_[-1]
    assert last["recall_at_k"] > 1.5 * last["chance"], model.pretrain_history_[-1]
    assert model.pretrain_history_[-1]["inter"] < model.pretrain_history_[0]["inter"]


def test_report_files_and_summary(tmp_path):
    history = [{"loss": 3.0 - 0.1 * i, "intra": 1.0, "inter": 1.0 - 0.1 * i, "fused": 1.0,
                "recall_at_k": 0.2 + 0.05 * i, "chance": 0.1} for i in range(5)]
    lines = write_pretrain_report(tmp_path / "gsl.pt", history)
    frame = pd.read_csv(tmp_path / "gsl.pt.history.csv")
    assert list(frame["epoch"]) == [1, 2, 3, 4, 5] and frame["recall_at_k"].iloc[-1] == pytest.approx(0.4)
    assert (tmp_path / "gsl.pt.history.png").read_bytes()[:4] == b"\x89PNG"
    assert "above chance" in lines[-1] and "NOT" not in lines[-1]
