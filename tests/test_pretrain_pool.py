"""Stage 1 once on a pool of cohorts (``msrl-plugin pretrain --pool``), reused by train/compare --pretrained:
no labels read, every case trained on, genes matched by name, the pool's scaler kept, and a fold whose test cases
are in the pool refused."""
import json

import numpy as np
import pandas as pd
import pytest
from _cli import run
from msrl_plugin.adapters.loader import load_cohort

from msrl_plugin import create_aggregator
from msrl_plugin.errors import BadInputError
from msrl_plugin.pretrain_io import read_pretrained, save_pretrained
from msrl_plugin.synth import CohortConfig, generate_cohort, generate_pancancer_pool, write_cohort

SMALL = ["--param", "pretrain_epochs=2", "--param", "embed_dim=8", "--param", "k=3", "--threads", "1"]
FIT = dict(embed_dim=8, k=3, max_epochs=1, max_patches=16, genomic_teacher_steps=5, seed=0)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "Traceback" not in err[0], err
    return err[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    config = CohortConfig.test_tier(n_cases=40, bag_min=8, bag_max=16)
    cohort = write_cohort(generate_cohort(config, 0), root / "cohortA")
    pool = write_cohort(generate_pancancer_pool(config, 0, n_types=3, n_cases=70), root / "poolB")
    # no labels: the pool's clinical tables only map slides to cases
    for paths in (cohort, pool):
        ids = pd.read_csv(paths["clinical"])[["case_id", "slide_id"]]
        ids.to_csv(paths["job_dir"] / "ids.csv", index=False)
    manifest = root / "pool.csv"
    manifest.write_text("name,features,clinical,genomics\n"
                        "A,cohortA,cohortA/ids.csv,cohortA/genomics.csv\n"
                        "B,poolB,poolB/ids.csv,poolB/genomics.csv\n")
    out = {"root": root, "cohort": cohort, "pool": pool, "manifest": manifest,
           "both": root / "both.pt", "other": root / "other.pt"}
    assert run(["-q", "pretrain", "--pool", str(manifest), "--model", "msrl", "--out", str(out["both"]), *SMALL]) == 0
    assert run(["-q", "pretrain", "--features", str(pool["job_dir"]), "--clinical", str(pool["job_dir"] / "ids.csv"),
                "--genomics", str(pool["genomics"]), "--model", "msrl", "--out", str(out["other"]), *SMALL]) == 0
    return out


def cohort_args(paths):
    return ["--features", str(paths["job_dir"]), "--clinical", str(paths["clinical"]),
            "--genomics", str(paths["genomics"])]


def test_pool_pretrain_reads_no_labels_and_trains_on_every_case(files):
    ckpt = read_pretrained(files["both"])
    assert len(ckpt["case_ids"]) == len(set(ckpt["case_ids"])) == 110
    assert [p["name"] for p in ckpt["pool"]] == ["A", "B"] and [p["cases"] for p in ckpt["pool"]] == [40, 70]
    genes = list(pd.read_csv(files["cohort"]["genomics"], index_col=0).columns)
    assert ckpt["genomics_columns"] == genes and ckpt["scaler"].mean.shape == (len(genes),)
    assert ckpt["score"]["trained_on_cases"] == 110 and ckpt["score"]["held_out_cases"] == round(0.15 * 110)
    history = pd.read_csv(files["root"] / "both.pt.history.csv")
    assert len(history) == 2 and {"recall_at_k", "chance", "loss"} <= set(history.columns)
    record = json.loads((files["root"] / "both.pt.provenance.json").read_text())
    assert {"pool", "A.genomics", "B.genomics"} <= set(record["inputs"]["tables"])


def test_pool_keeps_the_genes_every_cohort_has(files, tmp_path):
    genomics = pd.read_csv(files["pool"]["genomics"], index_col=0)
    genomics = genomics.drop(columns=["g0003"]).assign(extra=1.0)[::-1]  # one gene fewer, one more, rows reversed
    genomics.to_csv(tmp_path / "genomics.csv")
    manifest = tmp_path / "pool.csv"
    a, b = files["cohort"]["job_dir"], files["pool"]["job_dir"]
    manifest.write_text(f"name,features,clinical,genomics\nA,{a},{a / 'ids.csv'},{files['cohort']['genomics']}\n"
                        f"B,{b},{b / 'ids.csv'},{tmp_path / 'genomics.csv'}\n")
    with pytest.warns(UserWarning, match="2 gene"):
        assert run(["-q", "pretrain", "--pool", str(manifest), "--model", "msrl", "--score-holdout", "0",
                    "--out", str(tmp_path / "gsl.pt"), *SMALL]) == 0
    ckpt = read_pretrained(tmp_path / "gsl.pt")
    assert "g0003" not in ckpt["genomics_columns"] and "extra" not in ckpt["genomics_columns"]
    assert ckpt["score"]["held_out_cases"] == 0 and ckpt["score"]["trained_on_cases"] == 110


def test_a_case_listed_twice_in_the_pool_is_refused(files, tmp_path, capsys):
    manifest = tmp_path / "pool.csv"
    job = files["cohort"]["job_dir"]
    manifest.write_text(f"name,features,clinical,genomics\nA,{job},{job / 'ids.csv'},{files['cohort']['genomics']}\n"
                        f"A2,{job},{job / 'ids.csv'},{files['cohort']['genomics']}\n")
    capsys.readouterr()
    assert run(["-q", "pretrain", "--pool", str(manifest), "--model", "msrl", "--out", str(tmp_path / "g.pt"),
                *SMALL]) == 2
    assert "in two cohorts of the pool (A and A2)" in one_error_line(capsys)
    assert not (tmp_path / "g.pt").exists()
    assert run(["-q", "pretrain", "--pool", str(manifest), "--features", str(job), "--model", "msrl",
                "--out", str(tmp_path / "g.pt"), *SMALL]) == 2
    assert "--features cannot be added" in one_error_line(capsys)


def test_train_and_compare_refuse_test_cases_from_the_pool(files, tmp_path, capsys):
    train = ["-q", "train", "--model", "msrl", *cohort_args(files["cohort"]), "--k", "2", "--max_epochs", "1",
             "--param", "embed_dim=8", "--param", "k=3", "--param", "genomic_teacher_steps=5",
             "--pretrained", str(files["both"]), "--results_dir", str(tmp_path / "r"), "--threads", "1"]
    capsys.readouterr()
    assert run(train) == 2
    assert "are in the pre-training pool" in one_error_line(capsys) and not (tmp_path / "r").exists()
    compare = ["-q", "compare", *cohort_args(files["cohort"]), "--models", "abmil,msrl", "--k", "2",
               "--max-epochs", "1", "--pretrained", str(files["both"]), "--no-report", "--out", str(tmp_path / "c")]
    assert run(compare) == 2
    assert "--allow-pool-overlap" in one_error_line(capsys) and not (tmp_path / "c").exists()
    with pytest.warns(UserWarning, match="kept, as --allow-pool-overlap asks"):
        assert run(train + ["--allow-pool-overlap"]) == 0
    config = json.loads((tmp_path / "r" / "msrl_s1" / "config.json").read_text())
    assert config["allow_pool_overlap"] is True
    assert config["model_params"]["pretrained"] == str(files["both"])
    record = json.loads((tmp_path / "r" / "msrl_s1" / "provenance.json").read_text())
    assert record["inputs"]["tables"]["pretrained"]["bytes"] == files["both"].stat().st_size
    assert run(["-q", "train", "--model", "abmil", *cohort_args(files["cohort"]), "--pretrained",
                str(files["other"]), "--results_dir", str(tmp_path / "r2")]) == 2
    assert "has no stage 1" in one_error_line(capsys)


def _cohort(paths, genomics):
    return load_cohort(paths["job_dir"], paths["clinical"], "survival", genomics)


def test_genes_are_matched_by_name_and_read_with_the_pools_scaler(files, tmp_path):
    """A fold's genomics table with its columns in another order and one gene more trains the same model."""
    genomics = pd.read_csv(files["cohort"]["genomics"], index_col=0)
    shuffled = genomics[genomics.columns[::-1]].assign(unused=3.0)
    plain = create_aggregator("msrl", pretrained=str(files["other"]), **FIT).fit(_cohort(files["cohort"], genomics))
    with pytest.warns(UserWarning, match="1 genomic column"):
        moved = create_aggregator("msrl", pretrained=str(files["other"]), **FIT).fit(
            _cohort(files["cohort"], shuffled))
    ckpt = read_pretrained(files["other"])
    assert moved.genomics_columns_ == ckpt["genomics_columns"]
    np.testing.assert_array_equal(moved.scaler_.mean, ckpt["scaler"].mean)
    test = _cohort(files["cohort"], genomics)
    pd.testing.assert_frame_equal(plain.predict(test), moved.predict(test), atol=1e-5, rtol=1e-4)
    with pytest.raises(BadInputError, match="lacks 1 of the 32 genes"):
        create_aggregator("msrl", pretrained=str(files["other"]), **FIT).fit(
            _cohort(files["cohort"], genomics.drop(columns=["g0007"])))


def test_a_stage1_file_without_a_scaler_still_loads(files, tmp_path):
    """Files written before the scaler was kept: the fold's own scaler, as before."""
    ckpt = read_pretrained(files["other"])
    model = create_aggregator("msrl", **FIT)
    model._fit_inputs(_cohort(files["pool"], files["pool"]["genomics"]))
    pre = model._pretrain_model(ckpt["feature_dim"], len(ckpt["genomics_columns"]))
    pre.load_state_dict(ckpt["state_dict"])
    old = save_pretrained(tmp_path / "old.pt", pre, ckpt["feature_dim"], ckpt["genomics_columns"],
                          ckpt["case_ids"], {}, [])
    assert read_pretrained(old)["scaler"] is None
    fitted = create_aggregator("msrl", pretrained=str(old), **FIT).fit(_cohort(files["cohort"],
                                                                             files["cohort"]["genomics"]))
    values, available = _cohort(files["cohort"], files["cohort"]["genomics"]).genomics_matrix()
    np.testing.assert_allclose(fitted.scaler_.mean, values[available].mean(axis=0), rtol=1e-4, atol=1e-5)
    assert np.isfinite(fitted.predict(_cohort(files["cohort"], None))["risk"].to_numpy()).all()
