"""Gated attention-based MIL pooling (Ilse et al. 2018) in CLAM's 'small' configuration."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .dropout import FastDropout


class GatedAttentionPool(nn.Module):
    """Patch features ``(B, N, D)`` (+ mask ``(B, N)`` bool, True = real patch) -> case vector ``(B, H)``.

    fc D -> H (ReLU, dropout), gated attention H -> A (tanh branch x sigmoid branch, dropout 0.25 each
    as in CLAM's ``Attn_Net_Gated``), softmax over patches, attention-weighted sum.
    Returns ``(pooled (B, H), raw attention scores (B, N))``; padded patches score -inf.

    Speed [D, same function as CLAM's layers]: the two attention branches run as one GEMM over their stacked
    weights (parameters and state_dict keep CLAM's two ``Linear`` layers), and dropout masks come from
    :class:`~msrl_plugin.nn.dropout.FastDropout` (the CPU ``bernoulli_`` mask was a large share of a profiled
    step, ``benchmarks/README.md``).
    """

    def __init__(self, in_dim: int, hidden_dim: int = 512, attn_dim: int = 256, dropout: float = 0.25,
                 input_dropout: float = 0.0):
        super().__init__()
        self.fc = nn.Sequential(FastDropout(input_dropout), nn.Linear(in_dim, hidden_dim), nn.ReLU(),
                                FastDropout(dropout))
        self.attn_a = nn.Sequential(nn.Linear(hidden_dim, attn_dim), nn.Tanh(), FastDropout(dropout))
        self.attn_b = nn.Sequential(nn.Linear(hidden_dim, attn_dim), nn.Sigmoid(), FastDropout(dropout))
        self.attn_w = nn.Linear(attn_dim, 1)
        self.out_dim = hidden_dim
        init_xavier(self)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if mask is None or bool(mask.all()):
            h = self.fc(x)
            scores = self.score(h)
            return torch.bmm(torch.softmax(scores, dim=1).unsqueeze(1), h).squeeze(1), scores
        # padded batch: the layers run on the real patches only (concatenated, with segment ids), so
        # padding costs no compute; scores go back to (B, N) with -inf at the padding
        real = x[mask]
        segment = mask.nonzero()[:, 0]
        n_real, pad = real.shape[0], _shape_padding(real.shape[0], x.device)
        if pad:  # zero rows, dropped before the softmax: the same function, a GEMM shape seen before
            real = torch.cat([real, real.new_zeros(pad, real.shape[1])])
        h = self.fc(real)
        packed_scores = self.score(h)[:n_real]
        scores = torch.full(mask.shape, float("-inf"), dtype=packed_scores.dtype, device=x.device)
        scores = scores.masked_scatter(mask, packed_scores)
        # attention-weighted sum of each bag's rows as one (B, N) @ (N, H) product over a block matrix of the
        # softmax weights: a GEMM forward and backward, where a weighted (N, H) copy + index_add cost two
        # elementwise passes and a gather over N x H (profiled: ~8% of a realistic-regime step)
        weights = torch.softmax(scores, dim=1)[mask]
        block = weights.new_zeros(x.shape[0], h.shape[0]).index_put(
            (segment, torch.arange(n_real, device=x.device)), weights)
        return block.to(h.dtype) @ h, scores


    def score(self, h: torch.Tensor) -> torch.Tensor:
        """Raw gated-attention scores ``(..., H) -> (...)``: w^T (tanh(a h) * sigmoid(b h)), dropout on both."""
        a, b = self.attn_a[0], self.attn_b[0]
        both = F.linear(h, torch.cat([a.weight, b.weight]), torch.cat([a.bias, b.bias]))
        ta, sb = both.split(a.out_features, dim=-1)
        return self.attn_w(self.attn_a[2](torch.tanh(ta)) * self.attn_b[2](torch.sigmoid(sb))).squeeze(-1)


#: under autocast the packed patch count is padded up to a multiple of this (see :func:`_shape_padding`)
SHAPE_BUCKET = 64


def _shape_padding(n: int, device: torch.device) -> int:
    """Zero rows that bring ``n`` packed patches up to a multiple of :data:`SHAPE_BUCKET` under bf16 autocast.

    oneDNN builds (JIT-compiles) a bf16 GEMM kernel for every new matrix shape, and a batch of variable-size bags
    is a new shape at nearly every step: measured (issue 23), that made bf16 steps on 64-d bags slower than
    fp32's. With the count bucketed a few dozen shapes recur all fit long. float32 (no JIT) is left unpadded."""
    if not torch.is_autocast_enabled(device.type):
        return 0
    return -n % SHAPE_BUCKET


class ABMIL(nn.Module):
    """The ABMIL baseline: ``GatedAttentionPool`` (D -> 512, attention 256), rho 512 -> 256, head -> n_out.

    ``pool``: another slide encoder in place of the gated attention (``(B, N, D)`` -> ``(B, hidden_dim)``, see
    :mod:`msrl_plugin.wsi_encoders`), e.g. a torchmil model; built by the caller before rho and the head.
    """

    def __init__(self, in_dim: int, n_outputs: int, hidden_dim: int = 512, attn_dim: int = 256,
                 rho_dim: int = 256, dropout: float = 0.25, pool: nn.Module | None = None):
        super().__init__()
        self.pool = GatedAttentionPool(in_dim, hidden_dim, attn_dim, dropout) if pool is None else pool
        self.rho = nn.Sequential(nn.Linear(hidden_dim, rho_dim), nn.ReLU(), FastDropout(dropout))
        self.head = nn.Linear(rho_dim, n_outputs)
        init_xavier(self.rho)
        init_xavier(self.head)

    def embed(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, rho_dim)`` case embedding and ``(B, N)`` raw attention scores."""
        pooled, scores = self.pool(x, mask)
        return self.rho(pooled), scores

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        emb, scores = self.embed(x, mask)
        return self.head(emb), scores


def init_xavier(module: nn.Module) -> None:
    """Xavier-normal weights and zero biases for every Linear (CLAM's ``initialize_weights``)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
