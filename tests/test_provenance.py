"""provenance.json: what every results folder records, and refused reruns into a folder of other inputs."""
import hashlib
import json
import os
import platform
import subprocess

import h5py
import pandas as pd
import pytest
import torch
from _cli import run

from msrl_plugin import provenance
from msrl_plugin.aggregators.base import Aggregator
from msrl_plugin.fingerprints import describe_changes, input_fingerprints
from msrl_plugin.synth import CohortConfig, generate_cohort, write_cohort


@pytest.fixture()
def cohort(tmp_path):
    """A fresh small cohort on disk per test (tests change its files)."""
    return write_cohort(generate_cohort(CohortConfig.test_tier(n_cases=40, bag_min=8, bag_max=16), 0),
                        tmp_path / "cohort")


def cohort_args(paths, genomics=True):
    return ["--features", str(paths["job_dir"]), "--clinical", str(paths["clinical"]),
            *(["--genomics", str(paths["genomics"])] if genomics else [])]


def train_args(paths, results, *extra):
    return ["-q", "train", "--model", "abmil", *cohort_args(paths), "--k", "2", "--max_epochs", "1",
            "--results_dir", str(results), "--threads", "1", *extra]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "Traceback" not in err[0], err
    return err[0]


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bag_paths(paths):
    return sorted((paths["features_dir"]).glob("*.h5"))


def rewrite_bag(path) -> None:
    """Same shape and size, other values: a re-extracted slide."""
    with h5py.File(path, "r+") as f:
        f["features"][0] = f["features"][0] + 1.0


# -- what a train folder records -------------------------------------------------------------------
def test_train_folder_records_versions_machine_command_and_inputs(cohort, tmp_path):
    assert run(train_args(cohort, tmp_path / "res")) == 0
    folder = tmp_path / "res" / "abmil_s1"
    record = json.loads((folder / "provenance.json").read_text())
    assert record["format"] == "msrl-plugin-provenance" and record["status"] == "finished"
    assert record["command"] == "train" and record["command_line"].startswith("msrl-plugin -q train --model abmil")
    assert record["started"] <= record["finished"] and "T" in record["started"]
    assert record["python"] == platform.python_version() and record["torch"] == torch.__version__
    assert record["msrl_plugin"] and record["device"] == "cpu" and record["gpus"] == []
    assert record["cpu"]["model"] and isinstance(record["cpu"]["avx512_bf16"], bool)
    # the precision actually used: what the fitted model reports, not the "auto" that was asked for
    model = Aggregator.load(folder / "s_0_checkpoint.pt")
    assert record["precision"]["abmil"]["requested"] == "auto"
    assert record["precision"]["abmil"]["used"] == record["folds"]["0"]["precision"] in ("bf16", "fp32")
    inputs = record["inputs"]
    assert inputs["tables"]["clinical"]["sha256"] == sha256(cohort["clinical"])
    assert inputs["tables"]["genomics"]["sha256"] == sha256(cohort["genomics"])
    bags = inputs["bags"]
    assert bags["count"] == 40 and len(bags["files"]) == 40 and bags["contents_sha256"] is None
    first = bag_paths(cohort)[0]
    assert bags["files"][first.stem][:2] == [first.stat().st_size, first.stat().st_mtime_ns]
    # the checkpoint carries its own record (predict reads it back)
    assert model.provenance_["fold"] == 0 and model.provenance_["command"] == "train"
    assert model.provenance_["precision"]["abmil"]["used"] == record["precision"]["abmil"]["used"]
    assert "files" not in model.provenance_["inputs"]["bags"]  # the listing stays in the folder's file


def test_git_commit_is_optional(tmp_path, monkeypatch):
    assert provenance.git_commit(tmp_path) is None  # not a checkout
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on the PATH: no commit, no error
    assert provenance.git_commit(provenance.source_checkout() or tmp_path) is None
    monkeypatch.setattr(provenance, "source_checkout", lambda: None)  # installed from a wheel
    assert provenance.git_commit() is None


def test_git_commit_of_a_checkout(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "pyproject.toml").write_text('[project]\nname = "msrl-plugin"\n')
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    try:
        for args in (["init", "-q"], ["add", "pyproject.toml"], ["commit", "-qm", "x"]):
            subprocess.run([*git, *args], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git is not available")
    record = provenance.git_commit(repo)
    assert len(record["commit"]) == 40 and record["dirty"] is False
    (repo / "pyproject.toml").write_text('[project]\nname = "msrl-plugin"\nversion = "9"\n')
    assert provenance.git_commit(repo)["dirty"] is True


# -- rerun / resume with other inputs --------------------------------------------------------------
def test_resume_with_a_changed_bag_is_refused_in_one_line(cohort, tmp_path, capsys):
    results = tmp_path / "res"
    assert run(train_args(cohort, results)) == 0
    folder = results / "abmil_s1"
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    rewrite_bag(bag_paths(cohort)[3])
    capsys.readouterr()
    assert run(train_args(cohort, results, "--resume")) == 2
    line = one_error_line(capsys)
    assert "provenance.json" in line and f"bags: 1 changed (e.g. '{bag_paths(cohort)[3].stem}')" in line
    assert "--allow-changed-inputs" in line
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before  # nothing written

    with pytest.warns(UserWarning, match=r"bags: 1 changed .*--allow-changed-inputs"):
        assert run(train_args(cohort, results, "--resume", "--allow-changed-inputs")) == 0
    record = json.loads((folder / "provenance.json").read_text())
    assert record["inputs_changed"].startswith("bags: 1 changed")
    assert len(record["previous_runs"]) == 1 and "files" not in record["previous_runs"][0]["inputs"]["bags"]
    assert run(train_args(cohort, results, "--resume")) == 0  # now recorded: the same inputs again


def test_resume_with_a_changed_table_names_the_table(cohort, tmp_path, capsys):
    results = tmp_path / "res"
    assert run(train_args(cohort, results)) == 0
    genomics = pd.read_csv(cohort["genomics"])
    genomics.iloc[0, 1] += 1.0
    genomics.to_csv(cohort["genomics"], index=False)
    capsys.readouterr()
    assert run(train_args(cohort, results, "--resume")) == 2
    assert "genomics table changed (sha256" in one_error_line(capsys)


def test_an_unchanged_resume_and_a_moved_data_set_pass(cohort, tmp_path):
    results = tmp_path / "res"
    assert run(train_args(cohort, results, "--hash-contents")) == 0
    for path in bag_paths(cohort):  # copied elsewhere: other times, same bytes
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert run(train_args(cohort, results, "--resume", "--hash-contents")) == 0
    record = json.loads((results / "abmil_s1" / "provenance.json").read_text())
    assert record["inputs_changed"] is None and record["inputs"]["bags"]["contents_sha256"]
    assert all(len(entry[2]) == 64 for entry in record["inputs"]["bags"]["files"].values())


def test_describe_changes():
    def inputs(files, clinical="aa", hashed=False):
        return {"tables": {"clinical": {"sha256": clinical, "path": "/x/clinical.csv"}},
                "bags": {"count": len(files), "files": {s: [size, 5, f"h{size}" if hashed else None]
                                                        for s, size in files.items()}}}

    base = inputs({"a": 1, "b": 2, "c": 3})
    assert describe_changes(base, inputs({"a": 1, "b": 2, "c": 3})) is None
    assert describe_changes(base, inputs({"a": 1, "b": 9, "d": 3})) == \
        "bags: 1 changed (e.g. 'b'), 1 added (e.g. 'd'), 1 removed (e.g. 'c')"
    assert describe_changes(base, inputs({"a": 1, "b": 2, "c": 3}, clinical="bb")).startswith(
        "clinical table changed (sha256 aa -> bb)")
    moved = inputs({"a": 1}, hashed=True)
    touched = json.loads(json.dumps(moved))
    touched["bags"]["files"]["a"][1] = 99  # another mtime, the same contents
    touched["tables"]["clinical"]["path"] = "/elsewhere/clinical.csv"
    assert describe_changes(moved, touched) is None


def test_in_memory_bags_are_counted():
    from _cohorts import easy_survival_cohort

    record = input_fingerprints(easy_survival_cohort(n=12))
    assert record["bags"] == {"count": 12, "source": "in memory"}


# -- the other commands ----------------------------------------------------------------------------
def test_predict_records_its_run_and_the_checkpoints_own_provenance(cohort, tmp_path, capsys):
    assert run(train_args(cohort, tmp_path / "res")) == 0
    checkpoint = tmp_path / "res" / "abmil_s1" / "s_1_checkpoint.pt"
    out = tmp_path / "pred" / "predictions.csv"
    out.parent.mkdir()
    predict = ["-q", "predict", "--model-path", str(checkpoint), "--features", str(cohort["job_dir"]),
               "--out", str(out), "--threads", "1"]
    assert run(predict) == 0
    record = json.loads((out.parent / "predictions_provenance.json").read_text())
    assert record["command"] == "predict" and record["precision"]["abmil"]["used"] == "fp32"
    assert record["inputs"]["bags"]["count"] == 40
    own = record["checkpoint"]
    assert own["sha256"] == sha256(checkpoint) and own["provenance_source"] == "embedded in the checkpoint"
    assert own["provenance"]["command"] == "train" and own["provenance"]["fold"] == 1
    assert run(predict) == 0  # the same inputs: a rerun overwrites
    rewrite_bag(bag_paths(cohort)[0])
    capsys.readouterr()
    assert run(predict) == 2
    assert "--out" in one_error_line(capsys)
    with pytest.warns(UserWarning, match="bags: 1 changed"):
        assert run(predict + ["--allow-changed-inputs"]) == 0


def test_compare_and_pretrain_record_their_runs(cohort, tmp_path, capsys):
    out = tmp_path / "cmp"
    compare = ["-q", "compare", *cohort_args(cohort), "--models", "abmil,snn", "--k", "2", "--max-epochs", "1",
               "--n-boot", "20", "--no-report", "--out", str(out), "--threads", "1"]
    assert run(compare) == 0
    record = json.loads((out / "provenance.json").read_text())
    assert record["command"] == "compare" and set(record["precision"]) == {"abmil", "snn"}
    assert record["precision"]["snn"]["used"] == "fp32"  # a model without a precision setting
    clinical = pd.read_csv(cohort["clinical"])
    clinical.loc[0, "survival_months"] += 1.0
    clinical.to_csv(cohort["clinical"], index=False)
    capsys.readouterr()
    assert run(compare) == 2
    assert "clinical table changed" in one_error_line(capsys)

    pre = tmp_path / "gsl.pt"
    assert run(["-q", "pretrain", "--model", "msrl", *cohort_args(cohort), "--param", "pretrain_epochs=1",
                "--param", "embed_dim=8", "--out", str(pre), "--threads", "1"]) == 0
    record = json.loads((tmp_path / "gsl.pt.provenance.json").read_text())
    assert record["command"] == "pretrain" and record["precision"]["msrl"]["used"] == "fp32"
    assert record["inputs"]["tables"]["clinical"]["sha256"] == sha256(cohort["clinical"])


def test_provenance_json_keeps_a_bag_per_line():
    text = provenance.dumps({"a": {"files": {"s1": [1, 2, None], "s2": [3, 4, "x"]}}, "gpus": []})
    assert '"s1": [1, 2, null]' in text and '"gpus": []' in text
    assert json.loads(text) == {"a": {"files": {"s1": [1, 2, None], "s2": [3, 4, "x"]}}, "gpus": []}


def test_demo_rerun_keeps_its_folds_and_records_both_runs(tmp_path):
    from msrl_plugin.demo import DemoBudget, run_demo

    budget = DemoBudget(max_epochs=1, max_patches=8, pretrain_epochs=1, k=2)
    for _ in range(2):  # the rerun rewrites the cohort (new times, same bytes): its inputs are unchanged
        run_demo(tmp_path, ["abmil"], budget, seed=0, log=lambda _: None, progress=False)
    record = json.loads((tmp_path / "results" / "demo_abmil_s0" / "provenance.json").read_text())
    assert record["command"] == "demo" and record["status"] == "finished" and record["inputs_changed"] is None
    assert record["inputs"]["bags"]["contents_sha256"] and len(record["previous_runs"]) == 1
    assert record["previous_runs"][0]["folds"].keys() == {"0", "1"} and record["folds"] == {}  # folds kept


def test_checkpoint_provenance_falls_back_to_its_folder_then_says_it_is_unknown(tmp_path):
    from _cohorts import easy_survival_cohort

    from msrl_plugin import create_aggregator

    data = easy_survival_cohort(n=24)
    path = create_aggregator("abmil", max_epochs=1, device="cpu").fit(data).save(tmp_path / "s_0_checkpoint.pt")
    model = Aggregator.load(path)  # saved outside a results folder: it carries no record
    assert model.provenance_ is None
    own = provenance.checkpoint_provenance(model, path)
    assert own["provenance"] is None and own["provenance_source"].startswith("not recorded")
    record = provenance.RunRecord("train", input_fingerprints(data), "cpu")
    record.write(tmp_path / "provenance.json", finished=True)
    own = provenance.checkpoint_provenance(model, path)
    assert own["provenance_source"].endswith("provenance.json") and own["provenance"]["command"] == "train"
