"""A trained ABMIL or MSRL aggregator as a TRIDENT slide encoder (formats.md §3.2).

TRIDENT's slide-feature step calls ``encoder(batch, device)`` with float32 ``batch['features']`` (1, N, D),
int64 ``batch['coords']`` (1, N, 2) and ``batch['attributes']`` (the coords attributes), and keeps
``output.float().cpu().numpy().squeeze()``. :class:`SlideEncoder` answers that call with the vector the
trained model's task head reads:

- ABMIL: the ``rho`` embedding (``rho(attention pool)``, 256-d by default);
- MSRL and its variants: the case's post-graph node embedding ``z`` (``embed_dim``), computed from the WSI
  alone with the frozen buffer of real training cases (with h or the case's node features f for the
  ``node+wsi`` / ``node+case`` readouts, and the borrowed genomic-risk logits last for ``borrow='genomic_risk'``).
  ``msrl_multi`` is encoded WSI-only too (the slide-feature step has no genomics).

So ``encoder.head(embedding)`` gives the same logits as the aggregator's ``predict`` for that slide.
Nothing here imports TRIDENT; the object only has the attributes and call signature TRIDENT uses.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import BadInputError, CheckpointError, MSRLPluginError
from .nn.abmil import ABMIL
from .nn.msrl import MSRLNetwork


class _HeadInput(nn.Module):
    """``(B, N, D)`` bags -> ``(B, dim)``: the vector the wrapped network's task head reads."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    @property
    def dim(self) -> int:
        return self.net.head.in_features


class _ABMILEmbedding(_HeadInput):
    """ABMIL's rho embedding."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor, case_ids: list[str] | None) -> torch.Tensor:
        return self.net.embed(x, mask)[0]


class _MSRLEmbedding(_HeadInput):
    """z from each case's graph over [case; buffer] (WSI only), with h or f when the readout uses them, and
    the borrowed genomic-risk logits last when the model borrows (``borrow='genomic_risk'``)."""

    @property
    def dim(self) -> int:
        borrowed = 0 if self.net.genomic_head is None else self.net.head.out_features
        return self.net.head.in_features + borrowed

    def forward(self, x: torch.Tensor, mask: torch.Tensor, case_ids: list[str] | None) -> torch.Tensor:
        h = self.net.encode_wsi(x, mask)
        f = self.net.online_nodes(h)
        z, graph, _ = self.net.graph_forward(f, case_ids)
        out = self.net.readout_features(z, f, h)
        return out if self.net.genomic_head is None else torch.cat([out, self.net.borrowed_logits(graph)], 1)


class _HeadPlusBorrowed(nn.Module):
    """``head(embedding)`` for a borrowing MSRL: the mean of the task head on the readout part and the
    borrowed logits (as :meth:`MSRLNetwork.logits`)."""

    def __init__(self, head: nn.Linear):
        super().__init__()
        self.head = head

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        n = self.head.in_features
        return (self.head(embedding[:, :n]) + embedding[:, n:]) / 2


def _embedding_module(net: nn.Module, model_name: str) -> nn.Module:
    if isinstance(net, ABMIL):
        return _ABMILEmbedding(net)
    if isinstance(net, MSRLNetwork):
        return _MSRLEmbedding(net)
    raise MSRLPluginError(f"model {model_name!r} has no slide embedding defined",
                          fix="use an ABMIL or MSRL model (abmil, msrl, msrl_h, ...)")


def _device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError(f"device {str(device)!r} was requested but no CUDA device is available",
                            fix="pass device='cpu'")
    return dev


class SlideEncoder(nn.Module):
    """TRIDENT slide-encoder contract around a trained aggregator: ``enc_name``, ``precision``,
    ``embedding_dim`` and ``forward(batch, device='cuda') -> (B, embedding_dim)``.

    Build it with :meth:`from_aggregator` or :meth:`from_checkpoint`. Weights are frozen and in eval mode
    (TRIDENT's ``BaseSlideEncoder(freeze=True)`` behaviour). ``head`` is the trained task head
    (``head(embedding)`` = the model's logits). For MSRL, a slide whose ``attributes['name']`` (mapped through
    ``case_of_slide`` when given) is a buffer case never reads its own buffer row, as in ``predict``.
    """

    precision: torch.dtype = torch.float32

    def __init__(self, enc_name: str, embedder: nn.Module, head: nn.Module, feature_dim: int, model_name: str,
                 case_of_slide: Mapping[str, str] | None = None):
        super().__init__()
        self.enc_name = enc_name
        self.embedder = embedder
        self.head = head
        self.feature_dim = int(feature_dim)
        self.embedding_dim = int(embedder.dim)
        self.model_name = model_name
        self.case_of_slide = dict(case_of_slide or {})
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_aggregator(cls, model: Any, name: str | None = None,
                        case_of_slide: Mapping[str, str] | None = None) -> SlideEncoder:
        """Wrap a fitted ABMIL or MSRL aggregator (a copy: the aggregator itself is left untouched).

        ``name`` becomes ``enc_name`` (TRIDENT writes ``slide_features_<enc_name>/``); default: model name.
        """
        if not hasattr(model, "model_"):
            raise BadInputError(f"model {getattr(model, 'name', type(model).__name__)!r} is not fitted yet",
                                fix="fit it or load a checkpoint first")
        net = copy.deepcopy(model.model_).cpu()
        embedder = _embedding_module(net, model.name)
        head = _HeadPlusBorrowed(net.head) if getattr(net, "genomic_head", None) is not None else net.head
        return cls(name or model.name, embedder, head, model.feature_dim_, model.name, case_of_slide)

    @classmethod
    def from_checkpoint(cls, path: str | Path, name: str | None = None,
                        case_of_slide: Mapping[str, str] | None = None) -> SlideEncoder:
        """From a checkpoint of ``msrl-plugin train`` (``s_<k>_checkpoint.pt``) or ``Aggregator.save``."""
        from .aggregators.base import Aggregator

        return cls.from_aggregator(Aggregator.load(path, device="cpu"), name, case_of_slide)

    def _case_ids(self, batch: Mapping[str, Any], n: int) -> list[str] | None:
        attrs = batch.get("attributes")
        slide = attrs.get("name") if isinstance(attrs, Mapping) else None
        if n != 1 or not isinstance(slide, str):
            return None
        return [self.case_of_slide.get(slide, slide)]

    def forward(self, batch: Mapping[str, Any], device: str | torch.device = "cuda") -> torch.Tensor:
        """``batch['features']`` ``(B, N, D)`` (or ``(N, D)``), optional ``batch['attn_mask']`` ``(B, N)``
        bool (True = real patch) -> slide embeddings ``(B, embedding_dim)`` float32 on ``device``."""
        if "features" not in batch:
            raise BadInputError("the batch has no 'features' entry",
                                fix="pass {'features': (1, N, D) tensor}")
        x = torch.as_tensor(batch["features"])
        if x.dim() == 2:
            x = x[None]
        if x.dim() != 3 or x.shape[-1] != self.feature_dim:
            raise CheckpointError(f"patch features have shape {tuple(x.shape)} but the model was trained on "
                                  f"(1, N, {self.feature_dim}) features",
                                  fix="use the patch encoder the model was trained on")
        if x.shape[1] == 0:
            raise BadInputError("empty bag (0 patches): no slide embedding can be computed")
        dev = _device(device)
        here = next(self.parameters()).device
        if here.type != dev.type or (dev.index is not None and here.index != dev.index):
            with torch.inference_mode(False):  # moved weights must stay ordinary tensors
                self.to(dev)
        mask = batch.get("attn_mask")
        mask = (torch.ones(x.shape[:2], dtype=torch.bool) if mask is None
                else torch.as_tensor(mask, dtype=torch.bool))
        x = x.to(dev, torch.float32)
        return self.embedder(x, mask.to(dev), self._case_ids(batch, x.shape[0])).float()

    def extra_repr(self) -> str:
        return (f"enc_name={self.enc_name!r}, model={self.model_name!r}, feature_dim={self.feature_dim}, "
                f"embedding_dim={self.embedding_dim}")
