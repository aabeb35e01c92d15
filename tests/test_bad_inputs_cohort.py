"""The bad-input catalogue (issue 6), the cohort and its outputs: folds, genomics, split files, checkpoints,
the results folder and the error type itself (the checks: ``_bad_input_kit``).
"""

from __future__ import annotations

import builtins
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from _bad_input_kit import (
    DIM,
    assert_nothing_half_written,
    assert_one_error,
    make_files,
    run_cli,
    train_args,
    train_fails,
    train_works,
)
from _cohorts import easy_survival_cohort

from msrl_plugin.aggregators.abmil import ABMILAggregator
from msrl_plugin.aggregators.base import Aggregator
from msrl_plugin.errors import BadInputError, CheckpointError, MSRLPluginError
from msrl_plugin.registry import create_aggregator


# -- folds ---------------------------------------------------------------------------------------------
def test_no_events_in_a_training_fold(capsys, files):
    table = files.cases()
    table["censorship"] = ["0"] + ["1"] * 19  # a single event: the fold that tests it trains without events
    files.write_cases(table)
    train_fails(capsys, files, contains=("2-fold (seed 1): fold", "no events", "1 event(s) among 20",
                                         "fewer folds"))
    assert not files.results.exists()  # found before anything was written


def test_no_events_at_all(capsys, files):
    table = files.cases()
    table["censorship"] = "1"
    files.write_cases(table)
    train_fails(capsys, files, contains=("no events", "censorship"))


def test_single_class_in_a_training_fold(capsys, tmp_path):
    f = make_files(tmp_path, task="classification")
    table = f.cases()
    table["label"] = ["tumor"] + ["normal"] * 19
    f.write_cases(table)
    train_fails(capsys, f, "--task", "classification", contains=("fold", "single class", "fewer folds"))
    assert not f.results.exists()


# -- genomics ------------------------------------------------------------------------------------------
def test_genomics_with_non_numeric_values(capsys, files):
    frame = pd.read_csv(files.genomics, dtype=str)
    frame.loc[4, "g2"] = "high"
    frame.to_csv(files.genomics, index=False)
    train_fails(capsys, files, "--genomics", files.genomics,
                contains=(str(files.genomics), "data row 5 (line 6)", "'g2'", "'high'"))


def test_genomics_for_unknown_case_ids(capsys, files):
    frame = pd.read_csv(files.genomics, dtype=str)
    extra = frame.iloc[[0]].assign(case_id="stranger")
    pd.concat([frame, extra]).to_csv(files.genomics, index=False)
    with pytest.warns(UserWarning, match="1 genomics row.*'stranger'"):
        train_works(capsys, files, "--genomics", files.genomics)
    frame.assign(case_id=[f"TCGA-{i}" for i in range(len(frame))]).to_csv(files.genomics, index=False)
    files.results = files.root / "results2"
    train_fails(capsys, files, "--genomics", files.genomics,
                contains=(str(files.genomics), "none of the 20 genomics case ids", "--genomics-case-col"))


def test_genomics_id_column_choice(capsys, files):
    frame = pd.read_csv(files.genomics, dtype=str).rename(columns={"case_id": "patient"})
    frame.to_csv(files.genomics, index=False)
    train_fails(capsys, files, "--genomics", files.genomics, "--genomics-case-col", "case",
                contains=(str(files.genomics), "['case']", "--genomics-case-col"))


def test_model_that_needs_genomics_without_any(capsys, files):
    line = train_fails(capsys, files, "--model", "msrl", contains=("'msrl'", "genomics", "--genomics"))
    assert "abmil" in line


def test_model_that_needs_genomics_with_none_matching(capsys, files):
    frame = pd.read_csv(files.genomics, dtype=str)
    frame.assign(case_id=[f"x{i}" for i in range(len(frame))]).to_csv(files.genomics, index=False)
    train_fails(capsys, files, "--model", "msrl", "--genomics", files.genomics,
                contains=(str(files.genomics), "none of the 20 genomics case ids"))


# -- split files -----------------------------------------------------------------------------------------
def write_split(folder: Path, train: list[str], test: list[str], k: int = 0) -> Path:
    folder.mkdir(exist_ok=True)
    n = max(len(train), len(test))
    frame = pd.DataFrame({"train": train + [""] * (n - len(train)), "val": [""] * n,
                          "test": test + [""] * (n - len(test))})
    path = folder / f"splits_{k}.csv"
    frame.to_csv(path)
    return path


def test_split_file_naming_unknown_ids(capsys, files):
    splits = files.root / "splits"
    path = write_split(splits, [f"c{i}" for i in range(10)] + ["TCGA-ZZ"], [f"c{i}" for i in range(10, 20)])
    train_fails(capsys, files, "--split-dir", splits, contains=(str(path), "'TCGA-ZZ'", "train"))


def test_case_in_both_train_and_test(capsys, files):
    splits = files.root / "splits"
    path = write_split(splits, [f"c{i}" for i in range(11)], [f"c{i}" for i in range(10, 20)])
    train_fails(capsys, files, "--split-dir", splits, contains=(str(path), "'c10'", "both train and test"))


def test_slides_of_one_case_in_train_and_test(capsys, files):
    table = files.cases()
    table.loc[11, "case_id"] = "c10"  # c10 has slides s10 and s11
    table.loc[11, ["survival_months", "censorship"]] = table.loc[10, ["survival_months", "censorship"]]
    files.write_cases(table)
    splits = files.root / "splits"
    path = write_split(splits, [f"s{i}" for i in range(11)], [f"s{i}" for i in range(11, 20)])
    train_fails(capsys, files, "--split-dir", splits, contains=(str(path), "'c10'", "both train and test"))


def test_split_training_set_without_events(capsys, files):
    table = files.cases()
    table["censorship"] = ["1"] * 10 + ["0"] * 10
    files.write_cases(table)
    splits = files.root / "splits"
    path = write_split(splits, [f"c{i}" for i in range(10)], [f"c{i}" for i in range(10, 20)])
    train_fails(capsys, files, "--split-dir", splits,
                contains=(str(path), "fold 0", "no events", "--k 10 or less"))


# -- checkpoints ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def abmil16(tmp_path_factory) -> Path:
    """An ABMIL checkpoint trained on 16-d features."""
    path = tmp_path_factory.mktemp("ckpt") / "abmil16.pt"
    ABMILAggregator(max_epochs=1, seed=0, device="cpu").fit(easy_survival_cohort(n=12, dim=16)).save(path)
    return path


def test_checkpoint_from_another_feature_dim(capsys, files, abmil16, tmp_path):
    out = tmp_path / "pred.csv"
    run = run_cli(capsys, "predict", "--model-path", abmil16, "--features", files.features, "--out", out)
    assert_one_error(run, "8-d", "16-d", "abmil16.pt")
    assert not out.exists()


def test_checkpoint_of_a_real_msrl_model_loaded_as_abmil(tmp_path):
    cohort = easy_survival_cohort(n=16, dim=DIM, genomics_dim=3)
    path = tmp_path / "msrl.pt"
    create_aggregator("msrl", max_epochs=1, pretrain_epochs=1, embed_dim=16, k=3, buffer_size=8, batch_size=8,
                      device="cpu").fit(cohort).save(path)
    with pytest.raises(CheckpointError, match="holds a 'msrl' model, not 'abmil'") as info:
        ABMILAggregator.load(path)
    assert str(path) in str(info.value)
    assert Aggregator.load(path).name == "msrl"


def test_clam_state_dict_is_not_a_checkpoint(capsys, files, tmp_path):
    path = tmp_path / "s_0_checkpoint.pt"
    torch.save({"attention_net.0.weight": torch.zeros(2, 2)}, path)
    run = run_cli(capsys, "predict", "--model-path", path, "--features", files.features,
                  "--out", tmp_path / "p.csv")
    assert_one_error(run, str(path), "not an msrl-plugin checkpoint")


class _Payload:
    """Unpickling this would create ``marker``: a stand-in for arbitrary code in a hostile checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (str(self.marker), "w")


def test_checkpoint_with_a_pickle_payload_is_refused(capsys, files, abmil16, tmp_path):
    marker = tmp_path / "PWNED"
    ckpt = torch.load(abmil16, weights_only=True)
    ckpt["extra"] = {"hook": _Payload(marker)}
    evil = tmp_path / "evil.pt"
    torch.save(ckpt, evil)
    assert not marker.exists()
    out = tmp_path / "pred.csv"
    for command in (["predict", "--out", out], ["evaluate"]):
        run = run_cli(capsys, command[0], "--model-path", evil, "--features", files.features,
                      "--clinical", files.clinical, *command[1:])
        assert_one_error(run, str(evil), "refused")
    with pytest.raises(CheckpointError):
        Aggregator.load(evil)
    from msrl_plugin.pretrain_io import read_pretrained

    with pytest.raises(CheckpointError):
        read_pretrained(evil)
    assert not marker.exists() and not out.exists()


def test_pt_bag_with_a_pickle_payload_is_refused(capsys, tmp_path):
    marker = tmp_path / "PWNED"
    f = make_files(tmp_path / "cohort")
    pt_dir = tmp_path / "pt_files"
    pt_dir.mkdir()
    for i in range(20):
        torch.save(torch.ones(4, DIM), pt_dir / f"s{i}.pt")
    torch.save({"features": torch.ones(4, DIM), "meta": _Payload(marker)}, pt_dir / "s5.pt")
    f.features = pt_dir
    train_fails(capsys, f, contains=(str(pt_dir / "s5.pt"), "refusing to unpickle"))
    assert not marker.exists()


# -- results folder ------------------------------------------------------------------------------------
def test_results_dir_under_a_regular_file(capsys, files):
    blocker = files.root / "not_a_dir"
    blocker.write_text("")
    files.results = blocker / "results"
    train_fails(capsys, files, contains=(str(blocker), "not writable"))


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root ignores directory permissions")
def test_results_dir_read_only(capsys, files):
    files.results.mkdir()
    files.results.chmod(0o500)
    try:
        train_fails(capsys, files, contains=(str(files.results), "not writable"))
    finally:
        files.results.chmod(0o700)


def test_predict_output_under_a_regular_file(capsys, files, abmil16, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    f = make_files(tmp_path / "c16", dim=16)
    run = run_cli(capsys, "predict", "--model-path", abmil16, "--features", f.features,
                  "--out", blocker / "pred.csv")
    assert_one_error(run, str(blocker))


def test_console_shows_one_error_line_and_one_line_warnings(files):
    """What a user sees in a terminal (a real process): warnings as ``warning: ...`` lines, then one error."""
    Path(f"{files.bag(3)}.lock").write_text("")
    proc = subprocess.run([sys.executable, "-m", "msrl_plugin.cli", *map(str, train_args(files))],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "locked" in lines[-1], proc.stderr
    assert all(line.startswith("warning: ") for line in lines[:-1]), proc.stderr
    assert_nothing_half_written(files.results)


# -- the error type itself -----------------------------------------------------------------------------
def test_error_message_names_file_problem_and_fix():
    err = BadInputError("value 'x' is not 0 or 1", "clin.csv", "Fix that row.")
    assert str(err) == "clin.csv: value 'x' is not 0 or 1. Fix that row."
    assert isinstance(err, MSRLPluginError) and err.path == "clin.csv"


def test_error_message_is_one_line():
    err = MSRLPluginError("bad\nthing\r\n happened", "a.csv", "do\nthis")
    assert "\n" not in str(err) and "\r" not in str(err)


def test_debug_flag_shows_the_traceback(capsys, files):
    files.clinical.unlink()
    run = run_cli(capsys, "--debug", *train_args(files))
    assert run.code == 2
    assert "Traceback" in run.err and run.err.strip().splitlines()[-1].startswith("error: ")
