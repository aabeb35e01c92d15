"""The aggregator registry: a decorator, a factory and a listing (timm-style), plus entry points.

Another package adds aggregators by declaring an entry point in the group ``msrl_plugin.aggregators``
whose object is an :class:`~msrl_plugin.aggregators.base.Aggregator` subclass (or a module that calls
``register_aggregator`` when imported).
"""
from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TypeVar

from .errors import MSRLPluginError

ENTRY_POINT_GROUP = "msrl_plugin.aggregators"
_REGISTRY: dict[str, type] = {}
_loaded = False
T = TypeVar("T", bound=type)


def register_aggregator(name: str) -> Callable[[T], T]:
    """Class decorator: make an aggregator available to ``create_aggregator(name)`` and the CLI."""

    def wrap(cls: T) -> T:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise MSRLPluginError(f"an aggregator named {name!r} is already registered ({_REGISTRY[name]})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True  # the built-in aggregators registered themselves when msrl_plugin was imported
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        if isinstance(obj, type) and ep.name not in _REGISTRY:
            register_aggregator(ep.name)(obj)


def list_aggregators() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get_aggregator_class(name: str) -> type:
    _load_all()
    if name not in _REGISTRY:
        raise MSRLPluginError(f"unknown model {name!r}", fix=f"choose one of: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_aggregator(name: str, **params):
    """Instantiate a registered aggregator; unknown keywords are an error naming the valid ones."""
    cls = get_aggregator_class(name)
    valid = set(cls._get_param_names())
    unknown = sorted(set(params) - valid)
    if unknown:
        raise MSRLPluginError(f"model {name!r} has no parameter(s) {unknown}",
                              fix=f"valid parameters: {', '.join(sorted(valid))}")
    from .aggregators.params import check_params

    model = cls(**params)
    check_params(model)
    model._warn_ignored()
    return model
