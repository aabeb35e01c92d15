"""Scalable graph forward: per-case graphs over the top-m retrieved buffer rows (issue 5, item 3)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from msrl_plugin.nn.ema import make_target
from msrl_plugin.nn.msrl import CandidateGraph, MSRLNetwork, blockwise_topk, per_case_masks

FEAT, GEN, EMB = 12, 6, 8


def _net(graph: str = "learned", modality: str = "fused", k: int = 3, buffer_size: int = 24,
         buffer_candidates: int | None = None, seed: int = 0, **kw) -> MSRLNetwork:
    torch.manual_seed(seed)
    net = MSRLNetwork(FEAT, GEN if modality == "fused" else 0, 4, embed_dim=EMB, modality=modality,
                      graph=graph, k=k, buffer_size=buffer_size, buffer_candidates=buffer_candidates, **kw)
    with torch.no_grad():  # non-trivial learner weights, so the learner space differs from the raw features
        for w in getattr(net.graph_learner, "weights", []):
            w.copy_(torch.rand_like(w) + 0.5)
    return net


def _fill(net: MSRLNetwork, n_rows: int, seed: int = 1) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    ids = [f"train{i}" for i in range(n_rows)]
    net.buffer.initialise(torch.randn(n_rows, net.buffer.dim, generator=g), ids)
    return ids


def _with_candidates(dense: MSRLNetwork, m: int | None) -> MSRLNetwork:
    other = copy.deepcopy(dense)
    other.buffer_candidates = m
    return other


def _bags(b: int, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 9, FEAT, generator=g)
    mask = torch.ones(b, 9, dtype=torch.bool)
    mask[1:, 6:] = False
    return x, mask


@pytest.mark.parametrize("graph,modality", [("learned", "fused"), ("learned", "wsi"),
                                            ("knn_cosine", "fused"), ("knn_euclidean", "fused")])
def test_candidates_equal_dense_when_m_ge_k(graph, modality):
    dense = _net(graph, modality).eval()
    ids = _fill(dense, 20)  # 20 of 24 rows filled: the 4 empty rows must stay isolated in both paths
    x, mask = _bags(4)
    case_ids = [ids[3], "test0", ids[7], "test1"]  # two cases sit in the buffer: their own rows are excluded
    with torch.no_grad():
        want = dense(x, mask, case_ids=case_ids)
        for m in (24, 40):
            got = _with_candidates(dense, m)(x, mask, case_ids=case_ids)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("graph,modality", [("learned", "fused"), ("learned", "wsi"),
                                            ("knn_euclidean", "fused")])
def test_graph_forward_equals_learner_and_gcn_over_each_case_node_set(graph, modality):
    """The batched graph forward (buffer rows transformed once, last GCN layer at node 0 only) is the
    reference computation: the graph learner and the GCN module over each case's [case; buffer]."""
    net = _net(graph, modality).train()
    ids = _fill(net, 20)
    f = torch.randn(4, net.buffer.dim, requires_grad=True)
    case_ids = [ids[3], "x", ids[7], "y"]
    net.gcn.dropout = 0.0  # no dropout draws, so train mode (gradients) is comparable too
    z, graph_, mask = net.graph_forward(f, case_ids)
    buf, _, valid = net.buffer.snapshot()
    nodes = torch.cat([f[:, None], buf[None].expand(4, -1, -1)], 1)
    ref = net.graph_learner(nodes, per_case_masks(valid, net.buffer.exclusion_mask(case_ids)))
    z_ref = net.gcn(nodes, ref.adj)[:, 0]
    torch.testing.assert_close(graph_.adj, ref.adj, atol=1e-6, rtol=0)
    torch.testing.assert_close(z, z_ref, atol=1e-5, rtol=0)
    (g,) = torch.autograd.grad(z.square().sum(), f)
    (g_ref,) = torch.autograd.grad(z_ref.square().sum(), f)
    torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-4)


def test_candidate_graph_is_the_dense_graph_and_gradients_match():
    dense = _net().train()
    ids = _fill(dense, 24)
    cand = _with_candidates(dense, 24)
    f = torch.randn(3, dense.buffer.dim, requires_grad=True)
    f2 = f.detach().clone().requires_grad_(True)
    torch.manual_seed(5)
    z, graph, mask = dense.graph_forward(f, [ids[0], "a", "b"])
    torch.manual_seed(5)  # same GCN dropout draws
    z2, graph2, mask2 = cand.graph_forward(f2, [ids[0], "a", "b"])
    assert isinstance(graph2, CandidateGraph) and torch.equal(graph2.rows, torch.arange(24).expand(3, -1))
    assert torch.equal(mask, mask2)
    torch.testing.assert_close(graph2.adj, graph.adj)
    torch.testing.assert_close(z2, z, atol=1e-5, rtol=0)
    z.sum().backward()
    z2.sum().backward()
    torch.testing.assert_close(f2.grad, f.grad, atol=1e-5, rtol=0)
    for p, p2 in zip(dense.graph_learner.parameters(), cand.graph_learner.parameters(), strict=True):
        torch.testing.assert_close(p2.grad, p.grad, atol=1e-5, rtol=1e-4)


def test_candidates_are_the_exact_top_m_in_the_learner_space():
    net = _net(buffer_size=50, buffer_candidates=7).eval()
    ids = _fill(net, 50)
    f = torch.randn(5, net.buffer.dim)
    case_ids = [ids[10], ids[11], "x", "y", "z"]
    rows = net.retrieve(f, net.buffer.exclusion_mask(case_ids))
    learner = net.graph_learner
    sim = learner.embed(f) @ learner.embed(net.buffer.features).t()
    sim[0, 10] = sim[1, 11] = float("-inf")  # a case never retrieves its own row
    want = sim.topk(7, dim=1).indices.sort(dim=1).values
    assert torch.equal(rows, want)
    _, graph, mask = net.graph_forward(f, case_ids)
    assert graph.adj.shape == (5, 8, 8) and mask.shape == (5, 8, 8)
    assert torch.equal(graph.rows, want)


def test_blockwise_topk_is_exact():
    q, keys = torch.randn(4, 5), torch.randn(30, 5)
    allowed = torch.rand(4, 30) < 0.7
    got = blockwise_topk(q, keys, 6, allowed, "euclidean", block_size=7)
    d = torch.cdist(q, keys).masked_fill(~allowed, float("inf"))
    assert torch.equal(got.sort(dim=1).values, (-d).topk(6, dim=1).indices.sort(dim=1).values)
    qn, kn = F.normalize(q, dim=1), F.normalize(keys, dim=1)
    got = blockwise_topk(qn, kn, 6, allowed, "ip", block_size=7)
    assert torch.equal(got, (qn @ kn.t()).masked_fill(~allowed, float("-inf")).topk(6, dim=1).indices)
    assert blockwise_topk(qn, kn, 100, block_size=7).shape == (4, 30)


def test_small_m_predictions_are_batch_invariant_and_use_only_candidates():
    net = _net(buffer_size=40, buffer_candidates=6).eval()
    ids = _fill(net, 40)
    x, mask = _bags(4)
    with torch.no_grad():
        batch = net(x, mask, case_ids=["t0", "t1", "t2", "t3"])
        alone = torch.cat([net(x[i:i + 1], mask[i:i + 1], case_ids=[f"t{i}"]) for i in range(4)])
        torch.testing.assert_close(batch, alone, atol=1e-5, rtol=0)
        h = net.encode_wsi(x, mask)
        _, graph, _ = net.graph_forward(net.online_nodes(h), [ids[0], "a", "b", "c"])
    weights = net.neighbour_weights(graph)
    assert weights.shape == (4, 40)
    outside = torch.ones(4, 40, dtype=torch.bool).scatter(1, graph.rows, False)
    assert (weights[outside] == 0).all() and (weights > 0).any()
    assert weights[0, 0] == 0  # the case's own row is never an edge


def test_neighbour_weights_equal_dense_and_target_can_reuse_online_rows():
    dense = _net().eval()
    ids = _fill(dense, 24)
    cand = _with_candidates(dense, 30)
    f = torch.randn(3, dense.buffer.dim)
    with torch.no_grad():
        _, g_dense, _ = dense.graph_forward(f, [ids[1], "a", "b"])
        _, g_cand, _ = cand.graph_forward(f, [ids[1], "a", "b"])
        torch.testing.assert_close(cand.neighbour_weights(g_cand), dense.neighbour_weights(g_dense))
        small = _with_candidates(dense, 5)
        _, g_small, _ = small.graph_forward(f, [ids[1], "a", "b"])
        # the target branch builds its graph over the online branch's rows: entry-by-entry comparable
        target = make_target(small).eval()
        _, g_t, m_t = target.graph_forward(f + 0.01, [ids[1], "a", "b"], candidates=g_small.rows)
    assert torch.equal(g_t.rows, g_small.rows) and g_t.adj.shape == g_small.adj.shape == m_t.shape


def test_retrieval_cache_follows_buffer_and_learner_changes():
    net = _net(buffer_size=30, buffer_candidates=4).eval()
    _fill(net, 30)
    f = torch.randn(2, net.buffer.dim)

    def fresh() -> torch.Tensor:
        clone = copy.deepcopy(net)
        assert clone._keys_cache is None
        return clone.retrieve(f)

    first = net.retrieve(f)
    assert torch.equal(first, fresh())
    net.buffer.enqueue(-f.repeat(2, 1), ["n0", "n1", "n2", "n3"])  # overwrite rows 0-3
    assert torch.equal(net.retrieve(f), fresh())
    with torch.no_grad():
        net.graph_learner.weights[0].mul_(torch.linspace(0.1, 3.0, net.buffer.dim))
    assert torch.equal(net.retrieve(f), fresh())
    state = net.state_dict()
    other = _net(buffer_size=30, buffer_candidates=4, seed=9).eval()
    other.retrieve(f)  # fills its cache, then load_state_dict must invalidate it
    other.load_state_dict(state)
    assert torch.equal(other.retrieve(f), net.retrieve(f))


def test_checkpoints_are_interchangeable_between_dense_and_candidate_modes():
    dense = _net()
    _fill(dense, 24)
    cand = _net(buffer_candidates=8, seed=3)
    cand.load_state_dict(dense.state_dict())
    assert set(cand.state_dict()) == set(dense.state_dict())


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="buffer_candidates"):
        _net(buffer_candidates=0)
    with pytest.raises(ValueError, match="candidate_search"):
        _net(candidate_search="annoy")


class _Allocations(TorchDispatchMode):
    """Counts the elements of every tensor the ops produce (a proxy for memory and work)."""

    def __init__(self):
        super().__init__()
        self.total, self.largest = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.total += t.numel()
                self.largest = max(self.largest, t.numel())
        return out


def _graph_forward_elements(n_rows: int, m: int | None) -> tuple[int, int]:
    torch.manual_seed(0)
    net = MSRLNetwork(FEAT, 0, 4, embed_dim=8, modality="wsi", buffer_size=n_rows, buffer_candidates=m).eval()
    net.buffer.initialise(torch.randn(n_rows, 8), [f"c{i}" for i in range(n_rows)])
    f = torch.randn(1, 8)
    with torch.no_grad(), _Allocations() as count:
        net.graph_forward(f, ["query"])
    return count.total, count.largest


def test_candidate_memory_is_linear_in_k_and_dense_is_quadratic():
    small, big = 500, 2000
    cand_small, _ = _graph_forward_elements(small, 32)
    cand_big, cand_largest = _graph_forward_elements(big, 32)
    dense_small, _ = _graph_forward_elements(small, None)
    dense_big, dense_largest = _graph_forward_elements(big, None)
    assert cand_big / cand_small < 4.5  # K x4: linear
    assert dense_big / dense_small > 12  # K x4: quadratic
    assert cand_largest <= 2 * big * 8  # nothing bigger than O(K d)
    assert dense_largest >= (big + 1) ** 2


def test_faiss_search_equals_torch_search():
    pytest.importorskip("faiss")
    net = _net(buffer_size=60, buffer_candidates=5).eval()
    ids = _fill(net, 50)  # 10 empty rows
    via_faiss = _with_candidates(net, 5)
    via_faiss.candidate_search = "faiss"
    f = torch.randn(6, net.buffer.dim)
    excl = net.buffer.exclusion_mask([ids[0], ids[1], "a", "b", "c", "d"])
    with torch.no_grad():
        assert torch.equal(via_faiss.retrieve(f, excl), net.retrieve(f, excl))
        x, mask = _bags(3)
        torch.testing.assert_close(via_faiss(x, mask), net(x, mask))


def test_faiss_missing_gives_install_hint(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("no faiss here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    with pytest.raises(ImportError, match=r"msrl-plugin\[faiss\]"):
        _net(candidate_search="faiss")


def test_training_step_with_candidates_updates_the_learner():
    net = _net(buffer_size=30, buffer_candidates=6).train()
    _fill(net, 30)
    x, mask = _bags(4)
    logits = net(x, mask, case_ids=["a", "b", "c", "d"])
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in net.graph_learner.weights)


def test_float16_keys_return_the_exact_top_m_and_float32_keys_stay_available():
    exact = _net(buffer_size=3000, buffer_candidates=16, candidate_keys="float32", similarity="wsi").eval()
    ids = _fill(exact, 3000)
    compact = copy.deepcopy(exact)
    compact.candidate_keys = "float16"
    f = torch.randn(20, exact.buffer.dim)
    excl = exact.buffer.exclusion_mask([ids[5], *(f"q{i}" for i in range(19))])
    want = exact.retrieve(f, excl)
    got = compact.retrieve(f, excl)
    assert compact._candidate_keys().dtype == torch.float16 and exact._candidate_keys().dtype == torch.float32
    assert compact._candidate_keys().shape == (3000, EMB)  # similarity="wsi": keys of the WSI half only
    assert torch.equal(got, want)  # the float32 re-scoring of the 2m shortlist restores the exact top-m
    assert 5 not in got[0].tolist()


def test_float16_keys_keep_the_dense_equivalence_and_follow_a_search_switch():
    dense = _net(buffer_size=24)
    ids = _fill(dense, 24)
    x, mask = _bags(3)
    dense.eval()
    with torch.no_grad():
        want = dense(x, mask, case_ids=ids[:3])
        cand = _with_candidates(dense, 24)
        assert cand._key_dtype() == torch.float16
        torch.testing.assert_close(cand(x, mask, case_ids=ids[:3]), want, atol=1e-5, rtol=1e-4)
        cand.candidate_keys = "float32"  # the cache is keyed by the key dtype: rebuilt, not reused
        assert cand._candidate_keys().dtype == torch.float32
    with pytest.raises(ValueError, match="candidate_keys"):
        _net(candidate_keys="int8")


def test_block_scores_equal_the_float32_product_for_one_and_many_queries():
    from msrl_plugin.nn.retrieval import block_scores

    keys = F.normalize(torch.randn(50, 16), dim=1)
    for b in (1, 5):
        q = F.normalize(torch.randn(b, 16), dim=1)
        got = block_scores(q, keys.half(), piece=7)
        torch.testing.assert_close(got.float(), q @ keys.t(), atol=2e-3, rtol=0)
