"""MSRL's keywords: their constraints (checked before any bag is read) and the combinations that ignore a value.

Groups (the sections of :class:`~msrl_plugin.aggregators.msrl.MSRLAggregator`'s docstring and of
``list-models --params``): architecture, stage 2 (fine-tuning), stage 1 (graph-structure pre-training),
training, scaling.
"""
from __future__ import annotations

import os
import warnings
from numbers import Integral, Real
from typing import Any

from sklearn.utils._param_validation import Interval, Options, StrOptions

from ..nn.msrl import BORROW, CANDIDATE_SEARCH, PROPAGATIONS, READOUTS, SIMILARITIES
from ..nn.retrieval import KEY_DTYPES
from ..pretrain import ANCHOR_INITS, INTER_LEVELS
from .msrl_parts import BUFFER_UPDATE_NAMES, GRAPH_FORWARDS, TARGET_UPDATE_NAMES
from .params import PARAMETER_CONSTRAINTS

#: what fine-tuning may inherit from stage 1 (``pretrain_transfer``)
PRETRAIN_TRANSFERS = ("all", "graph", "wsi+graph")
LEARNER_ACTIVATIONS = ("tanh", "relu")


def _options(values) -> list:
    return [StrOptions(set(values))]


MSRL_CONSTRAINTS: dict[str, list] = {
    **PARAMETER_CONSTRAINTS,
    "readout": _options(READOUTS), "borrow": _options(BORROW), "f_align": _options({"genomic", "paper"}),
    "similarity": _options(SIMILARITIES), "learner_activation": _options(LEARNER_ACTIVATIONS),
    "anchor_init": _options(ANCHOR_INITS),
    "pretrain_inter_level": _options(INTER_LEVELS), "pretrain_transfer": _options(PRETRAIN_TRANSFERS),
    "candidate_search": _options(CANDIDATE_SEARCH), "propagation": _options(PROPAGATIONS),
    "candidate_keys": _options(KEY_DTYPES),
    "genomic_teacher_weight": [Interval(Real, 0, None, closed="left")],
    "distill_weight": [Interval(Real, 0, None, closed="left")],
    "genomic_teacher_steps": [Interval(Integral, 0, None, closed="left")],
    "pretrain_holdout": [Interval(Real, 0, 1, closed="left")],
    "train_gene_encoder": ["boolean", None],
    "teacher_crossfit": [Interval(Integral, 2, None, closed="left"), Options(Integral, {0})],
    "pretrained": [str, os.PathLike, None],
    # the slide encoder's name is checked against the registry (plugins included) by check_wsi_encoder; the
    # parts' registries are passed themselves, so a part registered later is accepted too
    "wsi_encoder": [str], "graph_forward": _options(GRAPH_FORWARDS),
    "buffer_update": [StrOptions(BUFFER_UPDATE_NAMES)], "target_update": [StrOptions(TARGET_UPDATE_NAMES)],
}

_TEACHER = ("genomic_teacher_weight", "genomic_teacher_steps", "distill_weight", "teacher_crossfit")
_STAGE1 = ("pretrain_lr", "pretrain_batch_size", "maskfeat_rate_learner", "maskfeat_rate_anchor", "dropedge",
           "anchor_tau", "anchor_init", "pretrain_holdout", "pretrain_inter_level")
_CANDIDATES = ("candidate_search", "candidate_keys")
_GRAPH = ("k", "learner_layers", "learner_activation", "gcn_dropout", "readout", "buffer_size", "ema_momentum",
          "temperature", "align_weight", "buffer_candidates", "propagation", "buffer_update", "target_update")
_FUSED_ONLY = ("f_align", "similarity", "train_gene_encoder", "borrow", "snn_activation")


def ignored_parameters(model: Any) -> dict[str, str]:
    """``name -> why`` for each keyword whose value this combination never reads."""
    out: dict[str, str] = {}

    def mark(names, why: str) -> None:
        for name in names:
            out.setdefault(name, why)

    if getattr(model, "graph_forward", "per_case") == "none":
        mark(_GRAPH + _FUSED_ONLY + _TEACHER + _CANDIDATES + ("pretrain_epochs", "pretrained", "pretrain_transfer")
             + _STAGE1, "graph_forward='none' builds no graph, buffer, target branch or stage 1")
    if model.modality == "wsi":
        mark(_FUSED_ONLY + _TEACHER, f"{model.name!r} has no genomics (MSRL_H)")
    elif model.borrow == "none":
        mark(_TEACHER, "borrow='none' builds no genomic risk head")
    elif model.genomic_teacher_steps == 0:
        mark(("teacher_crossfit",), "genomic_teacher_steps=0 pre-fits no teacher")
    elif model._trains_gene_encoder():
        mark(("teacher_crossfit",), "a teacher fine-tuned with the model lends through its live head")
    if model.graph != "learned":
        mark(("learner_layers", "learner_activation"), f"the graph is a static {model.graph} graph")
    if not model.use_pretraining:
        mark(("pretrain_epochs", "pretrained", "pretrain_transfer") + _STAGE1,
             f"{model.name!r} skips stage-1 pre-training")
    elif model.pretrained:
        mark(("pretrain_epochs",) + _STAGE1, "pretrained= reuses that file's stage 1")
    elif model.pretrain_epochs == 0:
        mark(("pretrain_transfer",) + _STAGE1, "pretrain_epochs=0 runs no stage 1")
    if model.buffer_candidates is None:
        mark(_CANDIDATES, "buffer_candidates=None builds the dense graph over the whole buffer")
    return out


def warn_ignored(model: Any) -> None:
    """One warning for each keyword set away from the form's default that this combination ignores."""
    defaults = type(model)().get_params()
    for name, why in ignored_parameters(model).items():
        value = getattr(model, name)
        if value != defaults[name]:
            warnings.warn(f"model {model.name!r}: {name}={value!r} is ignored: {why}", UserWarning, stacklevel=3)
