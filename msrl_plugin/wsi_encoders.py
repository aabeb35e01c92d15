"""Slide encoders by name: a bag of patch features -> one case embedding h. MSRL takes one as ``wsi_encoder``
(its phi_H, in stage 1 and fine-tuning), and each torchmil encoder is also a baseline aggregator.

The contract (what a factory returns): an ``nn.Module`` built as ``factory(in_dim, out_dim, attn_dim, dropout)``
with an ``out_dim`` attribute, whose ``forward(x, mask)`` maps ``x (B, N, D) float32`` and ``mask (B, N)`` bool
(True = real patch; None = no padding) to ``(h (B, out_dim), scores)``: ``scores`` are raw per-patch attention
logits ``(B, N)`` (-inf at padding; heatmaps read them) or None for an encoder without them. A case's ``h`` must
not depend on the other bags in its batch.

Sources of names:

- built in: ``abmil`` (gated attention, :class:`~msrl_plugin.nn.abmil.GatedAttentionPool`; today's weights);
- ``msrl-plugin[torchmil]``: ``transmil``, ``dsmil``, ``clam_sb``, ``dtfdmil``, ``patch_gcn`` (listed, with "needs
  msrl-plugin[torchmil]", when torchmil is not installed; using one is then a one-line error; ``patch_gcn`` reads
  patch coordinates, so only its own baseline aggregator can use it);
- third parties: an aggregator registered through the ``msrl_plugin.aggregators`` entry point whose class has a
  ``build_wsi_encoder(in_dim, out_dim, attn_dim, dropout)`` classmethod lends its encoder under its own name.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .errors import MSRLPluginError
from .nn.abmil import GatedAttentionPool
from .nn.torchmil_encoders import NEEDS_COORDS, TORCHMIL_MODELS, TorchMILEncoder, torchmil_available

EncoderFactory = Callable[[int, int, "int | None", float], nn.Module]
TORCHMIL_EXTRA = "msrl-plugin[torchmil]"
_ENCODERS: dict[str, tuple[EncoderFactory, str | None]] = {}  # name -> (factory, the extra it needs or None)


def register_wsi_encoder(name: str, needs: str | None = None) -> Callable[[EncoderFactory], EncoderFactory]:
    """Decorator: make ``factory(in_dim, out_dim, attn_dim, dropout) -> module`` available by ``name``."""

    def wrap(factory: EncoderFactory) -> EncoderFactory:
        if name in _ENCODERS and _ENCODERS[name][0] is not factory:
            raise MSRLPluginError(f"a slide encoder named {name!r} is already registered")
        _ENCODERS[name] = (factory, needs)
        return factory

    return wrap


@register_wsi_encoder("abmil")
def _abmil(in_dim: int, out_dim: int, attn_dim: int | None, dropout: float) -> nn.Module:
    """Gated attention (Ilse et al. 2018; CLAM's Attn_Net_Gated): D -> d, attention d/2 unless ``attn_dim``."""
    return GatedAttentionPool(in_dim, out_dim, attn_dim or out_dim // 2, dropout)


def _torchmil_factory(model: str) -> EncoderFactory:
    def build(in_dim: int, out_dim: int, attn_dim: int | None, dropout: float) -> nn.Module:
        return TorchMILEncoder(model, in_dim, out_dim, attn_dim, dropout)

    build.__doc__ = TORCHMIL_MODELS[model]
    return build


for _name in TORCHMIL_MODELS:
    register_wsi_encoder(_name, needs="torchmil")(_torchmil_factory(_name))


def _plugin_encoders() -> dict[str, EncoderFactory]:
    """Encoders lent by registered aggregators (built-in or entry-point plugins) with ``build_wsi_encoder``."""
    from .registry import get_aggregator_class, list_aggregators

    out = {}
    for name in list_aggregators():
        cls = get_aggregator_class(name)
        if name not in _ENCODERS and callable(getattr(cls, "build_wsi_encoder", None)):
            out[name] = cls.build_wsi_encoder
    return out


def missing_requirement(name: str) -> str | None:
    """What a registered encoder still needs (``"needs msrl-plugin[torchmil]"``), or None when it is usable."""
    needs = _ENCODERS[name][1] if name in _ENCODERS else None
    if needs == "torchmil" and not torchmil_available():
        return f"needs {TORCHMIL_EXTRA}"
    return None


def list_wsi_encoders() -> dict[str, str | None]:
    """``name -> None`` (usable) or why not (``"needs msrl-plugin[torchmil]"``), sorted by name."""
    names = set(_ENCODERS) | set(_plugin_encoders())
    return {name: missing_requirement(name) for name in sorted(names)}


def check_wsi_encoder(name: str, passes_coords: bool = False) -> None:
    """Raise one :class:`MSRLPluginError` line when ``name`` is unknown, its extra is not installed, or it reads
    patch coordinates that the model using it (``passes_coords`` False: MSRL, fusion) does not pass."""
    if name not in _ENCODERS and name not in _plugin_encoders():
        raise MSRLPluginError(f"unknown slide encoder wsi_encoder={name!r}",
                              fix=f"choose one of: {', '.join(list_wsi_encoders())}")
    if name in NEEDS_COORDS and not passes_coords:
        raise MSRLPluginError(f"slide encoder {name!r} reads patch coordinates, which this model's graph forward "
                              "does not pass", fix=f"compare it as the baseline --model {name}, or pick another "
                                                   "wsi_encoder")
    why = missing_requirement(name)
    if why:
        raise MSRLPluginError(f"slide encoder {name!r} {why}", fix=f"pip install '{TORCHMIL_EXTRA}'")


def build_wsi_encoder(name: str, in_dim: int, out_dim: int, attn_dim: int | None = None,
                      dropout: float = 0.25) -> nn.Module:
    """The encoder ``name`` for ``in_dim``-d patches and ``out_dim``-d case embeddings (contract: module doc)."""
    check_wsi_encoder(name, passes_coords=True)  # the model's own check says whether it passes coords
    factory = _ENCODERS[name][0] if name in _ENCODERS else _plugin_encoders()[name]
    module = factory(in_dim, out_dim, attn_dim, dropout)
    if getattr(module, "out_dim", out_dim) != out_dim:
        raise MSRLPluginError(f"slide encoder {name!r} returns {module.out_dim}-d embeddings, not {out_dim}-d")
    return module
