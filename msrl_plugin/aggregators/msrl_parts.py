"""MSRL's swappable parts, each by name with the paper's form as its default: the slide encoder (``wsi_encoder``,
:mod:`msrl_plugin.wsi_encoders`), the graph forward (``graph_forward``), the buffer update (``buffer_update``) and
the target branch's update (``target_update``). A third party adds a buffer or target update with
:func:`register_buffer_update` / :func:`register_target_update` (before the model is created).

``graph_forward="none"`` is MSRL with borrowing switched off: no graph, no buffer, no target branch, no alignment
losses, no stage 1. The slide encoder's h goes through ABMIL's rho (Linear d -> 256, ReLU, dropout) to the task
head: the network *is* :class:`~msrl_plugin.nn.abmil.ABMIL` over that encoder, built in the same order and trained
by the same loop. So with ``wsi_encoder="abmil"``, ``embed_dim`` = ABMIL's ``hidden_dim``, ``attn_dim``, ``dropout``
and the training keywords (epochs, lr, reg, batch, patches, seed, precision) equal, it trains the same function as
the ``abmil`` aggregator under the same seed (tested: equal predictions within float tolerance). MSRL's graph path
differs from this reduction in two places, so ``msrl`` - ``msrl(graph_forward="none")`` measures both: what the
graph over the buffer borrows (with its alignment losses and stage 1), and the head (one Linear on the readout).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..batching import CaseData, batches, collate
from ..nn.abmil import ABMIL
from ..nn.buffer import FeatureBuffer
from ..nn.ema import ema_update
from ..wsi_encoders import build_wsi_encoder

#: how each case meets the buffer [P core: A_r = GSL(F), Z = GCN(A_r, F) over [cases; buffer]]
GRAPH_FORWARDS: dict[str, str] = {
    "per_case": "each case's own learned graph over [case; buffer rows], GCN, read out at the case [P, D masks]",
    "none": "no graph, no buffer: h -> ABMIL's rho -> head (MSRL with borrowing off; equals ABMIL)",
}

BufferUpdate = Callable[[FeatureBuffer, torch.Tensor, list[str]], None]
TargetUpdate = Callable[[nn.Module, nn.Module, float], None]
#: how the buffer takes each step's (detached) target features and case ids [P: FIFO]
BUFFER_UPDATES: dict[str, BufferUpdate] = {}
#: how each target module follows its online module after an optimiser step, given ``ema_momentum`` [P: EMA]
TARGET_UPDATES: dict[str, TargetUpdate] = {}
#: the registered names (live sets: the keyword constraints of :mod:`.msrl_params` hold these very objects)
BUFFER_UPDATE_NAMES: set[str] = set()
TARGET_UPDATE_NAMES: set[str] = set()


def _registrar(table: dict, names: set[str], name: str) -> Callable:
    def wrap(fn):
        table[name] = fn
        names.add(name)
        return fn
    return wrap


def register_buffer_update(name: str) -> Callable[[BufferUpdate], BufferUpdate]:
    """Decorator: ``update(buffer, features (B, F), case_ids)`` becomes ``buffer_update=name``."""
    return _registrar(BUFFER_UPDATES, BUFFER_UPDATE_NAMES, name)


def register_target_update(name: str) -> Callable[[TargetUpdate], TargetUpdate]:
    """Decorator: ``update(target_module, online_module, momentum)`` becomes ``target_update=name``."""
    return _registrar(TARGET_UPDATES, TARGET_UPDATE_NAMES, name)


@register_buffer_update("fifo")
def _fifo(buffer: FeatureBuffer, features: torch.Tensor, case_ids: list[str]) -> None:
    """The oldest rows give way to the step's features (a case already in the buffer is refreshed) [P]."""
    buffer.enqueue(features, case_ids)


@register_buffer_update("frozen")
def _frozen_buffer(buffer: FeatureBuffer, features: torch.Tensor, case_ids: list[str]) -> None:
    """The buffer keeps the real features it was initialised with (from the pre-trained encoders)."""


register_target_update("ema")(ema_update)  # theta_t <- m theta_t + (1 - m) theta_o [P]


@register_target_update("frozen")
def _frozen_target(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """The target stays at its initial (pre-trained) weights, whatever the momentum."""


@register_target_update("copy")
@torch.no_grad()
def _copy_target(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """The target is the online module after each step (momentum 0: a stop-gradient copy)."""
    ema_update(target, online, 0.0)


class PartsMixin:
    """The parts of :class:`~msrl_plugin.aggregators.msrl.MSRLAggregator` chosen by name."""

    def _encoder(self, feature_dim: int) -> nn.Module:
        """phi_H: the registered slide encoder ``wsi_encoder``, ``(B, N, D) -> (B, embed_dim)``."""
        return build_wsi_encoder(getattr(self, "wsi_encoder", "abmil"), feature_dim, self.embed_dim,
                                 self.attn_dim, self.dropout)

    def _borrows(self) -> bool:
        return getattr(self, "graph_forward", "per_case") != "none"

    def _plain_network(self, feature_dim: int, n_outputs: int) -> ABMIL:
        """``graph_forward="none"``: ABMIL's network over the chosen encoder (built first, as ABMIL builds its)."""
        d = self.embed_dim
        return ABMIL(feature_dim, n_outputs, d, self.attn_dim or d // 2, 256, self.dropout,
                     pool=self._encoder(feature_dim))

    def _fit_without_graph(self, data: CaseData, progress: bool | None) -> Any:
        """Train the plain network as :meth:`Aggregator.fit` trains ABMIL (same loss, loop and RNG use)."""
        self.buffer_rows_, self.coverage_threshold_ = 0, float("nan")
        self.pretrain_history_ = []
        self.model_ = self._build_model(self.feature_dim_, len(self.genomics_columns_),
                                        self.task_.n_outputs).to(self._device())
        self._train(self.model_, data, self._training_loss, progress=progress)
        return self

    @torch.no_grad()
    def _initialise_buffer(self, net: nn.Module, data: CaseData, eligible: torch.Tensor) -> None:
        """Real features concat(phi_G(X_G), phi_H(X_I)) of (a random subset of) training cases [P]."""
        device = self._device()
        chosen = eligible[torch.randperm(len(eligible), generator=self._generator)][: self.buffer_rows_]
        net.eval()
        feats = []
        for index in batches(chosen, 64):
            batch = collate(data, index, self.max_patches, self._generator).to(device)
            feats.append(net.real_nodes(net.encode_wsi(batch.x, batch.mask), batch.genomics))
        net.buffer.initialise(torch.cat(feats), [data.case_ids[i] for i in chosen.tolist()])

    def _update_target(self, target: nn.Module, net: nn.Module, names: list[str]) -> None:
        update = TARGET_UPDATES[getattr(self, "target_update", "ema")]
        for name in names:
            update(getattr(target, name), getattr(net, name), self.ema_momentum)

    def _update_buffer(self, buffer: FeatureBuffer, features: torch.Tensor, ids: list[str]) -> None:
        BUFFER_UPDATES[getattr(self, "buffer_update", "fifo")](buffer, features, ids)
