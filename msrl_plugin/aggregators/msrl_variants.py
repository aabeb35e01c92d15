"""MSRL's variants and the paper's ablations (method.md §6): each changes one class attribute."""
from __future__ import annotations

from ..registry import register_aggregator
from .msrl import MSRLAggregator


@register_aggregator("msrl_h")
class MSRLHAggregator(MSRLAggregator):
    """MSRL_H: pure WSI (no genomics anywhere); nodes = h, buffer of training-case h [P variant]."""

    modality = "wsi"
    uses_genomics = False


@register_aggregator("msrl_multi")
class MSRLMultiAggregator(MSRLAggregator):
    """MSRL_multi: real genomics for the current case when available, at training and test [P variant]."""

    genomics_at_test = True


@register_aggregator("msrl_knn_euclidean")
class MSRLKNNEuclidean(MSRLAggregator):
    """Ablation: static Euclidean kNN graph instead of the learned graph (same k and normalisation) [P]."""

    graph = "knn_euclidean"


@register_aggregator("msrl_knn_cosine")
class MSRLKNNCosine(MSRLAggregator):
    """Ablation: static cosine kNN graph instead of the learned graph (same k and normalisation) [P]."""

    graph = "knn_cosine"


@register_aggregator("msrl_random_gsl")
class MSRLRandomGSL(MSRLAggregator):
    """Ablation: no GSL pre-training; learner at w = 1, encoders and GCN at random init [P]."""

    use_pretraining = False


@register_aggregator("msrl_online_buffer")
class MSRLOnlineBuffer(MSRLAggregator):
    """Ablation: the buffer is fed by online features (the inductor's placeholder genomics) [P]."""

    buffer_source = "online"
