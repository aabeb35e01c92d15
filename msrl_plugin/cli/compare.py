"""``msrl-plugin compare`` and ``msrl-plugin make-cohort`` (registered by :mod:`msrl_plugin.cli.main`).

``compare``: every model on the same folds, seeds and epoch budget; a mean +- sd table with paired
statistics against a reference, CSVs and an offline HTML report. ``make-cohort``: the semi-synthetic
multimodal cohort of ``shared/benchmark.md`` on disk in TRIDENT layout with CLAM split files.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import yaml

from ..errors import MSRLPluginError
from ..provenance import FILE_NAME
from ..training_log import compare_logs
from .common import cohort_options, echo, load_cohort_from_flags, parse_value, pretrained_options, with_pretrained
from .config import with_config
from .options import DEFAULT_SEED, with_threads
from .records import check_log_data, compare_record, log_data_option, provenance_options


def parse_model_params(items: tuple[str, ...] | list[str], models: list[str]) -> dict[str, dict[str, Any]]:
    """``("msrl.k=5", "abmil.lr=1e-4")`` -> ``{"msrl": {"k": 5}, "abmil": {"lr": 0.0001}}`` (checked)."""
    from ..evaluation.variants import variant_of
    from ..registry import get_aggregator_class

    bases = {(variant_of(m) or (m,))[0] for m in models}
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        target, sep, raw = item.partition("=")
        model, dot, key = target.partition(".")
        if not sep or not dot or not key:
            raise MSRLPluginError(f"--param {item!r} is not MODEL.KEY=VALUE", fix="e.g. --param msrl.k=5")
        if model not in bases:
            raise MSRLPluginError(f"--param {item!r} names model {model!r}, which is not compared",
                                  fix=f"compared: {', '.join(sorted(bases))}")
        valid = set(get_aggregator_class(model)._get_param_names())
        if key not in valid:
            raise MSRLPluginError(f"model {model!r} has no parameter {key!r}",
                                  fix=f"valid: {', '.join(sorted(valid))}")
        out.setdefault(model, {})[key] = parse_value(raw)
    return out


def held_out_folds(cohort, split_dir: Path):
    """Folds from CLAM split files; a held-out set written as both ``val`` and ``test`` (as CLAM's
    ``main.py`` needs a val column) counts once, as the test set."""
    from ..adapters.clam import find_split_files, read_split_file
    from ..evaluation.splits import folds_from_split_tables

    files = find_split_files(split_dir)
    tables = []
    for f in files:
        table = read_split_file(f)
        if table.get("val") and set(table["val"]) == set(table.get("test", [])):
            table = {**table, "val": []}
        tables.append(table)
    return folds_from_split_tables(cohort, tables, [str(f) for f in files])


def run_compare(cohort, models: list[str], folds, seeds: list[int], params: dict[str, dict[str, Any]],
                out: Path, reference: str = "abmil", budget: dict[str, Any] | None = None,
                n_boot: int = 10_000, example_model: str | None = None, report: bool = True,
                progress: bool = False, log: Callable[[str], None] = print, time_unit: str | None = None,
                epoch_log: Callable[..., Any] | None = None, allow_pool_overlap: bool = False):
    """Compare, write the CSVs and (optionally) the HTML report; return ``(result, report path or None)``.

    ``time_unit``: the unit of the survival times, for the report's axes (e.g. ``months``); ``epoch_log``:
    per-fit TensorBoard logs (:func:`msrl_plugin.training_log.compare_logs`)."""
    from ..evaluation.compare import compare_models

    result = compare_models(cohort, models, folds, seeds, params, reference, budget, n_boot=n_boot,
                            out_dir=out, progress=progress, log=log, epoch_log=epoch_log,
                            allow_pool_overlap=allow_pool_overlap)
    path = None
    if report:
        from ..evaluation.report import write_report

        path = write_report(result, cohort, out, example_model, time_unit)
    return result, path


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise MSRLPluginError(f"{flag} {text!r} is not a comma-separated list of integers",
                              fix=f"e.g. {flag} 0,1,2") from None


@click.command()
@cohort_options
@click.option("--models", required=True, help="Comma-separated models, e.g. abmil,msrl,msrl:shuffled_buffer.")
@click.option("--reference", default="abmil", show_default=True, help="Model the others are paired against.")
@click.option("--k", type=int, default=5, show_default=True, help="Folds per seed (not with --split-dir).")
@click.option("--seeds", default=str(DEFAULT_SEED), show_default=True,
              help="Comma-separated seeds (model and fold seeds).")
@click.option("--split-dir", "--split_dir", "--splits_dir", "split_dir", type=click.Path(path_type=Path),
              help="CLAM/SurvPath splits_<k>.csv folder: the same folds for every seed.")
@click.option("--max-epochs", "--max_epochs", "max_epochs", type=int, default=20, show_default=True,
              help="Epoch budget shared by every model.")
@click.option("--param", "extra_params", multiple=True, metavar="MODEL.KEY=VALUE",
              help="A model's own hyper-parameter, e.g. --param msrl.pretrain_epochs=50 (repeatable).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--n-boot", type=int, default=10_000, show_default=True, help="Bootstrap resamples for CIs.")
@click.option("--example-model", default=None, help="Model whose attention and buffer the report shows.")
@click.option("--no-report", is_flag=True, help="Only write the CSVs.")
@click.option("--out", "--results-dir", "--results_dir", "out", required=True, type=click.Path(path_type=Path),
              help="Output folder.")
@pretrained_options
@provenance_options
@log_data_option
@with_config
@with_threads
def compare(**kw):
    """Compare models on identical folds, seeds and budget; paired statistics and an HTML report."""
    models = [m.strip() for m in kw["models"].split(",") if m.strip()]
    seeds = _int_list(kw["seeds"], "--seeds")
    params = parse_model_params(kw["extra_params"], models)
    from ..evaluation.variants import variant_of

    bases = list(dict.fromkeys((variant_of(m) or (m,))[0] for m in models))
    if kw["pretrained"] is not None:  # for every base model with a stage 1
        params.update(with_pretrained({b: params.get(b, {}) for b in bases}, kw["pretrained"]))
    if kw["device"] != "auto":
        for base in bases:
            params.setdefault(base, {})["device"] = kw["device"]
    check_log_data(kw["log_data"])
    cohort = load_cohort_from_flags(kw)
    echo(f"{cohort}")
    record = compare_record(kw, cohort, models, params)
    folds = held_out_folds(cohort, kw["split_dir"]) if kw["split_dir"] else kw["k"]
    quiet = click.get_current_context().find_root().obj.get("quiet")
    from ..evaluation.report import time_unit_from_column

    result, path = run_compare(cohort, models, folds, seeds, params, kw["out"], kw["reference"],
                               {"max_epochs": kw["max_epochs"]}, kw["n_boot"], kw["example_model"],
                               not kw["no_report"], progress=not quiet, log=echo,
                               time_unit=time_unit_from_column(kw["time_col"]),
                               epoch_log=compare_logs(kw["out"]) if kw["log_data"] else None,
                               allow_pool_overlap=kw["allow_pool_overlap"])
    for name, example in result.examples.items():
        if name in record.precision:
            record.record_model(name, example.model)
    record.write(kw["out"] / FILE_NAME, finished=True)
    click.echo(result.format())
    click.echo(f"results: {kw['out']}")
    if path is not None:
        click.echo(f"report: {path}")


@click.command("make-cohort")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML of generator knobs (shared/benchmark.md); with --tier, they override the tier.")
@click.option("--tier", type=click.Choice(["test", "benchmark"]), default=None,
              help="Size preset (default: test, or the full defaults when --config is given).")
@click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="One knob, e.g. --set rho=0.5.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output (TRIDENT job) folder.")
@with_threads
def make_cohort(config_path, tier, seed, overrides, out):
    """Generate a semi-synthetic multimodal cohort: TRIDENT features, clinical/genomics CSVs, CLAM splits."""
    from ..synth import CohortConfig, generate_cohort, write_cohort

    knobs = _yaml_knobs(config_path) if config_path is not None else {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise MSRLPluginError(f"--set {item!r} is not KEY=VALUE", fix="e.g. --set rho=0.5")
        knobs[key.strip()] = parse_value(raw)
    if tier is None and config_path is None:
        tier = "test"
    if tier is None:
        config = CohortConfig.from_dict(knobs, config_path)
    else:
        base = CohortConfig.test_tier() if tier == "test" else CohortConfig.benchmark_tier()
        config = CohortConfig.from_dict({**base.to_dict(), **knobs}, config_path)
    synth = generate_cohort(config, seed)
    paths = write_cohort(synth, out)
    truth = synth.truth
    click.echo(f"{synth}")
    for name in ("features_dir", "clinical", "genomics", "splits_dir", "config"):
        click.echo(f"  {name:<13} {paths[name]}")
    if truth.oracle_cindex is not None:
        metric = "c-index" if config.task == "survival" else "AUC"
        click.echo(f"  oracle {metric} (true risk) {truth.oracle_cindex:.4f}; "
                   f"WSI-only oracle {truth.wsi_oracle_cindex:.4f}")
    click.echo(f"next: msrl-plugin compare --features {paths['features_dir']} --clinical {paths['clinical']} "
               f"--genomics {paths['genomics']} --task {config.task} --split-dir {paths['splits_dir']} "
               f"--models abmil,msrl --out {Path(out) / 'compare'}")


def _yaml_knobs(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise MSRLPluginError(f"cannot read the cohort config ({exc})", path) from exc
    if not isinstance(loaded, dict):
        raise MSRLPluginError("the cohort config must be a mapping of knob: value", path)
    return loaded
