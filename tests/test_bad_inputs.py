"""The bad-input catalogue (issue 6): each entry gives one clear error, or is skipped only when asked to.

CLI situations go through ``msrl_plugin.cli.main``: non-zero exit, exactly one ``error:`` line on stderr
naming the file (and row/column where it applies), no traceback, nothing half-written in the results folder.
"""
from __future__ import annotations

import builtins
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from _cohorts import easy_survival_cohort
from conftest import grid_coords, write_coords_only, write_trident

from msrl_plugin.aggregators.abmil import ABMILAggregator
from msrl_plugin.aggregators.base import Aggregator
from msrl_plugin.cli import main
from msrl_plugin.errors import BadInputError, CheckpointError, MSRLPluginError
from msrl_plugin.registry import create_aggregator

DIM = 8
FAST = ["--max-epochs", "1", "--k", "2", "--seed", "1"]


# -- a tiny TRIDENT-like cohort on disk ------------------------------------------------------------
@dataclass
class Files:
    root: Path
    features: Path
    clinical: Path
    genomics: Path
    results: Path

    def bag(self, i: int) -> Path:
        return self.features / f"s{i}.h5"

    def cases(self) -> pd.DataFrame:
        return pd.read_csv(self.clinical, dtype=str)

    def write_cases(self, frame: pd.DataFrame) -> None:
        frame.to_csv(self.clinical, index=False)


def make_files(root: Path, n: int = 20, dim: int = DIM, task: str = "survival", seed: int = 0) -> Files:
    """``n`` one-slide cases with 6..12-patch TRIDENT bags, a clinical table and a 4-gene genomics table."""
    rng = np.random.default_rng(seed)
    features = root / "features_uni_v1"
    for i in range(n):
        n_patches = int(rng.integers(6, 12))
        write_trident(features / f"s{i}.h5", rng.normal(size=(n_patches, dim)).astype(np.float32))
    table = pd.DataFrame({"case_id": [f"c{i}" for i in range(n)],
                          "slide_id": [f"s{i}.svs" for i in range(n)]})
    if task == "survival":
        table["survival_months"] = np.round(rng.uniform(1, 60, n), 2)
        table["censorship"] = [i % 2 for i in range(n)]
    else:
        table["label"] = ["tumor" if i % 2 else "normal" for i in range(n)]
    clinical = root / "clinical.csv"
    table.to_csv(clinical, index=False)
    genomics = root / "genomics.csv"
    pd.DataFrame(rng.normal(size=(n, 4)), index=pd.Index(table["case_id"], name="case_id"),
                 columns=[f"g{j}" for j in range(4)]).to_csv(genomics)
    return Files(root, features, clinical, genomics, root / "results")


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return make_files(tmp_path)


# -- running the CLI -------------------------------------------------------------------------------
@dataclass
class Run:
    code: int
    out: str
    err: str


def run_cli(capsys, *args) -> Run:
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return Run(code, out, err)


def train_args(f: Files, *extra) -> list:
    return ["train", "--features", f.features, "--clinical", f.clinical, "--results-dir", f.results, *FAST,
            *extra]


def assert_one_error(run: Run, *must_contain: str) -> str:
    """Non-zero exit, one ``error:`` line on stderr (no traceback) that contains every ``must_contain``."""
    assert run.code != 0, run.out
    lines = [line for line in run.err.splitlines() if line.strip()]
    assert len(lines) == 1, run.err
    line = lines[0]
    assert line.startswith("error: "), line
    assert "Traceback" not in run.err + run.out
    for text in must_contain:
        assert text in line, f"{text!r} not in {line!r}"
    return line


def assert_nothing_half_written(results: Path) -> None:
    """No temporaries, no summary, and no fold whose checkpoint or predictions are missing."""
    if not results.exists():
        return
    names = [p.name for p in results.rglob("*") if p.is_file()]
    assert not [n for n in names if n.endswith(".tmp") or n.startswith(".")], names
    assert "summary.csv" not in names, names
    for name in names:
        if name.startswith("s_") and name.endswith("_checkpoint.pt"):
            k = name[2:-len("_checkpoint.pt")]
            assert f"split_{k}_results.csv" in names, names


def train_fails(capsys, f: Files, *extra, contains: tuple[str, ...] = ()) -> str:
    run = run_cli(capsys, *train_args(f, *extra))
    line = assert_one_error(run, *contains)
    assert_nothing_half_written(f.results)
    return line


def train_works(capsys, f: Files, *extra) -> Run:
    run = run_cli(capsys, *train_args(f, *extra))
    assert run.code == 0, run.err
    assert "Traceback" not in run.err
    return run


def result_cases(f: Files, model: str = "abmil") -> set[str]:
    folder = f.results / f"{model}_s1"
    tables = [pd.read_csv(p, dtype=str) for p in folder.glob("split_*_results.csv")]
    return set().union(*(set(t["case_id"]) for t in tables))


# -- paths -------------------------------------------------------------------------------------------
def test_missing_features_folder(capsys, files):
    shutil.rmtree(files.features)
    train_fails(capsys, files, contains=(str(files.features), "not found"))


def test_missing_clinical_table(capsys, files):
    files.clinical.unlink()
    train_fails(capsys, files, contains=(str(files.clinical), "not found"))


def test_missing_genomics_table(capsys, files):
    files.genomics.unlink()
    train_fails(capsys, files, "--genomics", files.genomics, contains=(str(files.genomics), "not found"))


def test_missing_checkpoint(capsys, files, tmp_path):
    run = run_cli(capsys, "predict", "--model-path", tmp_path / "nope.pt", "--features", files.features,
                  "--out", tmp_path / "p.csv")
    assert_one_error(run, "nope.pt", "not found")
    assert not (tmp_path / "p.csv").exists()


def test_missing_split_dir(capsys, files):
    splits = files.root / "splits"
    train_fails(capsys, files, "--split-dir", splits, contains=(str(splits), "split folder not found"))


# -- bag files -----------------------------------------------------------------------------------------
def test_not_an_hdf5_file(capsys, files):
    files.bag(3).write_text("case_id,slide_id\n")
    train_fails(capsys, files, contains=(str(files.bag(3)), "not an HDF5 file"))


def test_truncated_h5(capsys, files):
    data = files.bag(3).read_bytes()
    files.bag(3).write_bytes(data[: len(data) // 2])
    train_fails(capsys, files, contains=(str(files.bag(3)), "truncated"))


def test_h5_without_features(capsys, files):
    files.bag(3).unlink()
    with h5py.File(files.bag(3), "w") as f:
        f["embeddings"] = np.zeros((4, DIM), np.float32)
    train_fails(capsys, files, contains=(str(files.bag(3)), "no 'features'"))


def test_coords_file_given_as_features(capsys, files):
    files.bag(3).unlink()
    write_coords_only(files.bag(3))
    train_fails(capsys, files,
                contains=(str(files.bag(3)), "coords/patches file passed where a features file"))


def test_patches_folder_given_as_features(capsys, files):
    patches = files.root / "patches"
    for i in range(3):
        write_coords_only(patches / f"s{i}_patches.h5")
    run = run_cli(capsys, *train_args(files)[:2], patches, *train_args(files)[3:])
    assert_one_error(run, str(patches), "patches/ folder")
    flat = files.root / "coords_only"
    shutil.copytree(patches, flat)
    run = run_cli(capsys, *train_args(files)[:2], flat, *train_args(files)[3:])
    assert_one_error(run, str(flat), "coords/patches files, not features")
    assert_nothing_half_written(files.results)


def test_coords_rows_differ_from_feature_rows(capsys, files):
    write_trident(files.bag(3), np.ones((5, DIM), np.float32), grid_coords(4))
    train_fails(capsys, files, contains=(str(files.bag(3)), "coords have 4 rows but features have 5"))


def test_feature_dim_differs_between_bags(capsys, files):
    write_trident(files.bag(3), np.ones((5, DIM * 2), np.float32))
    line = train_fails(capsys, files, contains=(str(files.bag(3)), "feature dim 16 differs from 8", "mixed"))
    assert "--patch-encoder" in line
    assert not files.results.exists()  # found before anything was written


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_features(capsys, files, bad):
    x = np.ones((6, DIM), np.float32)
    x[2, 1] = bad
    write_trident(files.bag(3), x)
    train_fails(capsys, files, contains=(str(files.bag(3)), "NaN/Inf in 1 of 6 rows"))


def test_empty_bag_stops_by_default_and_is_skipped_on_request(capsys, files):
    write_trident(files.bag(3), np.zeros((0, DIM), np.float32))
    train_fails(capsys, files, contains=(str(files.bag(3)), "empty", "--on-empty skip"))
    with pytest.warns(UserWarning) as record:
        train_works(capsys, files, "--on-empty", "skip")
    messages = " | ".join(str(w.message) for w in record)
    assert "skipping 1 empty bag(s) (0 patches): 's3'" in messages and "1 case(s) dropped" in messages
    cases = result_cases(files)
    assert "c3" not in cases and len(cases) == 19


def test_locked_bag_is_skipped_and_reported(capsys, files):
    Path(f"{files.bag(3)}.lock").write_text("")
    with pytest.warns(UserWarning, match="locked"):
        train_fails(capsys, files, contains=(str(files.features), "locked", "--on-missing-bag skip"))
    with pytest.warns(UserWarning, match="locked"):
        train_works(capsys, files, "--on-missing-bag", "skip")
    assert "c3" not in result_cases(files)


# -- clinical table ------------------------------------------------------------------------------------
def test_duplicate_case_ids_without_slide_column(capsys, files):
    table = files.cases().drop(columns="slide_id")
    table.loc[5, "case_id"] = "c4"
    files.write_cases(table)
    train_fails(capsys, files, contains=(str(files.clinical), "'c4'", "data row 6 (line 7)", "unique"))


def test_duplicate_case_ids_with_conflicting_targets(capsys, files):
    table = files.cases()
    table.loc[5, "case_id"] = "c4"  # two slides of one case ...
    table.loc[5, "censorship"] = 1 - int(table.loc[4, "censorship"])  # ... with different outcomes
    files.write_cases(table)
    train_fails(capsys, files, contains=(str(files.clinical), "'c4'", "conflicting", "line 7"))


def test_duplicate_slide_rows(capsys, files):
    table = files.cases()
    table = pd.concat([table, table.iloc[[2]]], ignore_index=True)
    files.write_cases(table)
    train_fails(capsys, files, contains=(str(files.clinical), "'s2'", "appears twice", "line 22"))


def test_duplicate_genomics_case_ids(capsys, files):
    frame = pd.read_csv(files.genomics, dtype=str)
    pd.concat([frame, frame.iloc[[7]]]).to_csv(files.genomics, index=False)
    train_fails(capsys, files, "--genomics", files.genomics,
                contains=(str(files.genomics), "'c7'", "twice", "line 22"))


def test_clinical_row_without_bag_stops_by_default_and_is_skipped_on_request(capsys, files):
    files.bag(3).unlink()
    train_fails(capsys, files, contains=(str(files.features), "'c3'", "--on-missing-bag skip"))
    with pytest.warns(UserWarning, match="no bag"):
        train_works(capsys, files, "--on-missing-bag", "skip")
    cases = result_cases(files)
    assert "c3" not in cases and len(cases) == 19


def test_bag_without_clinical_row_is_ignored_with_a_warning(capsys, files):
    write_trident(files.features / "stranger.h5", np.ones((5, DIM), np.float32))
    with pytest.warns(UserWarning, match="1 bag.*no clinical row.*'stranger'"):
        train_works(capsys, files)
    assert len(result_cases(files)) == 20


@pytest.mark.parametrize("value", ["0", "-3", "", "soon"])
def test_bad_survival_time(capsys, files, value):
    table = files.cases()
    table.loc[6, "survival_months"] = value
    files.write_cases(table)
    train_fails(capsys, files, contains=(str(files.clinical), "data row 7 (line 8)", "'survival_months'",
                                         "survival time"))


@pytest.mark.parametrize("value", ["2", "-1", "0.5", "yes", ""])
def test_censorship_outside_0_1(capsys, files, value):
    table = files.cases()
    table.loc[6, "censorship"] = value
    files.write_cases(table)
    train_fails(capsys, files, contains=(str(files.clinical), "data row 7 (line 8)", "'censorship'",
                                         "not 0 or 1"))


def test_event_column_outside_0_1(capsys, files):
    table = files.cases().drop(columns="censorship")
    table["event"] = ["1"] * 19 + ["dead"]
    files.write_cases(table)
    train_fails(capsys, files, "--event-col", "event",
                contains=(str(files.clinical), "data row 20 (line 21)", "'event'"))


def test_label_column_missing(capsys, tmp_path):
    f = make_files(tmp_path, task="classification")
    f.write_cases(f.cases().rename(columns={"label": "diagnosis"}))
    line = train_fails(capsys, f, "--task", "classification", contains=(str(f.clinical), "['label']"))
    assert "--label-col" in line and "diagnosis" in line
    train_works(capsys, f, "--task", "classification", "--label-col", "diagnosis")


def test_survival_columns_missing(capsys, files):
    files.write_cases(files.cases().rename(columns={"survival_months": "os_days"}))
    line = train_fails(capsys, files, contains=(str(files.clinical), "['survival_months']", "--time-col"))
    assert "os_days" in line


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
