"""CLI settings: --config for any flag (same checks as flags), spellings, help, recorded settings, outputs."""
import json
import warnings

import click
import pandas as pd
import pytest
from _cli import run

from msrl_plugin.cli import cli
from msrl_plugin.cli.config import config_keys
from msrl_plugin.cli.options import WarnOnce, model_default, model_defaults_text
from msrl_plugin.synth import CohortConfig, generate_cohort, write_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    return write_cohort(generate_cohort(CohortConfig.test_tier(n_cases=40, bag_min=16, bag_max=32), 0), out)



def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "Traceback" not in err[0], err
    return err[0]


@pytest.fixture(scope="module")
def trained(cohort, tmp_path_factory):
    """One abmil run from a config file that uses CLAM spellings and a split dir of 4 folds."""
    root = tmp_path_factory.mktemp("run")
    cfg = root / "train.yaml"
    cfg.write_text(f"data_root_dir: {cohort['job_dir']}\ncsv_path: {cohort['clinical']}\n"
                   f"split_dir: {cohort['splits_dir']}\nmax_epochs: 1\nresults_dir: {root / 'res'}\n"
                   "threads: 1\nk_end: 2\n")
    assert run(["-q", "train", "--config", str(cfg)]) == 0
    return root / "res" / "abmil_s1"


def test_config_records_the_resolved_settings(trained, cohort):
    config = json.loads((trained / "config.json").read_text())
    splits = sorted(p.name for p in cohort["splits_dir"].glob("splits_*.csv"))
    assert config["k"] == len(splits) == 4 and config["folds"] == [0, 1]  # --k's default 5 is not recorded
    assert config["k_start"] == 0 and config["k_end"] == 2
    assert [name.rsplit("/", 1)[-1] for name in config["fold_sources"]] == splits  # every split file
    own = {k: model_default("abmil", k) for k in ("lr", "reg", "dropout", "hidden_dim")}
    assert (config["lr"], config["reg"], config["dropout"]) == (own["lr"], own["reg"], own["dropout"])
    assert config["max_epochs"] == 1 and config["exp_code"] == "abmil" and config["device"] == "cpu"
    assert config["model_params"]["hidden_dim"] == own["hidden_dim"] and config["model_params"]["lr"] == own["lr"]
    assert None not in (config["model_params"][k] for k in ("lr", "reg", "dropout", "max_epochs"))


def test_summary_has_no_empty_validation_columns(trained):
    summary = pd.read_csv(trained / "summary.csv", index_col=0)
    assert list(summary.columns[:2]) == ["folds", "test_cindex"] and summary["test_cindex"].notna().all()
    assert not any(c.startswith("val_") for c in summary.columns)


def test_predict_takes_required_flags_from_config(trained, cohort, tmp_path, capsys):
    out = tmp_path / "pred.csv"
    cfg = tmp_path / "predict.yaml"
    cfg.write_text(f"ckpt_path: {trained / 's_0_checkpoint.pt'}\nfeatures: {cohort['job_dir']}\nout: {out}\n"
                   f"clinical: {cohort['clinical']}\n")
    assert run(["-q", "predict", "--config", str(cfg)]) == 0
    pred = pd.read_csv(out)
    assert list(pred.columns[:3]) == ["case_id", "slide_id", "risk"]
    assert (pred["slide_id"] == pred["case_id"] + "-DX1").all()  # case and slide ids kept apart
    bins = pd.read_csv(tmp_path / "pred_survival_bins.csv")
    assert list(bins["column"]) == [c for c in pred.columns if c.startswith("survival_bin")]
    assert (bins["start"] < bins["end"]).all() and (bins["start"].iloc[1:].values == bins["end"].iloc[:-1]).all()


@pytest.mark.parametrize("text, words", [
    ("device: gpu\n", ["'device'", "'gpu' is not one of"]),
    ("k: five\n", ["'k'", "not a valid integer"]),
    ("not_a_flag: 1\n", ["unknown config key 'not_a_flag'",
                         "Valid keys: allow_changed_inputs, allow_pool_overlap, alpha_surv"]),
    ("task: [1\n", ["cannot read the config file"]),
    ("- a list\n", ["must be a mapping"]),
    ("clinical: {a: 1}\n", ["'clinical' holds a mapping"]),
    ("on_empty: maybe\n", ["'on_empty'", "'maybe' is not one of 'error', 'skip'"]),
    ("model_path: [a, b]\n", ["'model_path'"]),
])
def test_a_bad_config_value_is_one_error_naming_file_and_key(tmp_path, capsys, text, words):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    command = "predict" if "model_path" in text else "train"
    out = tmp_path / "never"
    assert run(["-q", command, "--config", str(cfg), "--results-dir" if command == "train" else "--out",
                str(out)]) == 2
    line = one_error_line(capsys)
    assert str(cfg) in line and all(w in line for w in words), line
    assert not out.exists()


def test_yaml_tags_are_refused(tmp_path, capsys):
    cfg = tmp_path / "evil.yaml"
    cfg.write_text("k: !!python/object/apply:os.system ['echo hi']\n")
    assert run(["-q", "train", "--config", str(cfg)]) == 2
    assert "cannot read the config file" in one_error_line(capsys)


def test_command_line_wins_over_config(tmp_path, cohort):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"features: {cohort['job_dir']}\nclinical: {cohort['clinical']}\nk: 2\nk_end: 1\n"
                   f"max_epochs: 1\nexp_code: fromcfg\nout: {tmp_path}\n")
    assert run(["-q", "train", "--config", str(cfg), "--exp_code", "override", "--threads", "1"]) == 0
    assert (tmp_path / "override_s1" / "summary.csv").is_file() and not (tmp_path / "fromcfg_s1").exists()


def test_every_subcommand_takes_config_and_threads():
    for name, command in cli.commands.items():
        names = {p.name for p in command.params}
        assert "threads" in names, name
        assert name == "make-cohort" or "config_path" in names, name  # make-cohort's --config: generator knobs


def test_config_keys_include_clam_spellings():
    keys = config_keys(cli.commands["train"])
    for key, name in {"data_root_dir": "features", "results_dir": "results_dir", "drop_out": "dropout",
                      "model_type": "model", "max_epochs": "max_epochs", "out": "results_dir",
                      "splits_dir": "split_dir", "patch_size": "patch_size"}.items():
        assert keys[key].name == name


def _opts(command: str, name: str) -> list[str]:
    return next(p for p in cli.commands[command].params if p.name == name).opts


def test_one_spelling_set_everywhere():
    assert {"--out", "--results-dir", "--results_dir"} <= set(_opts("compare", "out"))
    assert {"--out", "--results-dir", "--results_dir"} <= set(_opts("train", "results_dir"))
    for command in ("train", "predict", "evaluate", "pretrain", "compare", "heatmap"):
        assert {"--patch_size", "--patch-size"} <= set(_opts(command, "patch_size")), command
        assert {"--data-root-dir", "--data_root_dir"} <= set(_opts(command, "features")), command
    assert {"--patch_size", "--data-root-dir"} <= set(_opts("encode-slides", "patch_size")
                                                      + _opts("encode-slides", "job_dir"))
    seeds = {p.default for c in cli.commands.values() for p in c.params if p.name in ("seed", "seeds")}
    assert {str(s) for s in seeds} == {"1"}


def test_help_shows_each_models_own_defaults(capsys):
    assert run(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    lr = f"abmil {model_default('abmil', 'lr')} / msrl {model_default('msrl', 'lr')}"  # from the signatures
    epochs = model_defaults_text("max_epochs")
    for help_text in (f"Adam learning rate. [default: the model's own; {lr}]",
                      f"Training epochs (last epoch kept). [default: the model's own; {epochs}]",
                      f"Weight decay. [default: the model's own; {model_defaults_text('reg')}]",
                      f"Dropout rate. [default: the model's own; {model_defaults_text('dropout')}]",
                      "First fold to run", "Stop before this fold"):
        assert help_text in text


def test_validate_names_its_argument(tmp_path, capsys):
    assert run(["validate", str(tmp_path / "nope")]) == 2
    line = one_error_line(capsys)
    assert "DIRECTORY" in line and "--features" not in line


def test_single_fold_prints_no_nan(cohort, tmp_path, capsys):
    assert run(["train", *("--features", str(cohort["job_dir"]), "--clinical", str(cohort["clinical"])),
                "--k", "2", "--k_end", "1", "--max_epochs", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "+- nan" not in out and "one fold" in out


def test_repeated_warnings_are_shown_once(capsys):
    shown = []
    once = WarnOnce(lambda message, *rest: shown.append(str(message)))
    for _fold in range(3):
        with warnings.catch_warnings():  # resets Python's own once-registry each time
            warnings.simplefilter("default")
            warnings.showwarning = once
            for n in (8, 9):
                warnings.warn(f"{n} of 26 training case(s) are left out", UserWarning, stacklevel=1)
            warnings.warn("another message", UserWarning, stacklevel=1)
    assert shown == ["8 of 26 training case(s) are left out", "another message"]


def test_list_models_params_is_plain_text(capsys):
    assert run(["list-models"]) == 0
    listing = capsys.readouterr().out
    assert "list-models --params NAME" in listing and "``" not in listing
    assert run(["list-models", "--params", "msrl", "--params", "abmil"]) == 0
    text = capsys.readouterr().out
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in text.splitlines() if line and line[0] != " "}
    assert rows["k"][0] == "10" and "Neighbours" in rows["k"][1]
    assert rows["pretrained"][0] == "None" and "msrl-plugin pretrain" in rows["pretrained"][1]
    assert rows["hidden_dim"][0] == "512"
    for bad in ("``", ":class:", ":func:", "`~"):
        assert bad not in text
    from msrl_plugin.model_docs import parameter_docs
    from msrl_plugin.registry import get_aggregator_class, list_aggregators

    for name in list_aggregators():  # every built-in parameter has a description
        assert all(d.description for d in parameter_docs(get_aggregator_class(name))), name


def test_plain_text_strips_rst():
    from msrl_plugin.model_docs import documented_parameters, plain_text

    assert plain_text("see :class:`~msrl_plugin.cohort.Cohort` and ``k=10``, *not* **this**") == (
        "see Cohort and k=10, not this")
    doc = """Summary.

    Parameters
    ----------
    a, b : int
        First sentence. Second one.
    c
        Uses ``x``.

    Returns
    -------
    int
        Not a parameter.
    """
    assert documented_parameters(doc) == {"a": ("", "First sentence"), "b": ("", "First sentence"),
                                          "c": ("", "Uses x")}
    grouped = doc.replace("Returns\n    -------", "Stage 1 parameters\n    ------------------")
    assert documented_parameters(grouped)["int"] == ("Stage 1", "Not a parameter")


def test_unknown_model_for_params_is_one_error(capsys):
    assert run(["list-models", "--params", "nope"]) == 2
    assert "unknown model 'nope'" in one_error_line(capsys)


def test_click_checks_apply_to_config_values(tmp_path):
    """The value from the file is converted by click exactly as the flag would be."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("k: '3'\nseed: 7\n")
    ctx = cli.commands["train"].make_context("train", ["--config", str(cfg), "--features", "x"])
    assert ctx.params["k"] == 3 and ctx.params["seed"] == 7
    with pytest.raises(click.UsageError):
        cli.commands["predict"].make_context("predict", ["--features", "x"])  # --model-path still required


def test_evaluate_out_keeps_slide_ids(trained, cohort, tmp_path, capsys):
    out = tmp_path / "eval.csv"
    assert run(["evaluate", "--ckpt_path", str(trained / "s_0_checkpoint.pt"), "--data-root-dir",
                str(cohort["job_dir"]), "--clinical", str(cohort["clinical"]), "--out", str(out)]) == 0
    assert "c_index" in capsys.readouterr().out
    frame = pd.read_csv(out)
    assert list(frame.columns[:3]) == ["case_id", "slide_id", "risk"] and (frame["case_id"] != frame["slide_id"]).all()
