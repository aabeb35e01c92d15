"""Post-fit variants of a registered model, named ``<model>:<transform>`` (e.g. ``msrl:shuffled_buffer``): a
fitted model transformed before it predicts, paired with the same fit in ``compare``."""
from __future__ import annotations

from collections.abc import Callable

from ..aggregators.base import Aggregator
from ..aggregators.msrl_fitted import shuffle_buffer_genomics
from ..errors import MSRLPluginError
from ..registry import get_aggregator_class, list_aggregators

#: ``<model>:<transform>`` names a post-fit variant of a registered model, e.g. ``msrl_h:shuffled_buffer``
TRANSFORMS: dict[str, Callable[[Aggregator, int], Aggregator]] = {"shuffled_buffer": shuffle_buffer_genomics}
#: short names of common variants
VARIANT_ALIASES = {"msrl_shuffled_buffer": "msrl:shuffled_buffer"}


def variant_of(name: str) -> tuple[str, Callable[[Aggregator, int], Aggregator]] | None:
    """``(base model, transform)`` when ``name`` is a post-fit variant, else None."""
    base, sep, transform = VARIANT_ALIASES.get(name, name).partition(":")
    if not sep:
        return None
    if transform not in TRANSFORMS:
        raise MSRLPluginError(f"unknown model variant {transform!r} in {name!r}",
                              fix=f"known variants: {', '.join(TRANSFORMS)} (e.g. msrl:shuffled_buffer)")
    return base, TRANSFORMS[transform]


def borrowing_controls(models: list[str]) -> list[str]:
    """The shuffled-buffer control of every plain model here whose buffer holds real genomics (unless the
    models already name one, in either spelling)."""
    present = {v[0] for v in map(variant_of, models) if v is not None and v[1] is shuffle_buffer_genomics}
    out = []
    for name in models:
        if variant_of(name) or name in present or name not in list_aggregators():
            continue
        cls = get_aggregator_class(name)
        if getattr(cls, "modality", None) == "fused" and hasattr(cls, "with_shuffled_buffer"):
            out.append(f"{name}:shuffled_buffer")
    return out
