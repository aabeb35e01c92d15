"""Batches carry each patch's position when the data does, aligned with the (sub)sampled patches."""
import numpy as np
import pandas as pd
import torch

from msrl_plugin import Cohort, InMemoryBags
from msrl_plugin.batching import PatchCoords, collate, load_case_data
from msrl_plugin.nn.torchmil_encoders import neighbour_graph


def test_coords_follow_the_sampled_patches_and_padding():
    sizes = [5, 40, 12]
    feats = {f"s{i}": np.repeat(np.arange(n, dtype=np.float32)[:, None], 3, axis=1) for i, n in enumerate(sizes)}
    coords = {f"s{i}": np.stack([np.arange(n), 2 * np.arange(n)], axis=1) for i, n in enumerate(sizes)}
    ids = [f"c{i}" for i in range(3)]
    cohort = Cohort(pd.DataFrame({"time": [1.0, 2.0, 3.0], "censorship": [0, 1, 0]}, index=ids),
                    {c: [f"s{i}"] for i, c in enumerate(ids)}, InMemoryBags(feats, coords), "survival")
    data = load_case_data(cohort, None, {})
    assert collate(data, torch.arange(3)).coords is None  # only models that read positions pay for them
    data.coords = PatchCoords(data.bags)
    batch = collate(data, torch.arange(3), max_patches=8, generator=torch.Generator().manual_seed(0))
    assert batch.coords.shape == (3, 8, 2)
    real = batch.mask
    # feature value = patch index = coords[:, 0] = coords[:, 1] / 2, for every kept patch; padding is 0
    torch.testing.assert_close(batch.coords[..., 0][real], batch.x[..., 0][real])
    torch.testing.assert_close(batch.coords[..., 1][real], 2 * batch.x[..., 0][real])
    assert (batch.coords[~real] == 0).all()
    assert batch.select(torch.tensor([1])).coords.shape == (1, 8, 2)


def test_neighbour_graph_is_symmetric_normalised_and_local():
    grid = torch.stack([torch.arange(25) % 5, torch.arange(25) // 5], dim=1).float()
    adj = neighbour_graph(grid, 4)
    torch.testing.assert_close(adj, adj.t())
    assert (adj.diagonal() == 0).all()
    linked = adj > 0
    assert linked[12, [7, 11, 13, 17]].all() and not linked[12, 0]  # the centre's 4 grid neighbours, not a corner
    degree = linked.float().sum(1)
    torch.testing.assert_close(adj[12, 7], (degree[12] * degree[7]).rsqrt())
