"""Shared by the subcommands: ``--threads``, hyper-parameter flags whose help shows each model's own
default (read from the registered signatures when help is drawn, so it never goes stale), and warnings
shown once per run."""
from __future__ import annotations

import inspect
import re

import click

#: the one default seed of every command (CLAM's ``--seed 1``)
DEFAULT_SEED = 1
#: models whose defaults a flag's help names; the rest are one ``list-models --params NAME`` away
HELP_MODELS = ("abmil", "msrl")


def model_default(model: str, param: str):
    """The default of ``param`` in ``model``'s ``__init__`` (``inspect.Parameter.empty`` if it has none)."""
    from ..registry import get_aggregator_class

    signature = inspect.signature(get_aggregator_class(model).__init__)
    return signature.parameters[param].default if param in signature.parameters else inspect.Parameter.empty


def model_defaults_text(param: str, models: tuple[str, ...] = HELP_MODELS) -> str:
    """``"abmil 0.0002 / msrl 0.001"``: each listed model's own default of ``param``."""
    parts = [f"{m} {model_default(m, param)}" for m in models
             if model_default(m, param) is not inspect.Parameter.empty]
    return " / ".join(parts)


class ModelDefaultOption(click.Option):
    """A hyper-parameter flag without a default of its own: the model's own default applies, and help says
    which it is (``default: the model's own, abmil 0.0002 / msrl 0.001``)."""

    def __init__(self, *args, model_param: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_param = model_param

    def get_help_record(self, ctx: click.Context):
        if "the model's own" not in (self.help or ""):
            own = model_defaults_text(self.model_param)
            self.help = f"{self.help or ''} [default: the model's own; {own}]".strip()
        return super().get_help_record(ctx)


def model_flag(*decls: str, model_param: str, **kwargs):
    """``click.option`` for a hyper-parameter that falls back to the model's own default."""
    return click.option(*decls, cls=ModelDefaultOption, model_param=model_param, **kwargs)


def _set_threads(ctx: click.Context, param: click.Parameter, value: int | None) -> None:
    if value:
        ctx.meta["threads"] = value  # commands that pick a thread count themselves (demo) read it here
        import torch

        torch.set_num_threads(value)


THREADS_HELP = "CPU threads for torch (default: torch's choice; 1 is often faster on a shared machine)."


def with_threads(fn):
    """``--threads N`` after the subcommand (it is also accepted before it, on the group)."""
    return click.option("--threads", type=click.IntRange(min=1), default=None, expose_value=False,
                        callback=_set_threads, help=THREADS_HELP)(fn)


class WarnOnce:
    """A ``warnings.showwarning`` that shows each warning once per run: the same place and text, numbers
    aside (one per fold or seed), is not repeated, even after ``catch_warnings`` reset Python's registry."""

    def __init__(self, show):
        self.show = show
        self.seen: set[tuple] = set()

    def __call__(self, message, category, filename, lineno, file=None, line=None):
        key = (category, filename, lineno, re.sub(r"\d+(?:\.\d+)?", "#", str(message)))
        if key not in self.seen:
            self.seen.add(key)
            self.show(message, category, filename, lineno, file, line)
