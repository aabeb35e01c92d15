"""Faults, third round (issue 22): training that diverges, fold jobs side by side, checkpoints whose contents
lie, names at the file system's limit, and messages that named the wrong cause. Each goes through the real CLI.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import pandas as pd
import pytest
import torch
from _bad_input_kit import FAST, assert_one_error, run_cli, train_args

ROOT = Path(__file__).resolve().parents[1]


def _ok(run):
    assert run.code == 0, run.err
    assert "Traceback" not in run.err + run.out
    return run


def _no_temporaries(folder: Path) -> None:
    assert not [p.name for p in folder.rglob("*") if p.name.endswith(".tmp")]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _states_are_finite(folder: Path) -> None:
    for path in folder.rglob("*training_state*.pt"):
        state = torch.load(path, weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point()), path


# -- 1. divergence --------------------------------------------------------------------------------------
def test_abmil_divergence_is_one_line_and_a_plain_rerun_works(capsys, files):
    run = run_cli(capsys, *train_args(files, "--lr", "1e16", "--max-epochs", "3"))
    assert_one_error(run, "training diverged", "fold 0", "epoch 1", "--lr 1e+16", "run again")
    folder = files.results / "abmil_s1"
    assert not list(folder.glob("s_*_training_state.pt")) and not list(folder.glob("summary*.csv"))
    _no_temporaries(files.results)
    _ok(run_cli(capsys, *train_args(files)))  # the lower (default) --lr in the same folder
    assert (folder / "summary.csv").is_file()


def _nan_from_epoch(monkeypatch, epoch: int) -> None:
    """ABMIL's loss turns NaN from ``epoch`` (1-based) on: a run that diverges after finite epochs."""
    from msrl_plugin.aggregators.abmil import ABMILAggregator

    real = ABMILAggregator._training_loss

    def loss(self, model, batch):
        value = real(self, model, batch)
        return value * float("nan") if len(self.history_) + 1 >= epoch else value

    monkeypatch.setattr(ABMILAggregator, "_training_loss", loss)


def test_divergence_after_finite_epochs_sets_the_state_aside_and_resume_recovers(capsys, files, monkeypatch):
    _nan_from_epoch(monkeypatch, 3)
    run = run_cli(capsys, *train_args(files, "--max-epochs", "4"))
    line = assert_one_error(run, "fold 0, epoch 3", "s_0_training_state.diverged.pt")
    assert "likely cause" in line
    folder = files.results / "abmil_s1"
    aside = folder / "s_0_training_state.diverged.pt"
    assert torch.load(aside, weights_only=True)["epoch"] == 2  # the last finite epoch, kept
    assert not (folder / "s_0_training_state.pt").exists()
    _states_are_finite(files.results)
    monkeypatch.undo()
    _ok(run_cli(capsys, *train_args(files, "--max-epochs", "4", "--resume")))  # starts the fold over
    assert (folder / "summary.csv").is_file() and aside.is_file()


def test_a_nan_training_state_of_an_older_run_is_refused_with_how_to_start_over(capsys, files):
    from msrl_plugin.adapters import load_cohort

    from msrl_plugin.aggregators.abmil import ABMILAggregator

    cohort = load_cohort(files.features, files.clinical, "survival")
    state = files.results / "abmil_s1" / "s_0_training_state.pt"
    ABMILAggregator(max_epochs=1, seed=1).enable_resume(state).fit(cohort)
    payload = torch.load(state, weights_only=True)
    payload["model"] = {k: v * float("nan") if v.is_floating_point() else v for k, v in payload["model"].items()}
    torch.save(payload, state)  # what a diverged run of an earlier version left
    before = _snapshot(files.results)
    run = run_cli(capsys, *train_args(files, "--resume"))
    assert_one_error(run, str(state), "non-finite", "another --exp-code")
    assert _snapshot(files.results) == before


@pytest.mark.parametrize("extra, words", [
    (("--lr", "1e6"), ("'msrl' training", "--lr 1e+06")),
    (("--param", "lr=1e6"), ("'msrl' training", "--lr 1e+06")),  # YAML 1.1 read 1e6 as text
    (("--param", "pretrain_lr=1e30"), ("stage-1 pre-training", "--param pretrain_lr=1e+30")),
])
def test_msrl_divergence_in_either_stage(capsys, files, extra, words):
    run = run_cli(capsys, *train_args(files, "--genomics", files.genomics, "--model", "msrl", "--max-epochs", "2",
                                      "--param", "embed_dim=8", "--param", "k=3", "--param", "pretrain_epochs=2",
                                      "--param", "genomic_teacher_steps=5", *extra))
    assert_one_error(run, "training diverged", "fold 0", *words)
    _states_are_finite(files.results)


def test_features_of_an_extreme_scale_are_named_as_the_cause(capsys, files):
    for path in files.features.glob("*.h5"):
        with h5py.File(path, "r+") as h5:
            h5["features"][...] = h5["features"][...] * 1e30
    run = run_cli(capsys, *train_args(files, "--genomics", files.genomics, "--model", "msrl", "--param",
                                      "embed_dim=8", "--param", "pretrain_epochs=0", "--param",
                                      "genomic_teacher_steps=0"))
    assert_one_error(run, "training diverged", "patch features reach", "rescale")


def test_a_baseline_diverges_cleanly_too(capsys, files):
    run = run_cli(capsys, *train_args(files, "--genomics", files.genomics, "--model", "snn", "--lr", "1e30"))
    assert_one_error(run, "'snn' training", "fold 0", "epoch 1")


def test_genomics_beyond_float32_are_refused_at_load_with_the_column(capsys, files):
    table = pd.read_csv(files.genomics)
    table["g2"] = table["g2"] * 1e300
    table.to_csv(files.genomics, index=False)
    before = files.genomics.read_bytes()
    run = run_cli(capsys, *train_args(files, "--genomics", files.genomics, "--model", "msrl"))
    assert_one_error(run, str(files.genomics), "column 'g2'", "too large to standardise")
    assert files.genomics.read_bytes() == before and not files.results.exists()


# -- 2. fold jobs side by side ---------------------------------------------------------------------------
def _job(files, start: int, end: int, *extra):
    return train_args(files, "--k", "3", "--k-start", str(start), "--k-end", str(end), *extra)


def test_fold_jobs_one_after_the_other_and_a_resume_that_collects_them(capsys, files):
    _ok(run_cli(capsys, *_job(files, 0, 1)))
    _ok(run_cli(capsys, *_job(files, 1, 3)))  # not refused: its folds hold no results yet
    folder = files.results / "abmil_s1"
    assert list(pd.read_csv(folder / "summary_partial_0_1.csv")["folds"]) == [0]
    assert list(pd.read_csv(folder / "summary_partial_1_3.csv")["folds"]) == [1, 2]
    assert list(pd.read_csv(folder / "summary.csv")["folds"]) == [0, 1, 2]
    config = json.loads((folder / "config.json").read_text())
    assert config["folds"] == [0, 1, 2] and config["k_start"] == 0 and config["k_end"] == 3
    assert json.loads((folder / "config_partial_0_1.json").read_text())["folds"] == [0]
    assert json.loads((folder / "config_partial_1_3.json").read_text())["folds"] == [1, 2]
    run = _ok(run_cli(capsys, *train_args(files, "--k", "3", "--resume")))
    assert run.out.count("already done") == 3
    assert list(pd.read_csv(folder / "summary.csv")["folds"]) == [0, 1, 2]


def test_a_fold_job_of_its_own_folds_again_is_refused(capsys, files):
    _ok(run_cli(capsys, *_job(files, 0, 1)))
    assert_one_error(run_cli(capsys, *_job(files, 0, 2)), "already holds results of these folds", "--resume")


def test_a_fold_job_with_other_settings_is_refused(capsys, files):
    _ok(run_cli(capsys, *_job(files, 0, 1)))
    before = _snapshot(files.results)
    run = run_cli(capsys, *_job(files, 1, 3, "--lr", "0.01"))
    assert_one_error(run, "config.json", "other settings", "lr")
    assert _snapshot(files.results) == before


def test_a_fold_job_beside_results_without_a_recorded_config_is_refused(capsys, files):
    _ok(run_cli(capsys, *_job(files, 0, 1)))
    (files.results / "abmil_s1" / "config.json").unlink()  # settings of the folds there are unknown
    before = _snapshot(files.results)
    assert_one_error(run_cli(capsys, *_job(files, 1, 3)), "settings are not recorded", "--resume")
    assert _snapshot(files.results) == before


def test_two_fold_jobs_started_together_leave_every_fold_in_the_summary(files):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    jobs = [subprocess.Popen([sys.executable, "-m", "msrl_plugin.cli", "-q", *map(str, _job(files, s, e))],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for s, e in ((0, 1), (1, 3))]
    for job in jobs:
        out, err = job.communicate(timeout=300)
        assert job.returncode == 0, err
    folder = files.results / "abmil_s1"
    assert list(pd.read_csv(folder / "summary.csv")["folds"]) == [0, 1, 2]
    assert json.loads((folder / "config.json").read_text())["folds"] == [0, 1, 2]
    _no_temporaries(files.results)


_HOLDER = textwrap.dedent("""
    import sys
    from msrl_plugin.atomic import atomic_path
    with atomic_path(sys.argv[1]) as tmp:
        tmp.write_text("mine")
        print(tmp, flush=True)
        sys.stdin.read()          # hold the live temporary until the test closes stdin
""")


def test_a_sweep_never_removes_another_live_process_temporary(tmp_path):
    from msrl_plugin.atomic import remove_stale_temporaries

    target = tmp_path / "split_0_results.csv"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(target)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    live = Path(holder.stdout.readline().strip())
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout.strip()
    stale = tmp_path / live.name.replace(f".{holder.pid}-", f".{dead_pid}-")  # its writer has ended
    stale.write_text("left by a killed run")
    removed = remove_stale_temporaries(tmp_path)
    assert live.is_file() and removed == [stale] and not stale.exists()
    remove_stale_temporaries(tmp_path, target.name)
    assert live.is_file()
    holder.communicate("", timeout=60)
    assert holder.returncode == 0 and target.read_text() == "mine"


# -- 3. checkpoint contents ---------------------------------------------------------------------------------
@pytest.fixture
def trained(capsys, files):
    _ok(run_cli(capsys, *train_args(files)))
    return files, files.results / "abmil_s1" / "s_0_checkpoint.pt"


@pytest.mark.parametrize("edges, words", [
    ([0.0, float("nan"), 20.0, 40.0, 61.0], "not all finite"),
    ([0.0, 30.0, 20.0, 40.0, 61.0], "not strictly increasing"),
    ([0.0, 20.0, 61.0], "3 survival-bin edge(s) for 4 bins"),
])
def test_a_checkpoint_with_bad_bin_edges_is_refused(capsys, trained, tmp_path, edges, words):
    files, ckpt = trained
    payload = torch.load(ckpt, weights_only=True)
    payload["task"] = json.dumps({**json.loads(payload["task"]), "edges": edges})
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    out = tmp_path / "pred.csv"
    run = run_cli(capsys, "predict", "--model-path", bad, "--features", files.features, "--out", out)
    assert_one_error(run, str(bad), "damaged checkpoint", words)
    assert not out.exists() and not list(tmp_path.glob("pred*"))


def test_a_checkpoint_with_a_scaler_of_the_wrong_shape_is_refused(capsys, trained, tmp_path):
    files, ckpt = trained
    payload = torch.load(ckpt, weights_only=True)
    payload["genomics_mean"] = torch.zeros(3)
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    run = run_cli(capsys, "predict", "--model-path", bad, "--features", files.features, "--out", tmp_path / "p.csv")
    assert_one_error(run, "damaged checkpoint", "genomics scaler")


# -- 4. names at the file system's limit -----------------------------------------------------------------
def test_a_232_byte_output_name_writes_both_files(capsys, trained, tmp_path):
    files, ckpt = trained
    name = "予" * 76 + ".csv"
    assert len(name.encode()) == 232
    out = tmp_path / name
    _ok(run_cli(capsys, "predict", "--model-path", ckpt, "--features", files.features, "--out", out))
    assert out.is_file() and out.with_name(out.stem + "_survival_bins.csv").is_file()
    _no_temporaries(tmp_path)


@pytest.mark.parametrize("size", [300, 250])  # 250: the predictions fit, their bins file (+14 bytes) does not
def test_an_output_name_over_the_limit_is_refused_before_writing(capsys, trained, tmp_path, size):
    files, ckpt = trained
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / ("p" * (size - 4) + ".csv")
    run = run_cli(capsys, "predict", "--model-path", ckpt, "--features", files.features, "--out", out)
    assert_one_error(run, "bytes long", "limit of 255", "shorter")
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("name", ["a" * 255, "予" * 85, "x.csv", "é" * 127 + ".pt"])
def test_temporary_names_stay_within_the_limit(name):
    from msrl_plugin.atomic import _OVERHEAD, temporary_stem

    for suffix in ("", ".csv"):
        stem = temporary_stem(name, suffix)
        assert len(stem.encode()) + _OVERHEAD + len(suffix) <= 255
        assert stem == name or stem != temporary_stem(name + "b", suffix)


# -- 5. messages that name the real cause -----------------------------------------------------------------
def test_a_features_folder_that_is_a_symlink_loop(capsys, files, tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    run = run_cli(capsys, "train", "--features", tmp_path / "a", "--clinical", files.clinical,
                  "--results-dir", files.results, *FAST)
    assert_one_error(run, "symbolic link loop", "--features")


def test_a_truncated_checkpoint(capsys, trained, tmp_path):
    files, ckpt = trained
    cut = tmp_path / "cut.pt"
    cut.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    run = run_cli(capsys, "predict", "--model-path", cut, "--features", files.features, "--out", tmp_path / "p.csv")
    line = assert_one_error(run, str(cut), "truncated", "Copy or download")
    assert "not a safe" not in line


def test_an_abmil_checkpoint_given_as_msrl_pretrained(capsys, trained):
    files, ckpt = trained
    run = run_cli(capsys, *train_args(files, "--genomics", files.genomics, "--model", "msrl", "--exp-code", "m",
                                      "--param", f"pretrained={ckpt}", "--param", "embed_dim=8"))
    line = assert_one_error(run, str(ckpt), "trained msrl-plugin model checkpoint", "'abmil'",
                            "stage-1 pre-training checkpoint", "msrl-plugin pretrain")
    assert "CLAM" not in line
