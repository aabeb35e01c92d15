"""What the command modules share: the cohort and model option bundles, model parameters from flags, and the
cohort loader."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import yaml

from ..errors import MSRLPluginError
from .options import DEFAULT_SEED, model_flag


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
                          "(faster steps on CPUs with AVX512-BF16 or AMX; see benchmarks/README.md); auto = "
                          "bf16 where the CPU/GPU runs it natively, else fp32 [auto]."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def parse_value(raw: str) -> Any:
    """A flag value as a number when it reads as one (YAML 1.1 would keep ``1e-4`` a string), else YAML."""
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return yaml.safe_load(raw)


def model_params(model: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Hyper-parameters for ``model`` from the flags (only those the model accepts) and ``--param``."""
    from ..registry import create_aggregator, get_aggregator_class
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
    from ..adapters.loader import load_cohort

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


def pretrained_options(fn):
    opts = [
        click.option("--pretrained", type=click.Path(path_type=Path), default=None,
                     help="A stage-1 checkpoint from `msrl-plugin pretrain` for every MSRL model of the run "
                          "(instead of pre-training inside each fold); genes are matched by name."),
        click.option("--allow-pool-overlap", is_flag=True,
                     help="Keep folds whose test cases are in the --pretrained pool (refused without it: stage 1 "
                          "saw them); the run's config records it."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def with_pretrained(params: dict[str, dict[str, Any]], path: Path | None) -> dict[str, dict[str, Any]]:
    """``params`` (model -> its parameters) with ``pretrained=path`` for every model that has a stage 1."""
    if path is None:
        return params
    from ..registry import get_aggregator_class

    takers = [m for m in params if getattr(get_aggregator_class(m), "use_pretraining", False)]  # not random_gsl
    if not takers:
        raise MSRLPluginError(f"--pretrained is for the MSRL models; {', '.join(params)} has no stage 1",
                              fix="drop --pretrained, or add an msrl model")
    for model in takers:
        given = params[model].get("pretrained")
        if given is not None and str(given) != str(path):
            raise MSRLPluginError(f"--pretrained {path} and {model}'s pretrained={given} disagree",
                                  fix="give the stage-1 file once")
        params[model]["pretrained"] = str(path)
    return params
