"""``msrl-plugin pretrain`` (MSRL's stage 1 on its own) and ``msrl-plugin demo``."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import MSRLPluginError
from .common import cohort_options, echo, model_options, model_params, require
from .config import with_config
from .options import DEFAULT_SEED, with_threads
from .records import allow_changed_option, check_log_data, log_data_option, pretrain_record, provenance_options


@click.command()
@cohort_options
@model_options
@click.option("--pool", type=click.Path(path_type=Path), default=None,
              help="Pool manifest (CSV/TSV, one cohort per row: features, genomics, clinical, name, "
                   "patch_encoder...; paths relative to it) instead of --features/--clinical/--genomics.")
@click.option("--score-holdout", type=click.FloatRange(0, 1, max_open=True), default=0.15, show_default=True,
              help="Share of the cases with genomics a first, scoring run holds out to measure WSI -> genomics "
                   "retrieval; the checkpoint is then trained on every case (0: no scoring run).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("gsl_pretrained.pt"), show_default=True)
@provenance_options
@log_data_option
@with_config
@with_threads
def pretrain(**kw):
    """Stage 1 of MSRL once, on a pool of one or more cohorts: self-supervised graph-structure pre-training on
    their slides and genomics (no labels are read; every case is trained on).

    Reuse it with `train`/`compare --pretrained FILE`: genes are matched by name, and a fold whose test cases
    are in the pool is refused. A clinical table, when given, only maps slides to cases.
    """
    from ..adapters.pool import PoolEntry, load_pool, read_pool_manifest
    from ..pretrain_io import save_pretrained, write_pretrain_report

    if not kw["model"].startswith("msrl"):
        raise MSRLPluginError(f"pretrain is for the MSRL models, not {kw['model']!r}", fix="pass --model msrl")
    params = model_params(kw["model"], kw)
    check_log_data(kw["log_data"])
    if kw["pool"] is not None:
        given = [f"--{n}" for n in ("features", "clinical", "genomics") if kw[n] is not None]
        if given:
            raise MSRLPluginError(f"--pool lists the cohorts; {', '.join(given)} cannot be added to it",
                                  fix="add the cohort as a row of the manifest")
        entries = read_pool_manifest(kw["pool"])
    else:
        require(kw, "features")
        entries = [PoolEntry(kw["features"].name, kw["features"], kw["genomics"], kw["clinical"],
                             kw["patch_encoder"], kw["mag"], kw["patch_size"], kw["overlap"], kw["case_col"],
                             kw["slide_col"])]
    cohort, summary = load_pool(entries, on_empty=kw["on_empty"], cache_dir=kw["cache_dir"],
                                cache_float16=kw["cache_float16"])
    echo("pool: " + ", ".join(f"{c['name']} ({c['cases']} cases, {c['with_genomics']} with genomics)"
                              for c in summary))
    from ..registry import create_aggregator
    from ..training_log import EpochLog, attached

    model = create_aggregator(kw["model"], **params)
    recorded = kw["out"].with_name(kw["out"].name + ".provenance.json")
    record = pretrain_record(kw, cohort, model, recorded, entries)
    log = EpochLog(kw["out"].with_name(kw["out"].name + ".tensorboard")) if kw["log_data"] else None
    with attached(model, log):
        pre = model.pretrain_pool(cohort, kw["score_holdout"],
                                  progress=not click.get_current_context().find_root().obj["quiet"])
    path = save_pretrained(kw["out"], pre, model.feature_dim_, model.genomics_columns_, cohort.case_ids,
                           model.get_params(), model.pretrain_history_, scaler=model.scaler_, pool=summary,
                           score=model.pretrain_score_)
    record.extra["pretrain_score"] = model.pretrain_score_
    record.write(recorded, finished=True)
    for line in write_pretrain_report(path, model.pretrain_history_, model.pretrain_score_):
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
