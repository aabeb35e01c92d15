"""Graph learner, static kNN graphs, candidate mode, GCN and SNN."""

import math

import pytest
import torch

from msrl_plugin.nn import (
    GCN,
    SNN,
    GraphLearner,
    KNNGraph,
    ProjectionHead,
    knn_graph,
    sparsify_and_normalise,
    symmetric_normalise,
    topk_selection,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _unnormalised(sim, k, mask=None):
    keep = topk_selection(sim, k, mask)
    a = torch.relu(torch.where(keep, sim, torch.zeros_like(sim)))
    return (a + a.t()) / 2


def _check_normalised(adj, a):
    deg = a.sum(1) + 1e-10
    torch.testing.assert_close(adj, a / deg.sqrt()[:, None] / deg.sqrt()[None, :])


def test_learner_output_is_symmetric_nonnegative_normalised():
    x = torch.randn(40, 16)
    learner = GraphLearner(16, k=5)
    graph = learner(x)
    adj = graph.adj
    assert adj.shape == (40, 40) and graph.similarity.shape == (40, 40)
    torch.testing.assert_close(adj, adj.t())
    assert (adj >= 0).all()
    _check_normalised(adj, _unnormalised(graph.similarity, 5))
    assert ((adj > 0).sum(1) <= 2 * 5 + 2).all()
    torch.testing.assert_close(graph.similarity.diagonal(), torch.ones(40))


def test_similarity_is_cosine_of_hadamard_embedding():
    x = torch.randn(10, 6)
    learner = GraphLearner(6, n_layers=2, activation="tanh")
    with torch.no_grad():
        learner.weights[0].copy_(torch.rand(6))
        learner.weights[1].copy_(torch.rand(6))
    e = torch.tanh(x * learner.weights[0]) * learner.weights[1]
    e = e / e.norm(dim=1, keepdim=True)
    torch.testing.assert_close(learner(x).similarity, e @ e.t())
    assert all(torch.equal(w, torch.ones(6)) for w in GraphLearner(6).weights)


def test_topk_selection_keeps_k_plus_one_per_row():
    sim = torch.randn(30, 30)
    keep = topk_selection(sim, 4)
    assert (keep.sum(1) == 5).all()
    # the kept entries are the row's largest
    assert (
        sim.masked_fill(~keep, float("inf")).min(1).values
        >= sim.masked_fill(keep, -float("inf")).max(1).values
    ).all()


def test_mask_respected_and_rows_keep_k_valid_neighbours():
    n, k = 30, 4
    x = torch.randn(n, 8)
    mask = torch.rand(n, n) < 0.5
    mask = mask | mask.t() | torch.eye(n, dtype=torch.bool)
    mask[0] = False
    mask[:, 0] = False
    mask[0, 0] = mask[0, 1] = mask[1, 0] = True  # row 0: only 2 allowed entries, fewer than k+1
    graph = GraphLearner(8, k=k)(x, mask)
    assert (graph.adj[~mask] == 0).all()
    keep = topk_selection(graph.similarity, k, mask)
    assert not (keep & ~mask).any()
    assert (keep.sum(1) == torch.clamp(mask.sum(1), max=k + 1)).all()
    assert keep[0].sum() == 2


def test_k_larger_than_n():
    x = torch.randn(5, 4)
    graph = GraphLearner(4, k=50)(x)
    _check_normalised(graph.adj, _unnormalised(graph.similarity, 50))
    assert torch.isfinite(graph.adj).all()


def test_gradients_reach_weights_and_features():
    x = torch.randn(20, 8, requires_grad=True)
    learner = GraphLearner(8, k=3)
    graph = learner(x)
    (graph.adj * torch.randn(20, 20)).sum().backward()
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in learner.weights)
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_knn_graph_same_postprocessing(metric):
    x = torch.randn(25, 6)
    graph = knn_graph(x, 3, metric)
    assert (graph.similarity >= -1).all()
    torch.testing.assert_close(graph.adj, graph.adj.t())
    assert (graph.adj >= 0).all()
    _check_normalised(graph.adj, _unnormalised(graph.similarity, 3))
    torch.testing.assert_close(KNNGraph(3, metric)(x).adj, graph.adj)


def test_euclidean_knn_selects_nearest_by_distance():
    x = torch.randn(25, 6)
    keep = topk_selection(knn_graph(x, 3, "euclidean").similarity, 3)
    nearest = torch.zeros_like(keep).scatter_(1, (-torch.cdist(x, x)).topk(4, dim=1).indices, True)
    assert torch.equal(keep, nearest)
    assert (knn_graph(x, 3, "euclidean").similarity > 0).all()


def test_cosine_knn_equals_untrained_single_layer_learner():
    x = torch.randn(25, 6)
    torch.testing.assert_close(knn_graph(x, 3).adj, GraphLearner(6, n_layers=1, k=3)(x).adj)


def _hand_gcn(gcn, x, adj):
    h = x
    for i, layer in enumerate(gcn.layers):
        h = adj @ (h @ layer.lin.weight.t()) + layer.bias
        if i < len(gcn.layers) - 1:
            h = torch.relu(h)
    return h


def test_gcn_equals_hand_written_propagation():
    x = torch.randn(12, 6)
    adj = torch.relu(torch.randn(12, 12))  # asymmetric on purpose: out[i] = sum_j A[i, j] h_j
    gcn = GCN(6, 10, 3, n_layers=2, dropout=0.5, dropedge=0.5).eval()
    torch.testing.assert_close(gcn(x, adj), _hand_gcn(gcn, x, adj))
    gcn3 = GCN(6, 10, 3, n_layers=3).eval()
    torch.testing.assert_close(gcn3(x, adj), _hand_gcn(gcn3, x, adj))


def test_gcn_gradient_flows_into_adjacency_and_learner():
    x = torch.randn(15, 8)
    learner = GraphLearner(8, k=4)
    gcn = GCN(8, 8, 4).eval()
    adj = learner(x).adj
    adj.retain_grad()
    gcn(x, adj).pow(2).sum().backward()
    assert adj.grad is not None and adj.grad[adj > 0].abs().sum() > 0
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in learner.weights)


def test_dropedge_only_in_training():
    x = torch.randn(12, 6)
    adj = symmetric_normalise(torch.rand(12, 12))
    gcn = GCN(6, 8, 3, dropout=0.0, dropedge=0.5)
    torch.testing.assert_close(gcn.eval()(x, adj), _hand_gcn(gcn, x, adj))
    assert not torch.allclose(gcn.train()(x, adj), _hand_gcn(gcn, x, adj))


def test_projection_head_and_snn_shapes():
    assert ProjectionHead(12, 5)(torch.randn(3, 12)).shape == (3, 5)
    snn = SNN(40, (32, 16), activation="elu")
    assert snn(torch.randn(4, 40)).shape == (4, 16) and snn.out_dim == 16
    lin = snn.net[0]
    assert torch.equal(lin.bias, torch.zeros(32))
    assert abs(lin.weight.std().item() - 1 / math.sqrt(40)) < 0.02
    assert isinstance(SNN(8).net[1], torch.nn.SELU)
    with pytest.raises(ValueError):
        SNN(8, activation="gelu")


@pytest.mark.parametrize("n_layers", [2, 3])
def test_node0_propagation_equals_the_full_gcn_forward_and_backward(n_layers):
    """GCN.node0 (two layers: only node 0's neighbours' first-layer rows) gives the full GCN's node-0 output
    and the same gradients, also for a graph whose node 0 has no neighbour at all."""
    torch.manual_seed(0)
    gcn = GCN(16, 8, 8, n_layers=n_layers, dropout=0.3).eval()
    nodes = torch.randn(4, 30, 16, requires_grad=True)
    sim = torch.randn(4, 30, 30, requires_grad=True)
    adj = sparsify_and_normalise(sim, 5)
    adj = torch.cat([adj[:3], adj[3:] * torch.cat([torch.zeros(1, 30), torch.ones(29, 30)])[None]])  # node 0 alone
    full = gcn(nodes, adj)[:, 0]
    fast = gcn.node0(nodes @ gcn.layers[0].lin.weight.t(), adj)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)
    grads_full = torch.autograd.grad(full.square().sum(), (nodes, sim), retain_graph=True)
    grads_fast = torch.autograd.grad(fast.square().sum(), (nodes, sim))
    for a, b in zip(grads_fast, grads_full):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
