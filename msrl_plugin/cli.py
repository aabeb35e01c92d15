"""``msrl-plugin``: train, predict and evaluate slide aggregators on TRIDENT/CLAM feature folders.

Data path: files -> adapters -> Cohort -> aggregator.fit/predict -> predictions -> metrics -> files.
Flags use the project's spellings; CLAM's spellings are accepted as aliases.
"""
from __future__ import annotations

import signal
import sys
import threading
import traceback
import warnings
from pathlib import Path
from typing import Any

import click
import yaml

from .cli_config import with_config
from .cli_options import DEFAULT_SEED, THREADS_HELP, WarnOnce, model_flag, with_threads
from .errors import MSRLPluginError
from .record_options import check_log_data, log_data_option, prediction_record, provenance_options, results_record


# -- shared option bundles ------------------------------------------------------------------------
def cohort_options(fn):
    opts = [
        click.option("--features", "--data_root_dir", "--data-root-dir", "features",
                     type=click.Path(path_type=Path),
                     help="TRIDENT job dir or features_<enc>/ folder, CLAM feature dir (h5_files/, pt_files/), "
                          "or a folder of .h5/.pt bags."),
        click.option("--clinical", "--csv_path", "clinical", type=click.Path(path_type=Path),
                     help="Clinical table (CSV/TSV): case_id, slide_id and survival_months + censorship, or label."),
        click.option("--genomics", "--omics", "genomics", type=click.Path(path_type=Path),
                     help="Genomic table (CSV/TSV) keyed by case_id; cases without a row have missing genomics."),
        click.option("--task", type=click.Choice(["survival", "classification"]), default="survival",
                     show_default=True),
        click.option("--patch-encoder", "--patch_encoder", "patch_encoder",
                     help="TRIDENT patch encoder name (picks features_<enc>/ in a job dir)."),
        click.option("--mag", type=float, help="TRIDENT magnification (picks <mag>x_... in a job dir)."),
        click.option("--patch-size", "--patch_size", "patch_size", type=int,
                     help="TRIDENT patch size (picks ..._<ps>px_...)."),
        click.option("--overlap", type=int, help="TRIDENT overlap (picks ..._<ov>px_overlap)."),
        click.option("--case-col", default="case_id", show_default=True),
        click.option("--slide-col", default="slide_id", show_default=True),
        click.option("--genomics-case-col", default=None, help="Case id column of the genomic table."),
        click.option("--time-col", default="survival_months", show_default=True),
        click.option("--censorship-col", default="censorship", show_default=True,
                     help="1 = censored (SurvPath/MCAT convention)."),
        click.option("--event-col", default=None, help="Use an event column (1 = event) instead of censorship."),
        click.option("--label-col", "--label_col", "label_col", default="label", show_default=True),
        click.option("--on-empty", type=click.Choice(["error", "skip"]), default="error", show_default=True,
                     help="What to do with empty (0-patch) bags."),
        click.option("--on-missing-bag", type=click.Choice(["error", "skip"]), default="error",
                     show_default=True, help="What to do with clinical rows that have no bag."),
        click.option("--cache-dir", type=click.Path(path_type=Path),
                     help="Packed feature cache: bags are copied once into one file and read back fast, one bag in "
                          "memory at a time; changed bag files are re-read on their own."),
        click.option("--cache-float16", is_flag=True, help="Store the packed cache as float16 (half the disk)."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def model_options(fn):
    opts = [
        click.option("--model", "--model_type", "model", default="abmil", show_default=True,
                     help="Registered aggregator (see list-models)."),
        model_flag("--max-epochs", "--max_epochs", "max_epochs", type=int, model_param="max_epochs",
                   help="Training epochs (last epoch kept)."),
        model_flag("--lr", type=float, model_param="lr", help="Adam learning rate."),
        model_flag("--reg", type=float, model_param="reg", help="Weight decay."),
        model_flag("--drop-out", "--drop_out", "dropout", type=float, model_param="dropout",
                   help="Dropout rate."),
        click.option("--alpha-surv", "--alpha_surv", "alpha_surv", type=float),
        click.option("--batch-size", "--batch_size", "batch_size", type=int),
        click.option("--param", "extra_params", multiple=True, metavar="KEY=VALUE",
                     help="Any other model hyper-parameter, e.g. --param k=10 (repeatable)."),
        click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
        click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default=None,
                     help="Training precision: bf16 runs the patch encoders under bfloat16 autocast "
                          "(~2.5x faster steps on CPUs with AVX512-BF16 and on recent GPUs); auto = bf16 "
                          "where the CPU/GPU runs it natively, else fp32 [auto]."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def model_params(model: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Hyper-parameters for ``model`` from the flags (only those the model accepts) and ``--param``."""
    from .cli_compare import parse_value
    from .registry import create_aggregator, get_aggregator_class

    valid = set(get_aggregator_class(model)._get_param_names())
    params = {k: kwargs[k] for k in ("max_epochs", "lr", "reg", "dropout", "alpha_surv", "batch_size", "seed",
                                     "device", "precision") if kwargs.get(k) is not None and k in valid}
    if kwargs.get("precision") == "bf16" and "precision" not in valid:
        raise MSRLPluginError(f"model {model!r} trains in float32 only (no --precision bf16)",
                              fix="drop --precision, or use abmil or an msrl model")
    for item in kwargs.get("extra_params") or ():
        key, sep, raw = item.partition("=")
        if not sep:
            raise MSRLPluginError(f"--param {item!r} is not KEY=VALUE")
        if key not in valid:
            raise MSRLPluginError(f"model {model!r} has no parameter {key!r}",
                                  fix=f"valid: {', '.join(sorted(valid))}")
        try:
            params[key] = parse_value(raw)  # 1e6 a number, as YAML 1.1 would not read it
        except yaml.YAMLError:
            params[key] = raw  # the value check below names it
    create_aggregator(model, **params)  # every value checked (scikit-learn style) before any work
    return params


def load_cohort_from_flags(kw: dict[str, Any]):
    from .adapters.loader import load_cohort

    require(kw, "features", "clinical")
    return load_cohort(kw["features"], kw["clinical"], kw["task"], kw.get("genomics"),
                       patch_encoder=kw.get("patch_encoder"), mag=kw["mag"], patch_size=kw["patch_size"],
                       overlap=kw["overlap"], on_empty=kw["on_empty"], on_missing_bag=kw["on_missing_bag"],
                       genomics_case_col=kw["genomics_case_col"], case_col=kw["case_col"],
                       slide_col=kw["slide_col"], time_col=kw["time_col"], censorship_col=kw["censorship_col"],
                       event_col=kw["event_col"], label_col=kw["label_col"], cache_dir=kw["cache_dir"],
                       cache_float16=kw["cache_float16"])


def require(kw: dict[str, Any], *names: str) -> None:
    """Flags that must come from the command line or the --config file."""
    missing = [f"--{n.replace('_', '-')}" for n in names if kw.get(n) is None]
    if missing:
        raise MSRLPluginError(f"missing {', '.join(missing)} (give it as a flag or in --config)")


def echo(msg: str = "") -> None:
    if not click.get_current_context().find_root().obj.get("quiet"):
        click.echo(msg)


# -- commands ---------------------------------------------------------------------------------
@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@click.option("--quiet", "-q", is_flag=True, help="Only print results and errors.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help=THREADS_HELP)
@click.version_option(package_name="msrl-plugin")
@click.pass_context
def cli(ctx, debug, quiet, threads):
    """MSRL and ABMIL slide aggregators for TRIDENT/CLAM patch features."""
    ctx.obj = {"debug": debug, "quiet": quiet}
    if threads:
        import torch

        torch.set_num_threads(threads)


@cli.command()
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
@provenance_options
@log_data_option
@with_config
@with_threads
def train(**kw):
    """Cross-validate a model and write a CLAM-style results folder."""
    import pandas as pd

    from .adapters.results import ResultsFolder
    from .aggregators.base import resolve_device
    from .distributed import init_from_torchrun, is_main
    from .experiment import SELECTION_RULE, check_fold_inputs, cross_validate
    from .splits import kfold_splits, select_folds

    init_from_torchrun()

    params = model_params(kw["model"], kw)
    check_log_data(kw["log_data"], kw["devices"])
    cohort = load_cohort_from_flags(kw)
    echo(f"{cohort}")
    check_model_inputs(kw["model"], cohort)
    if not kw["split_dir"] and (not isinstance(kw["k"], int) or isinstance(kw["k"], bool) or kw["k"] < 2):
        raise MSRLPluginError(f"--k {kw['k']!r} is not a number of folds", fix="pass --k 5 (an integer >= 2)")
    all_folds = split_dir_folds(cohort, kw["split_dir"]) if kw["split_dir"] else kfold_splits(cohort, kw["k"],
                                                                                                 kw["seed"])
    folds = select_folds(all_folds, kw["k_start"], kw["k_end"])
    check_fold_inputs(kw["model"], params, cohort, folds)
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

        from .distributed import launch
        from .experiment import CVResult, distributed_cross_validate

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
    from .aggregators.base import resolve_device
    from .registry import create_aggregator

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
    from .registry import get_aggregator_class

    if get_aggregator_class(model).uses_genomics and not cohort.has_genomics.any():
        raise MSRLPluginError(f"model {model!r} needs genomics but no case has a genomics row",
                              fix="pass --genomics TABLE (rows keyed by case_id), or use --model abmil")


def split_dir_folds(cohort, split_dir: Path):
    from .adapters.clam import find_split_files, read_split_file
    from .splits import folds_from_split_tables

    if not split_dir.is_dir() and (Path("splits") / split_dir).is_dir():  # CLAM resolves it under splits/
        split_dir = Path("splits") / split_dir
    files = find_split_files(split_dir)
    return folds_from_split_tables(cohort, [read_split_file(f) for f in files], [str(f) for f in files])


def format_summary(result) -> str:
    from .stats import format_mean_sd

    table = result.mean_sd()
    n = len(result.fold_metrics)
    lines = [f"{result.model}: mean +- sd over {n} folds" if n > 1 else f"{result.model}: one fold"]
    for name, row in table.iterrows():
        if not name.endswith("seconds"):
            lines.append(f"  {name:<24} {format_mean_sd(row['mean'], row['sd'], digits=4)}")
    return "\n".join(lines)


@cli.command()
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
    from .adapters.loader import load_unlabelled_cohort
    from .aggregators.base import Aggregator
    from .atomic import atomic_paths, check_name_length, csv_safe

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


@cli.command()
@click.option("--model-path", "--ckpt_path", "model_path", required=True, type=click.Path(path_type=Path))
@cohort_options
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Also write per-case predictions.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
@with_config
@with_threads
def evaluate(**kw):
    """Score a saved model on a labelled cohort (c-index or AUC)."""
    from .aggregators.base import Aggregator
    from .atomic import write_csv

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


def _warning_line(message, category, filename, lineno, line=None) -> str:
    """A warning as one ``warning: ...`` line (Python's default format adds the source line)."""
    return f"warning: {message}\n"


def _close_progress_bars() -> None:
    """An error line never shares a terminal line with a progress bar that the error interrupted."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _terminate(signum, frame) -> None:
    """SIGTERM unwinds like Ctrl-C, so every atomic write removes its temporary file before the process ends."""
    raise SystemExit(143)


def main(argv: list[str] | None = None) -> None:
    """Entry point: project errors become one line on stderr and exit code 2 (``--debug`` for tracebacks)."""
    args = sys.argv[1:] if argv is None else argv
    from .provenance import set_command_line

    set_command_line(["msrl-plugin", *args])  # what provenance.json records
    if "--debug" not in args:
        warnings.formatwarning = _warning_line
    shown = warnings.showwarning  # a fresh record per run (tests call main() many times)
    warnings.showwarning = WarnOnce(shown.show if isinstance(shown, WarnOnce) else shown)
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if on_main_thread else None
    try:
        _run(args)
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _run(args: list[str]) -> None:
    try:
        cli.main(args=args, standalone_mode=False, prog_name="msrl-plugin")
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:  # a bad flag value: one line too, with where to look
        hint = ""
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            hint = f" (see: {exc.ctx.command_path} --help)"
        click.echo(f"error: {' '.join(exc.format_message().split())}{hint}", err=True)
        sys.exit(exc.exit_code)
    except MSRLPluginError as exc:
        if "--debug" in args:
            traceback.print_exc()
        _close_progress_bars()
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except SystemExit as exc:
        if exc.code == 143:
            click.echo("terminated", err=True)
        raise
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


# commands defined in their own modules register themselves on `cli`
from . import cli_compare, cli_inspect, cli_msrl, cli_toolkit  # noqa: E402,F401

if __name__ == "__main__":
    main()
