"""Hardening, second round (issue 13), part 1: a shared ``--cache-dir`` and every bad value, through the real CLI
with input files made here.

The promise: one ``error:`` line naming the file and the fix, exit 2, no traceback, no input file changed,
nothing half-written; a shared ``--cache-dir`` only ever touches files the cache made.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from _bad_input_kit import (
    assert_nothing_half_written,
    assert_one_error,
    make_files,
    run_cli,
    snapshot,
    train_args,
    train_works,
    trained_folder,
)
from msrl_plugin.adapters.cache_folder import HEADER, MARKER, SUBFOLDER


# -- 1. a shared --cache-dir ------------------------------------------------------------------------
def _planted_index(cache: Path, data_file: str) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "index.json").write_text(json.dumps({
        "format": "msrl-plugin-packed-cache", "version": 2, "data_file": data_file, "data_bytes": 0,
        "entries": {}}))


def test_planted_symlink_data_file_never_touches_its_target(capsys, files, tmp_path):
    victim = tmp_path / "victim.dat"
    victim.write_bytes(b"precious" * 100)
    cache = tmp_path / "cache"
    _planted_index(cache, "features-0123456789abcdef.bin")
    (cache / "features-0123456789abcdef.bin").symlink_to(victim)
    (cache / MARKER).write_text("")  # even inside a folder the cache owns
    with pytest.warns(UserWarning, match="symbolic link"):
        train_works(capsys, files, "--cache-dir", cache)
    assert victim.read_bytes() == b"precious" * 100
    assert (cache / "features-0123456789abcdef.bin").is_symlink()  # left alone, not deleted either


def test_index_naming_a_bag_and_the_features_folder_as_cache(capsys, files):
    _planted_index(files.features, "s0.h5")
    before = snapshot(files.features)
    run = run_cli(capsys, *train_args(files, "--cache-dir", files.features))
    assert_one_error(run, str(files.features), "features folder", "--cache-dir")
    assert snapshot(files.features) == before


def test_foreign_index_is_a_miss_with_a_warning_and_the_named_file_is_kept(capsys, files, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / MARKER).write_text("")
    mine = cache / "features-00000000000000aa.bin"
    mine.write_bytes(b"not written by the cache")
    _planted_index(cache, mine.name)
    with pytest.warns(UserWarning, match="damaged or foreign cache index"):
        train_works(capsys, files, "--cache-dir", cache)
    assert mine.read_bytes() == b"not written by the cache"


def test_a_planted_lock_link_is_refused_and_its_target_untouched(capsys, files, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / MARKER).write_text("")
    (cache / ".lock").symlink_to(victim)
    assert_one_error(run_cli(capsys, *train_args(files, "--cache-dir", cache)), ".lock", "--cache-dir")
    assert victim.read_text() == "keep"


def test_users_own_files_in_the_cache_folder_are_never_deleted(capsys, files, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "features-0001.bin").write_bytes(b"user data")
    (scratch / "index.json").write_text('{"mine": true}')
    train_works(capsys, files, "--cache-dir", scratch)
    assert (scratch / "features-0001.bin").read_bytes() == b"user data"
    assert (scratch / "index.json").read_text() == '{"mine": true}'
    own = scratch / SUBFOLDER  # a folder holding other files gets the cache in a subfolder
    assert (own / MARKER).is_file()
    data = [p for p in own.glob("features-*.bin")]
    assert len(data) == 1 and data[0].read_bytes().startswith(HEADER)
    # a file at a generated-looking name that the cache did not make survives every later run
    stranger = own / "features-00000000000000ff.bin"
    stranger.write_bytes(b"x" * 100)
    train_works(capsys, files, "--cache-dir", scratch, "--exp-code", "again")
    assert stranger.read_bytes() == b"x" * 100


# -- 2. every bad value: one error line, exit 2, nothing written ------------------------------------
@pytest.mark.parametrize("extra, flag", [
    (("--batch-size", "0"), "batch_size"), (("--lr", "-1"), "lr"), (("--drop-out", "1.5"), "dropout"),
    (("--param", "hidden_dim=abc"), "hidden_dim"), (("--max-epochs", "-3"), "max_epochs"),
    (("--k-start", "2"), "--k-start"), (("--k-start", "1", "--k-end", "1"), "--k-end"),
    (("--k-end", "5"), "--k-end"), (("--seed", "-2"), "seed"),
])
def test_bad_flag_values(capsys, files, extra, flag):
    run = run_cli(capsys, *train_args(files, *extra))
    assert_one_error(run, flag)
    assert run.code == 2
    assert not files.results.exists() or not any(files.results.rglob("*"))


@pytest.mark.parametrize("text", ["lr: [1, 2\n", "lr: !!python/object/apply:os.system ['echo hi']\n",
                                  "\tlr: 1\n"])
def test_malformed_or_unsafe_config(capsys, files, tmp_path, text):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    run = run_cli(capsys, *train_args(files, "--config", config))
    assert_one_error(run, str(config), "YAML")
    assert not files.results.exists()


def test_config_values_are_checked_like_flags(capsys, files, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("batch_size: 0\n")
    assert_one_error(run_cli(capsys, *train_args(files, "--config", config)), "batch_size")


@pytest.mark.parametrize("text, word", [("seed: 1.5\n", "seed"), ("k: three\n", "--k")])
def test_config_values_of_the_wrong_type(capsys, files, tmp_path, text, word):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    args = ["train", "--features", files.features, "--clinical", files.clinical, "--results-dir", files.results,
            "--max-epochs", "1", "--config", config]
    assert_one_error(run_cli(capsys, *args), word)
    assert not files.results.exists()


def test_a_flag_click_cannot_parse_is_one_line(capsys, files):
    assert_one_error(run_cli(capsys, *train_args(files, "--batch-size", "abc")), "--batch-size", "--help")


def _edit_checkpoint(path: Path, **params) -> None:
    import torch

    ckpt = torch.load(path, weights_only=True)
    ckpt["params"] = json.dumps({**json.loads(ckpt["params"]), **params})
    torch.save(ckpt, path)


@pytest.mark.parametrize("params", [{"batch_size": 0}, {"n_bins": 0}])
def test_checkpoint_with_impossible_parameters(capsys, files, tmp_path, params):
    ckpt = trained_folder(capsys, files) / "s_0_checkpoint.pt"
    _edit_checkpoint(ckpt, **params)
    out = tmp_path / "pred.csv"
    run = run_cli(capsys, "predict", "--model-path", ckpt, "--features", files.features, "--out", out)
    assert_one_error(run, str(ckpt), next(iter(params)))
    assert not out.exists()


def test_resume_with_foreign_fold_results(capsys, files):
    folder = trained_folder(capsys, files)
    (folder / "split_0_results.csv").write_text("case_id,risk\nzz1,0.5\nzz2,0.1\n")
    before = snapshot(folder)
    run = run_cli(capsys, *train_args(files, "--resume"))
    assert_one_error(run, "split_0_results.csv", "not this run")
    assert snapshot(folder) == before


def test_resume_with_a_training_state_for_other_features(capsys, files, tmp_path):
    from msrl_plugin.adapters import load_cohort

    from msrl_plugin.aggregators.abmil import ABMILAggregator

    other = make_files(tmp_path / "other", dim=16)
    cohort = load_cohort(other.features, other.clinical, "survival")
    state = files.results / "abmil_s1" / "s_0_training_state.pt"
    ABMILAggregator(max_epochs=1, seed=1).enable_resume(state).fit(cohort)  # what a killed 16-d run leaves
    before = snapshot(files.results)
    run = run_cli(capsys, *train_args(files, "--resume"))
    assert_one_error(run, str(state), "16-d")
    assert snapshot(files.results) == before


def test_a_run_that_stopped_after_its_config_can_be_started_again(capsys, files):
    folder = files.results / "abmil_s1"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"lr": 123}))  # an earlier start that failed
    train_works(capsys, files)
    assert json.loads((folder / "config.json").read_text())["lr"] != 123  # this run's own settings


def test_genomics_ids_that_do_not_match_fail_before_anything_is_written(capsys, files):
    import pandas as pd

    genomics = pd.read_csv(files.genomics, dtype=str)
    genomics["case_id"] = [f"00{i}" if i else "c0" for i in range(len(genomics))]  # only c0 matches
    genomics.to_csv(files.genomics, index=False)
    run = run_cli(capsys, *train_args(files, "--genomics", files.genomics, "--model", "msrl", "--k", "5",
                                      "--param", "pretrain_epochs=0"))
    assert_one_error(run, "fold", "genomics")
    assert_nothing_half_written(files.results)
    assert not list(files.results.rglob("split_*"))


