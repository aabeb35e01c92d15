"""``make-cohort`` and ``compare`` through the CLI on a small generated test-tier cohort."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from msrl_plugin.cli import main
from msrl_plugin.cli.common import parse_value
from msrl_plugin.cli.compare import parse_model_params
from msrl_plugin.errors import MSRLPluginError


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A tiny test-tier cohort on disk (written once for the module)."""
    out = tmp_path_factory.mktemp("cohort")
    cfg = out / "knobs.yaml"
    cfg.write_text("n_cases: 40\nbag_min: 16\nbag_max: 32\nn_sites: 2\n")
    main(["make-cohort", "--config", str(cfg), "--tier", "test", "--seed", "2", "--set", "rho=0.5",
          "--out", str(out / "job")])
    return out / "job"


def test_make_cohort_writes_trident_layout_and_csvs(generated):
    meta = json.loads((generated / "cohort_config.json").read_text())
    assert meta["seed"] == 2 and meta["n_cases"] == 40
    assert meta["config"]["rho"] == 0.5 and meta["config"]["feature_dim"] == 64  # --set over yaml over tier
    assert len(list((generated / "20x_256px_0px_overlap" / "features_synthetic").glob("*.h5"))) == 40
    clinical = pd.read_csv(generated / "clinical.csv")
    assert {"case_id", "slide_id", "survival_months", "censorship", "site"} <= set(clinical.columns)
    assert len(list((generated / "splits").glob("splits_*.csv"))) == 2


def test_compare_cli_end_to_end(generated, tmp_path, capsys):
    out = tmp_path / "cmp"
    code, stdout, err = run([
        "-q", "compare", "--features", str(generated), "--clinical", str(generated / "clinical.csv"),
        "--genomics", str(generated / "genomics.csv"), "--split-dir", str(generated / "splits"),
        "--models", "abmil,msrl_random_gsl,msrl_random_gsl:shuffled_buffer", "--max-epochs", "1",
        "--param", "msrl_random_gsl.pretrain_epochs=0", "--param", "msrl_random_gsl.embed_dim=16",
        "--param", "abmil.hidden_dim=32", "--param", "abmil.lr=1e-4", "--device", "cpu", "--n-boot", "200",
        "--out", str(out)], capsys)
    assert code == 0, err
    assert "reference" in stdout and "msrl_random_gsl" in stdout
    assert f"report: {out / 'report.html'}" in stdout
    assert (out / "report.html").is_file() and (out / "per_fold.csv").is_file()
    config = json.loads((out / "compare_config.json").read_text())
    assert config["params"]["abmil"] == {"hidden_dim": 32, "lr": 1e-4, "max_epochs": 1, "device": "cpu"}
    assert config["n_folds"] == 2  # the generator's site-held-out folds, val == test read once
    per_fold = pd.read_csv(out / "per_fold.csv")
    assert len(per_fold) == 3 * 2


def test_compare_cli_errors_are_one_line(generated, tmp_path, capsys):
    base = ["compare", "--features", str(generated), "--clinical", str(generated / "clinical.csv"),
            "--out", str(tmp_path / "x"), "--k", "2"]
    code, _, err = run(base + ["--models", "msrl,msrl_h"], capsys)
    assert code == 2 and "reference model 'abmil'" in err
    code, _, err = run(base + ["--models", "abmil,msrl_h", "--param", "abmil.nope=1"], capsys)
    assert code == 2 and "no parameter 'nope'" in err
    code, _, err = run(base + ["--models", "abmil,msrl_h", "--seeds", "a,b"], capsys)
    assert code == 2 and "--seeds" in err


def test_param_parsing():
    assert parse_value("1e-4") == 1e-4 and parse_value("5") == 5 and parse_value("true") is True
    assert parse_value("cosine") == "cosine"
    assert parse_model_params(["msrl.k=5"], ["abmil", "msrl:shuffled_buffer"]) == {"msrl": {"k": 5}}
    with pytest.raises(MSRLPluginError, match="not compared"):
        parse_model_params(["msrl.k=5"], ["abmil"])
    with pytest.raises(MSRLPluginError, match="MODEL.KEY=VALUE"):
        parse_model_params(["k=5"], ["abmil"])
