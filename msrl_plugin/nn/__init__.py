"""Pure torch modules of MSRL: they compute, and know nothing of files or CLIs."""

from msrl_plugin.nn.buffer import FeatureBuffer
from msrl_plugin.nn.ema import ema_update, make_target
from msrl_plugin.nn.gcn import GCN, ProjectionHead
from msrl_plugin.nn.graph_learner import (
    GraphLearner,
    KNNGraph,
    LearnedGraph,
    cosine_similarity_matrix,
    knn_graph,
    sparsify_and_normalise,
    symmetric_normalise,
    topk_selection,
)
from msrl_plugin.nn.losses import balanced_bce, info_nce
from msrl_plugin.nn.snn import SNN

__all__ = [
    "GCN",
    "SNN",
    "FeatureBuffer",
    "GraphLearner",
    "KNNGraph",
    "LearnedGraph",
    "ProjectionHead",
    "balanced_bce",
    "cosine_similarity_matrix",
    "ema_update",
    "info_nce",
    "knn_graph",
    "make_target",
    "sparsify_and_normalise",
    "symmetric_normalise",
    "topk_selection",
]
