"""``msrl-plugin``: train, predict and evaluate slide aggregators on TRIDENT/CLAM feature folders.

Data path: files -> adapters -> Cohort -> aggregator.fit/predict -> predictions -> metrics -> files.
Flags use the project's spellings; CLAM's spellings are accepted as aliases. The commands live in their own
modules; this one builds the group, registers them and turns project errors into one ``error:`` line.
"""
from __future__ import annotations

import signal
import sys
import threading
import traceback
import warnings

import click

from ..errors import MSRLPluginError
from . import compare, inspection, msrl, toolkit, train
from .options import THREADS_HELP, WarnOnce


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




for command in (train.train, train.predict, train.evaluate, compare.compare, compare.make_cohort,
                inspection.list_models, inspection.validate, msrl.pretrain, msrl.demo, toolkit.encode_slides,
                toolkit.heatmap):
    cli.add_command(command)


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
    from ..provenance import set_command_line

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
