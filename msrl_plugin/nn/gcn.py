"""GCN encoder over a learned, already-normalised dense adjacency, and the contrastive projection head."""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import GCNConv
from torch_geometric.utils import dense_to_sparse

from .dropout import fast_dropout


class GCN(nn.Module):
    """Stack of GCN layers H' = A (H W) + b on a given normalised adjacency A (method.md §2) [S].

    No self loops are added and A is not re-normalised (the graph learner already did both). Each layer is a
    torch-geometric ``GCNConv(normalize=False, add_self_loops=False)`` on the non-zero entries of A, so
    gradients flow into A's values (and on into the graph learner).

    Args:
        in_dim, hidden_dim, out_dim: layer widths in -> hidden (x n_layers-1) -> out
            [D: 768 -> 768 -> 768; fused 1536 -> 768 -> 768].
        n_layers: number of GCN layers [S: 2].
        dropout: feature dropout between layers (after ReLU) [S: 0.5 pre-training; D: 0.25 fine-tuning].
        dropedge: dropout on the dense adjacency values in training, kept values scaled by 1/(1-p)
            [S: 0.5 default; D: 0 during fine-tuning]. One drop pattern per forward, shared by all layers [S].

    Shapes: ``forward(x (N, in_dim), adj (N, N)) -> (N, out_dim)``. ``adj`` need not be symmetric.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        n_layers: int = 2,
        dropout: float = 0.5,
        dropedge: float = 0.0,
    ):
        super().__init__()
        if n_layers < 1:
            raise ValueError("n_layers must be >= 1")
        dims = [in_dim] + [hidden_dim] * (n_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(
            GCNConv(d_in, d_out, normalize=False, add_self_loops=False) for d_in, d_out in pairwise(dims)
        )
        self.dropout, self.dropedge = dropout, dropedge

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        """``x (N, in), adj (N, N) -> (N, out)``, or B independent graphs: ``(B, N, in), (B, N, N) -> (B, N, out)``."""
        adj = fast_dropout(adj, self.dropedge, self.training)
        if adj.dim() == 3:
            b, n = adj.shape[:2]
            edge_index, edge_weight = block_diagonal_edges(adj)
            x = x.reshape(b * n, -1)
        else:
            edge_index, edge_weight = dense_to_sparse(adj)
        # PyG aggregates messages source -> target at edge_index[1]; flip so out[i] = sum_j A[i, j] h_j.
        edge_index = edge_index.flip(0)
        for i, layer in enumerate(self.layers):
            x = layer(x, edge_index, edge_weight)
            if i < len(self.layers) - 1:
                x = fast_dropout(F.relu(x), self.dropout, self.training)
        return x.view(b, n, -1) if adj.dim() == 3 else x

    def node0(self, xw: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        """Each graph's output at node 0: ``xw`` = nodes @ W1^T ``(B, N, d)``, ``adj`` ``(B, N, N)`` -> ``(B, d)``.

        Equals ``self(nodes, adj)[:, 0]`` (out[i] = sum_j A[i, j] h_j W + b per layer) with three savings: the
        first layer's transform arrives precomputed, the last layer is evaluated for node 0 only, and with two
        layers (MSRL's) the first is evaluated only for node 0's neighbours (rows j with A[0, j] != 0; the
        others are multiplied by 0). Dense batched products replace torch-geometric's scatter, which is slow
        for B x N-node graphs on CPU.
        """
        adj = fast_dropout(adj, self.dropedge, self.training)
        if len(self.layers) == 2:
            return self._node0_two_layers(xw, adj)
        h = xw
        for i, layer in enumerate(self.layers):
            rows = adj[:, :1] if i == len(self.layers) - 1 else adj  # the last layer: node 0 only
            if i == 0:
                h = rows @ h + layer.bias
            else:  # (A h) W = A (h W); A h first is cheaper for the single last row
                h = fast_dropout(F.relu(h), self.dropout, self.training)
                h = (rows @ h) @ layer.lin.weight.t() + layer.bias
        return h[:, 0]

    def _node0_two_layers(self, xw: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        first, second = self.layers
        linked = adj[:, 0] != 0  # (B, N): node 0's neighbours (the padding below picks unlinked rows: weight 0)
        width = max(int(linked.sum(dim=1).max()), 1)
        near = linked.to(adj.dtype).topk(width, dim=1, sorted=False).indices  # (B, r)
        rows = adj.gather(1, near[:, :, None].expand(-1, -1, adj.shape[2]))  # (B, r, N)
        h = fast_dropout(F.relu(rows @ xw + first.bias), self.dropout, self.training)  # (B, r, d)
        weights = adj[:, 0].gather(1, near)[:, None, :]  # (B, 1, r): A[0, near]
        return ((weights @ h) @ second.lin.weight.t() + second.bias)[:, 0]


def block_diagonal_edges(adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, N, N)`` dense adjacencies -> edges of their block-diagonal union (node ``b*N + i``).

    (torch-geometric's batched ``dense_to_sparse`` edits its index in place, which breaks autograd.)
    """
    b_idx, row, col = adj.detach().nonzero(as_tuple=True)
    n = adj.shape[1]
    return torch.stack([b_idx * n + row, b_idx * n + col]), adj[b_idx, row, col]


class ProjectionHead(nn.Module):
    """Linear -> ReLU -> Linear for the contrastive losses [S]. (N, in_dim) -> (N, proj_dim) [D: 256]."""

    def __init__(self, in_dim: int, proj_dim: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, proj_dim), nn.ReLU(), nn.Linear(proj_dim, proj_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
