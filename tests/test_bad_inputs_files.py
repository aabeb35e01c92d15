"""The bad-input catalogue (issue 6), files: paths, bag files, the clinical table.

CLI situations go through ``msrl_plugin.cli.main``: non-zero exit, exactly one ``error:`` line on stderr
naming the file (and row/column where it applies), no traceback, nothing half-written in the results folder
(``_bad_input_kit``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from _bad_input_kit import (
    DIM,
    assert_nothing_half_written,
    assert_one_error,
    make_files,
    result_cases,
    run_cli,
    train_args,
    train_fails,
    train_works,
)
from conftest import grid_coords, write_coords_only, write_trident


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


@pytest.mark.parametrize("column, value, says", [
    *[("survival_months", v, "survival time") for v in ["0", "-3", "", "soon"]],
    *[("censorship", v, "not 0 or 1") for v in ["2", "-1", "0.5", "yes", ""]],
])
def test_bad_survival_time_or_censorship(capsys, files, column, value, says):
    table = files.cases()
    table.loc[6, column] = value
    files.write_cases(table)
    train_fails(capsys, files, contains=(str(files.clinical), "data row 7 (line 8)", f"'{column}'", says))


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


