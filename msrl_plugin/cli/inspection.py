"""``msrl-plugin list-models`` and ``msrl-plugin validate`` (registered by :mod:`msrl_plugin.cli.main`)."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from .config import with_config
from .options import with_threads


@click.command("list-models")
@click.option("--params", "params_of", metavar="NAME", multiple=True,
              help="Show this model's parameters with their defaults (repeatable).")
@with_config
@with_threads
def list_models(params_of):
    """List registered aggregators (built-in and from plugins), or one model's parameters."""
    from ..model_docs import format_parameters, summary_line
    from ..registry import get_aggregator_class, list_aggregators

    if params_of:
        click.echo("\n\n".join(format_parameters(name, get_aggregator_class(name)) for name in params_of))
        return
    for name in list_aggregators():
        click.echo(f"{name:<26} {summary_line(get_aggregator_class(name))}")
    click.echo("\nparameters and defaults: msrl-plugin list-models --params NAME")


@click.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--patch-encoder", "--patch_encoder", "patch_encoder", help="Only this patch encoder's features.")
@click.option("--mag", type=float, help="Only this TRIDENT magnification.")
@click.option("--patch-size", "--patch_size", "patch_size", type=int, help="Only this TRIDENT patch size.")
@click.option("--overlap", type=int, help="Only this TRIDENT overlap.")
@with_config
@with_threads
def validate(directory, patch_encoder, mag, patch_size, overlap):
    """Check every bag of every feature folder at or below DIRECTORY: one table per patch encoder and job.

    Exit code 0 when at least one folder is usable.
    """
    from ..adapters.validate import format_reports, validate_tree

    reports = validate_tree(directory, patch_encoder, mag, patch_size, overlap)
    click.echo(format_reports(reports, directory))
    sys.exit(0 if any(r.usable for r in reports) else 1)
