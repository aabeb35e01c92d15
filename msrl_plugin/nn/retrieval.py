"""Exact top-m retrieval of buffer rows for the scalable graph forward (``buffer_candidates``).

At K = 1e5 buffer rows one retrieval reads every key once: it is bound by memory bandwidth, not arithmetic.
Keys are therefore cached in the graph's own similarity space (the learner embedding, of the WSI half only
with ``similarity="wsi"``: 768 of the 1536 node dims at the paper's size, exact) and, for inner-product
ranking, stored as float16 (``candidate_keys="float16"``): a quarter of the float32 1536-d keys. The float16
scan only draws a shortlist of ``SHORTLIST_FACTOR * m`` rows; those are re-scored in float32 from the buffer
rows themselves, so the returned top-m is exact unless a true top-m row falls out of a shortlist twice as
long as m (tested; the measured recall is in ``benchmarks/README.md``, "Training speed and buffer retrieval").
"""
from __future__ import annotations

from collections.abc import Callable

import torch

KEY_DTYPES = ("float16", "float32")
SHORTLIST_FACTOR = 2  # [D] float16 scan keeps 2m rows for the exact float32 re-scoring (m extra rows ~ free)
BLOCK = 65536  # buffer rows per retrieval block: memory O(B * block), not O(B * K)
CONVERT_PIECE = 4096  # [D] float16 key rows converted to float32 at a time on CPUs (3 MB at 768-d: in cache)


@torch.no_grad()
def blockwise_topk(queries: torch.Tensor, keys: torch.Tensor, m: int, allowed: torch.Tensor | None = None,
                   metric: str = "ip", block_size: int = BLOCK) -> torch.Tensor:
    """Exact top-m keys per query over key blocks: ``(B, d), (K, d) -> (B, min(m, K))`` int64, best first.

    ``metric``: ``"ip"`` (inner product: pass L2-normalised rows for cosine; unlike
    :func:`~msrl_plugin.nn.graph_learner.topk_candidates` the keys are not re-normalised on every call,
    which at K = 1e5 would cost a K x d pass and copy per query) or ``"euclidean"``. Forbidden keys
    (``allowed`` (B, K) False) come last, so they are returned only when a query has fewer than m allowed
    keys. Scores are computed in the keys' dtype (queries are cast to it). Memory O(B * block).
    """
    if metric not in ("ip", "euclidean"):
        raise ValueError(f"metric must be 'ip' or 'euclidean', got {metric!r}")
    m = min(m, keys.shape[0])
    queries = queries.to(keys.dtype) if _native(queries, keys) else queries.float()
    best_val = queries.new_full((queries.shape[0], 0), float("-inf"))
    best_idx = torch.zeros((queries.shape[0], 0), dtype=torch.long, device=queries.device)
    for start in range(0, keys.shape[0], block_size):
        kb = keys[start: start + block_size]
        score = block_scores(queries, kb)
        if metric == "euclidean":
            score = 2 * score - (kb * kb).sum(dim=1)[None]  # -d^2 up to a per-query constant
        if allowed is not None:
            score = score.masked_fill(~allowed[:, start: start + kb.shape[0]], float("-inf"))
        val, idx = score.topk(min(m, kb.shape[0]), dim=1)
        best_val, pos = torch.cat([best_val, val], 1).topk(min(m, best_val.shape[1] + val.shape[1]), dim=1)
        best_idx = torch.cat([best_idx, idx + start], 1).gather(1, pos)
    return best_idx


def _native(queries: torch.Tensor, keys: torch.Tensor) -> bool:
    """Whether ``queries @ keys.T`` runs at memory speed in the keys' dtype: float32, any GPU, or one query on
    a CPU (a float16 GEMV; float16 GEMMs of several queries are emulated on CPUs without AVX512-FP16, slower
    than float32)."""
    return keys.dtype == torch.float32 or keys.device.type != "cpu" or queries.shape[0] == 1


def block_scores(queries: torch.Tensor, keys: torch.Tensor, piece: int = CONVERT_PIECE) -> torch.Tensor:
    """``queries @ keys.T``: in the keys' dtype where that is native (:func:`_native`), else on float32 copies
    of cache-sized pieces of the keys (the float16 storage still halves the bytes read from memory)."""
    if _native(queries, keys):
        return queries.to(keys.dtype) @ keys.t()
    queries = queries.float()
    return torch.cat([queries @ keys[i: i + piece].float().t() for i in range(0, len(keys), piece)], dim=1)


@torch.no_grad()
def shortlist_topk(queries: torch.Tensor, keys: torch.Tensor, m: int, allowed: torch.Tensor,
                   exact_keys: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Top-m by inner product: a float16 (``keys``' dtype) scan for ``SHORTLIST_FACTOR * m`` rows, then exact
    float32 re-scoring of that shortlist. ``(B, d) fp32, (K, d), (B, K) bool -> (B, min(m, K))``, best first.

    ``exact_keys(rows (B, s)) -> (B, s, d)`` float32 keys of those rows, recomputed from the buffer. Forbidden
    rows rank last, as in :func:`blockwise_topk`. With a shortlist of every row (``2m >= K``) it is exact.
    """
    m = min(m, keys.shape[0])
    short = blockwise_topk(queries, keys, SHORTLIST_FACTOR * m, allowed, "ip")
    score = torch.einsum("bd,bsd->bs", queries.float(), exact_keys(short).float())
    score = score.masked_fill(~allowed.gather(1, short), float("-inf"))
    return short.gather(1, score.topk(m, dim=1).indices)


def faiss_candidates(queries: torch.Tensor, index, valid_rows: torch.Tensor, allowed: torch.Tensor,
                     m: int) -> torch.Tensor | None:
    """Top-m allowed rows from a FAISS inner-product index over the valid rows (L2-normalised embeddings).

    Returns None when some query has fewer than m allowed rows in reach (the caller falls back to torch).
    """
    n_excluded = int((~allowed[:, valid_rows]).sum(dim=1).max()) if len(valid_rows) else 0
    reach = min(len(valid_rows), m + n_excluded)
    if reach < m:
        return None
    _, found = index.search(queries.float().cpu().contiguous().numpy(), reach)
    rows = valid_rows.cpu()[torch.from_numpy(found).clamp_min(0)]
    ok = allowed.cpu().gather(1, rows) & torch.from_numpy(found >= 0)
    if (ok.sum(dim=1) < m).any():
        return None
    # stable sort keeps FAISS's similarity order among the allowed rows; take the first m of each query
    order = torch.sort((~ok).to(torch.int8), dim=1, stable=True).indices[:, :m]
    return rows.gather(1, order).to(queries.device)


def import_faiss():
    try:
        import faiss
    except ImportError as exc:
        raise ImportError("candidate_search='faiss' needs the faiss package: pip install "
                          "'msrl-plugin[faiss]' (or use candidate_search='torch', exact too)") from exc
    return faiss
