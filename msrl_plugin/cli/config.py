"""``--config file.yaml`` for every subcommand: the file's keys become click's ``default_map``.

The option is eager, so the file is read before any other parameter; its values then pass through click
exactly as flags do (types, choices, ``required``), and flags given on the command line win. Keys are a
flag's name or any of its spellings (``results_dir``, ``data_root_dir``, ``drop_out`` ...). Each value is
checked here first so that a bad one is reported as one line naming the file and the key.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import yaml

from ..errors import MSRLPluginError

CONFIG_PARAM = "config_path"


def _spellings(param: click.Parameter) -> list[str]:
    """A parameter's config keys: its name and every long flag spelling, with ``-`` read as ``_``."""
    names = [param.name or ""] + [opt.lstrip("-") for opt in getattr(param, "opts", []) if opt.startswith("--")]
    return [n.replace("-", "_") for n in names if n]


def config_keys(command: click.Command) -> dict[str, click.Parameter]:
    """``key -> parameter`` for every parameter of ``command`` a config file may set."""
    keys: dict[str, click.Parameter] = {}
    for param in command.params:
        if param.name == CONFIG_PARAM or getattr(param, "hidden", False):
            continue
        for key in _spellings(param):
            keys.setdefault(key, param)
    return keys


def read_config(path: Path) -> dict[str, Any]:
    """The YAML mapping in ``path`` (safe loader only)."""
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        problem = " ".join(str(exc).split())
        raise MSRLPluginError(f"cannot read the config file ({problem})", path,
                              "write it as YAML: one 'flag_name: value' per line") from exc
    if not isinstance(loaded, dict):
        raise MSRLPluginError("the config file must be a mapping of flag names to values", path,
                              "write one 'flag_name: value' per line")
    return loaded


def config_defaults(command: click.Command, ctx: click.Context, path: Path) -> dict[str, Any]:
    """Parameter name -> value from the file, each checked with the parameter's own click type."""
    keys = config_keys(command)
    defaults: dict[str, Any] = {}
    for key, value in read_config(path).items():
        param = keys.get(str(key).replace("-", "_"))
        if param is None:
            valid = sorted({p.name for p in keys.values()})
            raise MSRLPluginError(f"unknown config key {key!r} for {command.name}", path,
                                  f"valid keys: {', '.join(valid)}")
        if param.multiple and not isinstance(value, list | tuple):
            value = [value]  # one value for a repeatable flag
        if isinstance(value, dict):
            raise MSRLPluginError(f"config key {key!r} holds a mapping, not a value", path,
                                  f"give {param.opts[0]} one value")
        items = value if isinstance(value, list | tuple) else [value]
        if isinstance(param.type, click.types.IntParamType) and any(
                isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()) for v in items):
            # click's int() would silently turn 1.5 into 1 and true into 1
            raise MSRLPluginError(f"config key {key!r}: {value!r} is not a whole number", path,
                                  f"give {key!r} an integer, as {param.opts[0]} takes")
        try:
            param.type_cast_value(ctx, value)
        except (click.BadParameter, TypeError, ValueError) as exc:
            problem = exc.message if isinstance(exc, click.BadParameter) else f"{value!r} is not a {param.type.name}"
            raise MSRLPluginError(f"config key {key!r}: {problem}", path,
                                  f"give {key!r} a value {param.opts[0]} accepts") from None
        defaults[param.name] = value
    return defaults


def _load_config(ctx: click.Context, param: click.Parameter, path: Path | None) -> None:
    if path is not None:
        ctx.default_map = {**(ctx.default_map or {}), **config_defaults(ctx.command, ctx, path)}


def with_config(fn):
    """``--config file.yaml``: its keys supply any flag of the command (required ones too)."""
    return click.option("--config", CONFIG_PARAM, type=click.Path(exists=True, dir_okay=False, path_type=Path),
                        is_eager=True, expose_value=False, callback=_load_config,
                        help="YAML file of flag values (any flag of this command, by any of its spellings; "
                             "flags given on the command line win).")(fn)
