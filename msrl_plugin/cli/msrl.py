"""``msrl-plugin pretrain`` (MSRL's stage 1 on its own) and ``msrl-plugin demo``."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import MSRLPluginError
from .common import cohort_options, echo, load_cohort_from_flags, model_options, model_params
from .config import with_config
from .options import DEFAULT_SEED, with_threads
from .records import allow_changed_option, check_log_data, log_data_option, pretrain_record, provenance_options


@click.command()
@cohort_options
@model_options
@click.option("--out", type=click.Path(path_type=Path), default=Path("gsl_pretrained.pt"), show_default=True)
@provenance_options
@log_data_option
@with_config
@with_threads
def pretrain(**kw):
    """Stage 1 of MSRL: self-supervised graph-structure pre-training on a (training) cohort.

    Use the result with `train --model msrl --param pretrained=FILE`. Pre-train only on cases that are
    not in your evaluation's test folds (train's default pre-trains inside each fold instead).
    """
    from ..pretrain_io import save_pretrained

    if not kw["model"].startswith("msrl"):
        raise MSRLPluginError(f"pretrain is for the MSRL models, not {kw['model']!r}", fix="pass --model msrl")
    params = model_params(kw["model"], kw)
    check_log_data(kw["log_data"])
    cohort = load_cohort_from_flags(kw)
    echo(f"{cohort}")
    from ..registry import create_aggregator
    from ..training_log import EpochLog, attached

    model = create_aggregator(kw["model"], **params)
    recorded = kw["out"].with_name(kw["out"].name + ".provenance.json")
    record = pretrain_record(kw, cohort, model, recorded)
    data = model._prepare_fit(cohort)
    log = EpochLog(kw["out"].with_name(kw["out"].name + ".tensorboard")) if kw["log_data"] else None
    with attached(model, log):
        pre = model.pretrain(data, progress=not click.get_current_context().find_root().obj["quiet"])
    path = save_pretrained(kw["out"], pre, model.feature_dim_, model.genomics_columns_, cohort.case_ids,
                           model.get_params(), model.pretrain_history_)
    record.write(recorded, finished=True)
    from ..pretrain_io import write_pretrain_report

    for line in write_pretrain_report(path, model.pretrain_history_):
        click.echo(line)
    click.echo(f"saved {path}")


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("msrl_demo"), show_default=True)
@click.option("--models", default="abmil,msrl", show_default=True, help="Comma-separated models to train.")
@click.option("--quick", is_flag=True, help="A smoke test in under a minute: 3 folds, 3 epochs, 3 pre-training "
                                            "epochs, 64 patches (the flags below still win).")
@click.option("--k", type=int, default=None, help="Folds [5; --quick 3].")
@click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True)
@click.option("--max-epochs", "--max_epochs", "max_epochs", type=int, default=None,
              help="Training epochs of every model [20; --quick 3].")
@click.option("--pretrain-epochs", type=int, default=None,
              help="MSRL's GSL pre-training epochs in each fold [20; --quick 3].")
@click.option("--max-patches", type=int, default=None,
              help="Patches sampled per bag per training step, every model [128; --quick 64].")
@allow_changed_option
@with_config
@with_threads
def demo(out, models, quick, k, seed, max_epochs, pretrain_epochs, max_patches, allow_changed_inputs):
    """Generate the small semi-synthetic demo cohort (TRIDENT layout) and cross-validate on it.

    Every model gets the same budget. Torch threads: --threads, else OMP_NUM_THREADS, else the idle cores
    (available cores minus the machine's load).
    """
    import dataclasses

    import torch

    from ..demo import DemoBudget, demo_threads, run_demo

    ctx = click.get_current_context()
    root = ctx.find_root()
    threads = demo_threads(ctx.meta.get("threads") or root.params.get("threads"))
    torch.set_num_threads(threads)
    base = DemoBudget.quick() if quick else DemoBudget()
    given = {"k": k, "max_epochs": max_epochs, "pretrain_epochs": pretrain_epochs, "max_patches": max_patches}
    budget = dataclasses.replace(base, **{key: v for key, v in given.items() if v is not None})

    def say(msg: str) -> None:  # flushed, so a redirected log shows each stage as it starts
        echo(msg)
        sys.stdout.flush()

    say(f"{threads} torch thread(s)")
    run_demo(out, [m.strip() for m in models.split(",") if m.strip()], budget, seed, log=say,
             progress=not root.obj.get("quiet"), allow_changed_inputs=allow_changed_inputs)
