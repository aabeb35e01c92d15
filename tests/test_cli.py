"""The CLI end to end in a temp dir: demo cohort -> validate -> train -> predict -> evaluate; resume."""
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from _cli import run

from msrl_plugin.synth import CohortConfig, generate_cohort, write_cohort


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    paths = write_cohort(generate_cohort(CohortConfig.test_tier(n_cases=40, bag_min=16, bag_max=32), 0), out)
    return paths



def cohort_args(paths):
    return ["--features", str(paths["job_dir"]), "--clinical", str(paths["clinical"]),
            "--genomics", str(paths["genomics"])]


def test_train_predict_evaluate(demo_dir, tmp_path, capsys):
    results = tmp_path / "results"
    code = run(["-q", "train", "--model", "abmil", *cohort_args(demo_dir), "--k", "2", "--max_epochs", "1",
                "--results_dir", str(results), "--exp_code", "ab"])
    assert code == 0
    out = results / "ab_s1"
    summary = pd.read_csv(out / "summary.csv", index_col=0)
    assert list(summary.columns[:2]) == ["folds", "test_cindex"] and len(summary) == 2
    assert not any(c.startswith("val_") for c in summary.columns)  # k-fold has no validation set
    assert summary["test_cindex"].notna().all()
    for k in (0, 1):
        assert (out / f"s_{k}_checkpoint.pt").is_file() and (out / f"split_{k}_results.csv").is_file()
        assert not (out / f"s_{k}_training_state.pt").exists()
    assert (out / "config.json").is_file()
    pred_csv = tmp_path / "pred.csv"
    assert run(["-q", "predict", "--model-path", str(out / "s_0_checkpoint.pt"), "--features",
                str(demo_dir["job_dir"]), "--out", str(pred_csv)]) == 0
    pred = pd.read_csv(pred_csv)
    assert len(pred) == 40 and "risk" in pred
    capsys.readouterr()
    assert run(["evaluate", "--model-path", str(out / "s_0_checkpoint.pt"), *cohort_args(demo_dir)]) == 0
    assert "c_index" in capsys.readouterr().out


def test_existing_results_are_never_overwritten(demo_dir, tmp_path, capsys):
    args = ["-q", "train", "--model", "abmil", *cohort_args(demo_dir), "--k", "2", "--max_epochs", "1",
            "--results_dir", str(tmp_path), "--exp_code", "x"]
    assert run(args) == 0
    before = (tmp_path / "x_s1" / "split_0_results.csv").read_bytes()
    capsys.readouterr()
    assert run(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "--resume" in err[0]
    assert (tmp_path / "x_s1" / "split_0_results.csv").read_bytes() == before
    assert run(args + ["--resume"]) == 0  # finished folds are kept
    assert (tmp_path / "x_s1" / "split_0_results.csv").read_bytes() == before
    assert run(args[:-4] + ["--results_dir", str(tmp_path), "--exp_code", "x", "--resume", "--lr", "0.1"]) == 2


def test_msrl_train_writes_the_same_layout(demo_dir, tmp_path):
    assert run(["-q", "train", "--model", "msrl", *cohort_args(demo_dir), "--k", "2", "--max_epochs", "1",
                "--param", "pretrain_epochs=1", "--param", "embed_dim=16", "--results_dir", str(tmp_path)]) == 0
    names = sorted(p.name for p in (tmp_path / "msrl_s1").iterdir())
    assert "summary.csv" in names and "s_1_checkpoint.pt" in names and "split_1_results.csv" in names


def test_config_file_with_flag_override(demo_dir, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"features: {demo_dir['job_dir']}\nclinical: {demo_dir['clinical']}\nk: 2\nmax_epochs: 1\n"
                   f"model: abmil\nexp_code: fromcfg\nresults_dir: {tmp_path}\n")
    assert run(["-q", "train", "--config", str(cfg), "--exp_code", "override"]) == 0
    assert (tmp_path / "override_s1" / "summary.csv").is_file()
    bad = tmp_path / "bad.yaml"
    bad.write_text("not_a_flag: 1\n")
    assert run(["-q", "train", "--config", str(bad)]) == 2


def test_list_models_and_validate(demo_dir, capsys):
    assert run(["list-models"]) == 0
    listed = capsys.readouterr().out
    for name in ("abmil", "msrl", "msrl_h", "msrl_multi", "msrl_random_gsl"):
        assert name in listed
    assert run(["validate", str(demo_dir["job_dir"])]) == 0


def _train_cmd(paths, results):
    return [sys.executable, "-m", "msrl_plugin.cli", "-q", "train", "--model", "msrl", *cohort_args(paths),
            "--k", "2", "--k_end", "1", "--max_epochs", "6", "--param", "pretrain_epochs=2",
            "--param", "embed_dim=16", "--seed", "3", "--device", "cpu", "--results_dir", str(results)]


def test_sigkill_then_resume_matches_an_uninterrupted_run(demo_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    reference = tmp_path / "ref"
    subprocess.run(_train_cmd(demo_dir, reference), check=True, env=env, timeout=300)
    crashed = tmp_path / "crash"
    proc = subprocess.Popen(_train_cmd(demo_dir, crashed), env=env)
    state = crashed / "msrl_s3" / "s_0_training_state.pt"
    deadline = time.time() + 240
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if not killed:
        pytest.skip("the run finished before it could be killed")
    assert not (crashed / "msrl_s3" / "split_0_results.csv").exists()
    subprocess.run(_train_cmd(demo_dir, crashed) + ["--resume"], check=True, env=env, timeout=300)
    a = pd.read_csv(reference / "msrl_s3" / "split_0_results.csv")
    b = pd.read_csv(crashed / "msrl_s3" / "split_0_results.csv")
    pd.testing.assert_frame_equal(a, b)


VARIANTS = ["msrl_h", "msrl_multi", "msrl_knn_euclidean", "msrl_knn_cosine", "msrl_random_gsl", "msrl_online_buffer",
            "snn", "fusion", "recon_fusion", "cvae_fusion"]


@pytest.mark.parametrize("model", VARIANTS)
def test_every_registered_variant_runs_from_the_cli_with_the_abmil_layout(demo_dir, tmp_path, model):
    extra = ["--param", "pretrain_epochs=1", "--param", "embed_dim=16"] if model.startswith("msrl") else []
    assert run(["-q", "train", "--model", model, *cohort_args(demo_dir), "--k", "2", "--max_epochs", "1", *extra,
                "--results_dir", str(tmp_path)]) == 0
    names = {p.name for p in (tmp_path / f"{model}_s1").iterdir()}
    assert {"summary.csv", "config.json", "s_0_checkpoint.pt", "s_1_checkpoint.pt", "split_0_results.csv",
            "split_1_results.csv", "splits_0.csv", "splits_1.csv"} <= names


def test_packed_cache_gives_the_same_results(demo_dir, tmp_path):
    base = ["-q", "train", "--model", "abmil", *cohort_args(demo_dir), "--k", "2", "--max_epochs", "1"]
    assert run(base + ["--results_dir", str(tmp_path / "plain")]) == 0
    assert run(base + ["--results_dir", str(tmp_path / "cached"), "--cache-dir", str(tmp_path / "cache")]) == 0
    assert (tmp_path / "cache" / "index.json").is_file()
    a = pd.read_csv(tmp_path / "plain" / "abmil_s1" / "split_0_results.csv")
    b = pd.read_csv(tmp_path / "cached" / "abmil_s1" / "split_0_results.csv")
    pd.testing.assert_frame_equal(a, b)


def test_precision_flag(demo_dir, tmp_path, capsys):
    base = ["-q", "train", *cohort_args(demo_dir), "--k", "2", "--max_epochs", "1", "--precision", "bf16"]
    assert run(base + ["--model", "abmil", "--results_dir", str(tmp_path)]) == 0
    config = (tmp_path / "abmil_s1" / "config.json").read_text()
    assert '"precision": "bf16"' in config
    capsys.readouterr()
    assert run(base + ["--model", "snn", "--results_dir", str(tmp_path / "snn")]) == 2
    err = capsys.readouterr().err
    assert "float32 only" in err and "Traceback" not in err and not (tmp_path / "snn").exists()
