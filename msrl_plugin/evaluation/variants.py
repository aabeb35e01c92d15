"""Post-fit variants of a registered model, named ``<model>:<transform>`` (e.g. ``msrl:shuffled_buffer``): a
fitted model transformed before it predicts, paired with the same fit in ``compare`` (no second fit)."""
from __future__ import annotations

from collections.abc import Callable

from ..aggregators.base import Aggregator
from ..aggregators.label_borrowing import lend_observed_outcomes
from ..aggregators.msrl_fitted import shuffle_buffer_genomics
from ..cohort import Cohort
from ..errors import MSRLPluginError
from ..registry import get_aggregator_class, list_aggregators

Transform = Callable[[Aggregator, int, Cohort], Aggregator]  # (fitted model, seed, its training cohort)


def shuffled_buffer(model: Aggregator, seed: int, train: Cohort) -> Aggregator:
    """The buffer's genomic half deranged across rows (the borrowing control)."""
    return shuffle_buffer_genomics(model, seed)


def label_only(model: Aggregator, seed: int, train: Cohort) -> Aggregator:
    """Buffer rows lend their cases' observed outcomes, not their genomics (``aggregators/label_borrowing.py``)."""
    return lend_observed_outcomes(model, train)


#: ``<model>:<transform>`` names a post-fit variant of a registered model, e.g. ``msrl_h:shuffled_buffer``
TRANSFORMS: dict[str, Transform] = {"shuffled_buffer": shuffled_buffer, "label_only": label_only}
#: short names of common variants; in ``compare`` the label-only control is MSRL's own fit transformed, as the
#: shuffled buffer is (the registered ``msrl_label_only`` refits MSRL: for ``train``, not for a paired comparison)
VARIANT_ALIASES = {"msrl_shuffled_buffer": "msrl:shuffled_buffer", "msrl_label_only": "msrl:label_only"}


def variant_of(name: str) -> tuple[str, Transform] | None:
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
    present = {v[0] for v in map(variant_of, models) if v is not None and v[1] is shuffled_buffer}
    out = []
    for name in models:
        if variant_of(name) or name in present or name not in list_aggregators():
            continue
        cls = get_aggregator_class(name)
        if getattr(cls, "modality", None) == "fused" and hasattr(cls, "with_shuffled_buffer"):
            out.append(f"{name}:shuffled_buffer")
    return out
