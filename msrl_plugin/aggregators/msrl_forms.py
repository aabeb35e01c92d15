"""MSRL's named configurations (timm-style): two base forms, and every variant and ablation as "base + one change".

- ``msrl``: the project's design, the defaults of :class:`~msrl_plugin.aggregators.msrl.MSRLAggregator`.
- ``msrl_paper``: the paper's form as ``../shared/method.md`` specifies it (§5, §11): read-out of the post-graph
  node z, no borrowed risk head, InfoNCE f_align over the whole node features, edges from the fused features,
  graph-level L_inter, no genomic teacher, no distillation, no stage-1 hold-out, frozen phi_G, d = 768, and
  method.md's optimiser table.
- ``<base>_<change>`` for every change in :data:`CHANGES` over both bases (``msrl_knn_cosine``,
  ``msrl_paper_knn_cosine``, ...). A change is one named component: a structural switch (a class attribute)
  or a set of keyword defaults.

Every registered form is a generated subclass whose ``__init__`` signature carries the form's defaults, so
``get_params``, ``clone``, ``list-models --params`` and checkpoints all see the resolved values.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from ..registry import register_aggregator
from .msrl import MSRLAggregator

#: the paper's values (method.md §11 table, §5.1-5.4) of the keywords where they differ from the project's
PAPER_FORM: dict[str, Any] = {
    "embed_dim": 768,                 # [P] d = 768 (fused 1536); attn_dim None -> 384 [D method.md §0.1 B]
    "readout": "node",                # [P] head(z) on the case's post-graph node embedding
    "borrow": "none",                 # [P] no genomic risk head
    "f_align": "paper",               # [P] L_f_align = InfoNCE(f, f^) over concat(g, h)
    "similarity": "fused",            # [P] A_r = GSL_F(F) over the whole node features
    "genomic_teacher_steps": 0,       # no pre-fitted genomic teacher (a project addition)
    "distill_weight": 0.0,            # no distillation (a project addition)
    "train_gene_encoder": False,      # [D method.md §5.1] phi_G frozen at its pre-trained weights
    "pretrain_inter_level": "graph",  # [P] L_inter on the graph outputs
    "pretrain_holdout": 0.0,          # every case pre-trains (the hold-out is a project diagnostic)
    "pretrain_epochs": 200,           # [D method.md §4.3] 200 epochs of mini-batches
    "pretrain_batch_size": 512,       # [D method.md §4.3] 512 cases (or the full cohort)
    "lr": 1e-4,                       # [D method.md §11] fine-tuning Adam 1e-4
    "batch_size": 32,                 # [D method.md §11] batch 32
}

#: provenance tag of each default ([P] paper, [S] SUBLIME, [B] baseline repos, [D] a default of ours), per form;
#: a keyword not listed takes the tag of the ``msrl`` form
DEFAULT_TAGS: dict[str, dict[str, str]] = {
    "msrl": {
        "embed_dim": "D", "attn_dim": "D", "k": "D", "learner_layers": "S", "learner_activation": "S",
        "gcn_dropout": "D", "dropout": "B", "snn_activation": "P", "readout": "D", "borrow": "D",
        "similarity": "D", "buffer_size": "D", "ema_momentum": "D", "temperature": "S", "align_weight": "P",
        "f_align": "D", "genomic_teacher_weight": "D", "genomic_teacher_steps": "D", "distill_weight": "D",
        "train_gene_encoder": "D", "teacher_crossfit": "D", "pretrain_epochs": "D", "pretrain_lr": "S",
        "pretrain_batch_size": "D",
        "maskfeat_rate_learner": "D", "maskfeat_rate_anchor": "D", "dropedge": "S", "anchor_tau": "D",
        "anchor_init": "S", "pretrain_holdout": "D", "pretrain_inter_level": "D", "pretrain_transfer": "P",
        "pretrained": "D", "max_epochs": "D", "lr": "D", "reg": "B", "batch_size": "D", "max_patches": "D",
        "n_bins": "B", "alpha_surv": "B", "weighted_sample": "D", "seed": "D", "device": "D", "verbose": "D",
        "buffer_candidates": "D", "candidate_search": "D", "propagation": "D", "candidate_keys": "D",
        "precision": "D", "wsi_encoder": "B", "graph_forward": "P", "buffer_update": "P", "target_update": "P",
    },
    "msrl_paper": {"embed_dim": "P", "readout": "P", "borrow": "P", "f_align": "P", "similarity": "P",
                   "pretrain_inter_level": "P", "genomic_teacher_steps": "P", "distill_weight": "P",
                   "pretrain_holdout": "P"},
}


@dataclass(frozen=True)
class Change:
    """One named component that a variant or ablation changes against its base form."""

    summary: str
    structure: dict[str, Any] = field(default_factory=dict)  # class attributes
    params: dict[str, Any] = field(default_factory=dict)     # keyword defaults


CHANGES: dict[str, Change] = {
    "h": Change("MSRL_H: pure WSI, no genomics anywhere; nodes = h, a buffer of training-case h [P variant]",
                structure={"modality": "wsi", "uses_genomics": False}),
    "multi": Change("MSRL_multi: the case's own real genomics when it has them, at training and test [P variant]",
                    structure={"genomics_at_test": True}),
    "knn_euclidean": Change("ablation: a static Euclidean kNN graph instead of the learned one (same k and "
                            "normalisation) [P]", structure={"graph": "knn_euclidean"}),
    "knn_cosine": Change("ablation: a static cosine kNN graph instead of the learned one (same k and "
                         "normalisation) [P]", structure={"graph": "knn_cosine"}),
    "random_gsl": Change("ablation: no stage-1 pre-training; learner at w = 1, GCN and WSI encoder at random "
                         "init (phi_G is still pre-fitted where the base form has a genomic teacher) [P]",
                         structure={"use_pretraining": False}),
    "online_buffer": Change("ablation: the buffer is fed by online features (the inductor's placeholder "
                            "genomics) instead of the target branch's real ones [P]",
                            structure={"buffer_source": "online"}),
}

BASE_FORMS: dict[str, tuple[dict[str, Any], str]] = {
    "msrl": ({}, "MSRL, the project's design: WSI + genomics in training, WSI-only inference that borrows the "
                 "real genomics of similar training cases from a buffer"),
    "msrl_paper": (PAPER_FORM, "MSRL, the paper's form (method.md §5): head on the post-graph node, no borrowed "
                               "risk head, no teacher, fused similarity, d 768"),
}


def _with_defaults(params: dict[str, Any]):
    """``MSRLAggregator.__init__`` with other keyword defaults (same names and order)."""
    base = inspect.signature(MSRLAggregator.__init__)
    unknown = set(params) - set(base.parameters)
    if unknown:
        raise TypeError(f"unknown MSRL keywords in a form: {sorted(unknown)}")
    signature = base.replace(parameters=[p.replace(default=params.get(p.name, p.default))
                                         for p in base.parameters.values()])

    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        MSRLAggregator.__init__(*bound.args, **bound.kwargs)

    __init__.__signature__ = signature
    return __init__


def _register(name: str, base: type, summary: str, structure: dict[str, Any], params: dict[str, Any],
              tags: dict[str, str]) -> type:
    namespace: dict[str, Any] = {"__doc__": f"{summary}.", "__module__": __name__, "form_params": params,
                                 "default_tags": tags, **structure}
    if params:
        namespace["__init__"] = _with_defaults(params)
    cls_name = "MSRL" + "".join(part.title() for part in name.split("_")[1:]) + "Aggregator"
    cls = register_aggregator(name)(type(cls_name, (base,), namespace))
    globals()[cls_name] = cls  # importable and picklable under its own name
    return cls


def _register_forms() -> dict[str, type]:
    classes: dict[str, type] = {"msrl": MSRLAggregator}
    MSRLAggregator.form_params = {}
    MSRLAggregator.default_tags = DEFAULT_TAGS["msrl"]
    for base_name, (params, summary) in BASE_FORMS.items():
        tags = {**DEFAULT_TAGS["msrl"], **DEFAULT_TAGS.get(base_name, {})}
        base = classes.get(base_name) or _register(base_name, MSRLAggregator, summary, {}, params, tags)
        classes[base_name] = base
        for change_name, change in CHANGES.items():
            name = f"{base_name}_{change_name}"
            classes[name] = _register(name, base, f"{change.summary}; over {base_name}", change.structure,
                                      {**params, **change.params}, tags)
            classes[name].change = change_name
    return classes


FORMS = _register_forms()

# the variant classes under their earlier names
MSRLHAggregator = FORMS["msrl_h"]
MSRLMultiAggregator = FORMS["msrl_multi"]
MSRLKNNEuclidean = FORMS["msrl_knn_euclidean"]
MSRLKNNCosine = FORMS["msrl_knn_cosine"]
MSRLRandomGSL = FORMS["msrl_random_gsl"]
MSRLOnlineBuffer = FORMS["msrl_online_buffer"]
MSRLPaperAggregator = FORMS["msrl_paper"]
