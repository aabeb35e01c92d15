"""``msrl-plugin train``, ``predict`` and ``evaluate``: cross-validation into a CLAM-style results folder, and a
saved model applied to new cases."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import MSRLPluginError
from .common import (
    cohort_options,
    echo,
    load_cohort_from_flags,
    model_options,
    model_params,
    pretrained_options,
    require,
    with_pretrained,
)
from .config import with_config
from .options import with_threads
from .records import check_log_data, log_data_option, prediction_record, provenance_options, results_record


@click.command()
@cohort_options
@model_options
@click.option("--k", type=int, default=5, show_default=True, help="Number of folds (ignored with --split-dir).")
@click.option("--k-start", "--k_start", "k_start", type=int, default=-1, show_default=True,
              help="First fold to run (0-based; -1 = the first).")
@click.option("--k-end", "--k_end", "k_end", type=int, default=-1, show_default=True,
              help="Stop before this fold (-1 = after the last), as CLAM's --k_end.")
@click.option("--split-dir", "--split_dir", "--splits_dir", "split_dir", type=click.Path(path_type=Path),
              help="Folder of CLAM/SurvPath splits_<k>.csv files (instead of --k random folds).")
@click.option("--results-dir", "--results_dir", "--out", "results_dir", type=click.Path(path_type=Path),
              default=Path("results"), show_default=True,
              help="Output folder; the run goes to <results-dir>/<exp-code>_s<seed>/.")
@click.option("--exp-code", "--exp_code", "exp_code", default=None, help="Experiment name (default: the model).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in the same results folder.")
@click.option("--devices", type=int, default=1, show_default=True,
              help="Data-parallel processes (gloo on CPU, nccl on GPU); torchrun launches work too.")
@pretrained_options
@provenance_options
@log_data_option
@with_config
@with_threads
def train(**kw):
    """Cross-validate a model and write a CLAM-style results folder."""
    import pandas as pd

    from ..adapters.results import ResultsFolder
    from ..aggregators.base import resolve_device
    from ..distributed import init_from_torchrun, is_main
    from ..evaluation.crossval import SELECTION_RULE, check_fold_inputs, cross_validate
    from ..evaluation.splits import kfold_splits, select_folds

    init_from_torchrun()

    params = with_pretrained({kw["model"]: model_params(kw["model"], kw)}, kw["pretrained"])[kw["model"]]
    check_log_data(kw["log_data"], kw["devices"])
    cohort = load_cohort_from_flags(kw)
    echo(f"{cohort}")
    check_model_inputs(kw["model"], cohort)
    if not kw["split_dir"] and (not isinstance(kw["k"], int) or isinstance(kw["k"], bool) or kw["k"] < 2):
        raise MSRLPluginError(f"--k {kw['k']!r} is not a number of folds", fix="pass --k 5 (an integer >= 2)")
    all_folds = split_dir_folds(cohort, kw["split_dir"]) if kw["split_dir"] else kfold_splits(cohort, kw["k"],
                                                                                                 kw["seed"])
    folds = select_folds(all_folds, kw["k_start"], kw["k_end"])
    check_fold_inputs(kw["model"], params, cohort, folds, kw["allow_pool_overlap"])
    sink = ResultsFolder(kw["results_dir"], kw["exp_code"] or kw["model"], kw["seed"], cohort, kw["resume"],
                         folds=folds, n_folds=len(all_folds))
    record = results_record("train", kw, cohort, sink, {kw["model"]: params})
    if kw["resume"]:
        sink.check_resumable(folds, kw["model"], params)
    sink.write_config({**run_settings(kw, params, all_folds, folds), "selection_rule": SELECTION_RULE})
    if is_main():
        record.write(sink.provenance_path())
    quiet = click.get_current_context().find_root().obj["quiet"]
    if kw["devices"] > 1:
        import os

        from ..distributed import launch
        from ..evaluation.crossval import CVResult, distributed_cross_validate

        summary_file = sink.path / f".devices_summary.{os.getpid()}.csv"  # fold jobs may share the folder
        launch(kw["devices"], distributed_cross_validate, cohort, folds, kw["model"], params, sink, quiet,
               summary_file, device=str(resolve_device(kw["device"])))
        result = CVResult(kw["model"], pd.read_csv(summary_file))
        summary_file.unlink()
    else:
        result = cross_validate(cohort, folds, kw["model"], params, sink, progress=not quiet, log=echo)
    if is_main():
        record.write(sink.provenance_path(), finished=True)
        click.echo(format_summary(result))
        click.echo(f"results: {sink.path}")


MODEL_FLAGS = ("max_epochs", "lr", "reg", "dropout", "alpha_surv", "batch_size", "precision")


def run_settings(kw: dict[str, Any], params: dict[str, Any], all_folds, folds) -> dict[str, Any]:
    """What a run actually used: the flags, the model's fully resolved hyper-parameters (its own defaults
    filled in), the real fold count and range, every split file (or the k-fold draw) and the device."""
    from ..aggregators.base import resolve_device
    from ..registry import create_aggregator

    resolved = create_aggregator(kw["model"], **params).get_params()
    settings = {k: v for k, v in kw.items() if k != "extra_params"}
    settings.update({flag: resolved.get(flag) for flag in MODEL_FLAGS})
    settings.update(model_params=resolved, device=str(resolve_device(kw["device"])), k=len(all_folds),
                    exp_code=kw["exp_code"] or kw["model"],
                    k_start=folds[0].k if folds else None, k_end=folds[-1].k + 1 if folds else None,
                    folds=[f.k for f in folds], fold_sources=list(dict.fromkeys(f.source for f in all_folds)))
    return settings


def check_model_inputs(model: str, cohort) -> None:
    """Fail before anything is written when the model needs genomics the cohort does not have."""
    from ..registry import get_aggregator_class

    if get_aggregator_class(model).uses_genomics and not cohort.has_genomics.any():
        raise MSRLPluginError(f"model {model!r} needs genomics but no case has a genomics row",
                              fix="pass --genomics TABLE (rows keyed by case_id), or use --model abmil")


def split_dir_folds(cohort, split_dir: Path):
    from ..adapters.clam import find_split_files, read_split_file
    from ..evaluation.splits import folds_from_split_tables

    if not split_dir.is_dir() and (Path("splits") / split_dir).is_dir():  # CLAM resolves it under splits/
        split_dir = Path("splits") / split_dir
    files = find_split_files(split_dir)
    return folds_from_split_tables(cohort, [read_split_file(f) for f in files], [str(f) for f in files])


def format_summary(result) -> str:
    from ..evaluation.stats import format_mean_sd

    table = result.mean_sd()
    n = len(result.fold_metrics)
    lines = [f"{result.model}: mean +- sd over {n} folds" if n > 1 else f"{result.model}: one fold"]
    for name, row in table.iterrows():
        if not name.endswith("seconds"):
            lines.append(f"  {name:<24} {format_mean_sd(row['mean'], row['sd'], digits=4)}")
    return "\n".join(lines)


@click.command()
@click.option("--model-path", "--ckpt_path", "model_path", required=True, type=click.Path(path_type=Path),
              help="A checkpoint written by train (s_<k>_checkpoint.pt).")
@cohort_options
@click.option("--out", type=click.Path(path_type=Path), default=Path("predictions.csv"), show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
@provenance_options
@with_config
@with_threads
def predict(**kw):
    """Predict new cases with a saved model (WSI only for WSI-inference models)."""
    from ..adapters.loader import load_unlabelled_cohort
    from ..aggregators.base import Aggregator
    from ..atomic import atomic_paths, check_name_length, csv_safe

    require(kw, "features")
    bins_path = kw["out"].with_name(f"{kw['out'].stem}_survival_bins.csv")
    model = Aggregator.load(kw["model_path"], device=kw["device"])
    for path in (kw["out"], bins_path) if model.task_.name == "survival" else (kw["out"],):
        check_name_length(path)  # before the work: the file system would refuse it only at the end
    cohort = load_unlabelled_cohort(kw["features"], model.task_.name, kw["clinical"], kw["genomics"],
                                    patch_encoder=kw["patch_encoder"], mag=kw["mag"], patch_size=kw["patch_size"],
                                    overlap=kw["overlap"], case_col=kw["case_col"], slide_col=kw["slide_col"],
                                    on_empty=kw["on_empty"], cache_dir=kw["cache_dir"],
                                    cache_float16=kw["cache_float16"])
    provenance_path = kw["out"].with_name(f"{kw['out'].stem}_provenance.json")
    record = prediction_record(kw, cohort, model, provenance_path)
    predictions = model.predict(cohort)
    predictions.insert(0, "slide_id", [";".join(cohort.slides[c]) for c in predictions.index])
    bins = survival_bins_table(model)
    outputs = [(kw["out"], ".csv")] + ([(bins_path, ".csv")] if bins is not None else [])
    with atomic_paths(*outputs) as tmps:  # predictions and their bin edges: both files or neither
        csv_safe(predictions).to_csv(tmps[0], index=True)
        if bins is not None:
            csv_safe(bins).to_csv(tmps[1], index=False)
    record.write(provenance_path, finished=True)
    echo(f"{len(predictions)} predictions -> {kw['out']}" + (f" (bin edges: {bins_path})" if bins is not None else ""))


def survival_bins_table(model):
    """The time interval of each ``survival_bin<j>`` column (None for classification models):
    ``survival_bin<j>`` is the probability of surviving past ``end`` (training-set time units)."""
    import pandas as pd

    edges = getattr(model.task_, "edges", None)
    if edges is None:
        return None
    return pd.DataFrame({"column": [f"survival_bin{j}" for j in range(len(edges) - 1)],
                         "start": list(edges[:-1]), "end": list(edges[1:])})


@click.command()
@click.option("--model-path", "--ckpt_path", "model_path", required=True, type=click.Path(path_type=Path))
@cohort_options
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Also write per-case predictions.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
@with_config
@with_threads
def evaluate(**kw):
    """Score a saved model on a labelled cohort (c-index or AUC)."""
    from ..aggregators.base import Aggregator
    from ..atomic import write_csv

    model = Aggregator.load(kw["model_path"], device=kw["device"])
    if model.task_.name != kw["task"]:
        raise MSRLPluginError(f"the model was trained for {model.task_.name}; pass --task {model.task_.name}")
    cohort = load_cohort_from_flags(kw)
    predictions = model.predict(cohort)
    metrics = model.evaluate(cohort, predictions)
    if kw["out"]:
        predictions.insert(0, "slide_id", [";".join(cohort.slides[c]) for c in predictions.index])
        write_csv(kw["out"], predictions, index=True)
    for name, value in metrics.items():
        click.echo(f"{name}\t{value:.4f}")
