"""A training case's graph holds none of its own answer: its buffer row is out of the graph (not only its direct
edge), the buffer holds one row per case, and a fixed genomic teacher runs without dropout (issue 21, item 1)."""
from __future__ import annotations

import pytest
import torch
from _cohorts import easy_survival_cohort

from msrl_plugin import create_aggregator
from msrl_plugin.aggregators.msrl import MSRLAggregator
from msrl_plugin.nn.buffer import FeatureBuffer
from msrl_plugin.nn.msrl import MSRLNetwork

FEAT, GEN, EMB = 12, 6, 8


def _net(buffer_candidates: int | None = None, similarity: str = "fused", graph: str = "learned",
         borrow: str = "genomic_risk") -> MSRLNetwork:
    torch.manual_seed(0)
    net = MSRLNetwork(FEAT, GEN, 4, embed_dim=EMB, k=3, buffer_size=16, buffer_candidates=buffer_candidates,
                      similarity=similarity, graph=graph, borrow=borrow, readout="node+case").eval()
    g = torch.Generator().manual_seed(1)
    net.buffer.initialise(torch.randn(16, 2 * EMB, generator=g), [f"train{i}" for i in range(16)])
    return net


@pytest.mark.parametrize("buffer_candidates", [None, 6, 16])
@pytest.mark.parametrize("similarity,graph", [("fused", "learned"), ("wsi", "learned"), ("fused", "knn_cosine")])
def test_the_own_rows_genomics_move_neither_z_nor_the_prediction(buffer_candidates, similarity, graph):
    net = _net(buffer_candidates, similarity, graph)
    torch.manual_seed(3)
    x, mask = torch.randn(2, 7, FEAT), torch.ones(2, 7, dtype=torch.bool)
    case_ids = ["train5", "train9"]  # both sit in the buffer, as every training case may
    with torch.no_grad():
        f = net.online_nodes(net.encode_wsi(x, mask))
        z0, _, _ = net.graph_forward(f, case_ids)
        p0 = net(x, mask, case_ids=case_ids)
        net.buffer.features[5, :EMB] += 5 * torch.randn(EMB)  # only train5's own row, its genomic half
        z1, _, _ = net.graph_forward(f, case_ids)
        p1 = net(x, mask, case_ids=case_ids)
    torch.testing.assert_close(z1[0], z0[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(p1[0], p0[0], atol=1e-6, rtol=0)
    if buffer_candidates is None:  # train9's graph holds train5's row: the edit is visible there
        assert not torch.allclose(z1[1], z0[1])


def test_the_graph_without_the_own_row_equals_the_graph_of_a_buffer_that_never_held_it():
    net = _net()
    torch.manual_seed(4)
    x, mask = torch.randn(1, 7, FEAT), torch.ones(1, 7, dtype=torch.bool)
    with torch.no_grad():
        got = net(x, mask, case_ids=["train5"])
        other = _net()
        feats, ids, _ = other.buffer.snapshot()
        keep = [i for i in range(16) if i != 5]
        other.buffer = FeatureBuffer(15, 2 * EMB)
        other.buffer.initialise(feats[keep], [ids[i] for i in keep])
        want = other(x, mask, case_ids=["test"])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_the_buffer_holds_one_row_per_case():
    buf = FeatureBuffer(4, 2)
    buf.initialise(torch.zeros(2, 2), ["a", "b"])
    buf.enqueue(torch.ones(3, 2), ["a", "c", "c"])  # "a" is refreshed in place; "c" twice keeps one row
    feats, ids, valid = buf.snapshot()
    held = [i for i, v in zip(ids, valid.tolist()) if v]
    assert sorted(held) == ["a", "b", "c"] and len(held) == len(set(held))
    assert torch.equal(feats[ids.index("a")], torch.ones(2))
    buf.enqueue(torch.full((3, 2), 2.0), ["d", "e", "a"])  # FIFO for the new cases, a refresh for "a"
    _, ids, valid = buf.snapshot()
    held = [i for i, v in zip(ids, valid.tolist()) if v]
    assert len(held) == len(set(held)) == 4 and "a" in held and "e" in held


@pytest.mark.parametrize("train_gene_encoder", [None, True])
def test_a_fixed_teacher_runs_in_eval_mode_during_fine_tuning(train_gene_encoder, monkeypatch):
    seen: list[bool] = []
    original = MSRLAggregator._graph_loss

    def spy(self, net, *args, **kwargs):
        seen.append(net.gene_encoder.training)
        return original(self, net, *args, **kwargs)

    monkeypatch.setattr(MSRLAggregator, "_graph_loss", spy)
    cohort = easy_survival_cohort(n=40, genomics_dim=6, seed=2)
    create_aggregator("msrl", max_epochs=1, pretrain_epochs=0, embed_dim=16, batch_size=20, k=3,
                      buffer_size=32, genomic_teacher_steps=5, train_gene_encoder=train_gene_encoder).fit(cohort)
    # None = fixed for WSI-only msrl: no AlphaDropout in what it lends and distils; True = trained, with dropout
    assert seen and set(seen) == {train_gene_encoder is True}


def test_cross_fitted_risks_carry_no_memorised_label():
    from msrl_plugin.nn.genomic_teacher import crossfit_genomic_risk, prefit_genomic_teacher
    from msrl_plugin.nn.snn import SNN

    torch.manual_seed(0)
    genomics, y = torch.randn(60, 40), torch.randn(60)  # genomics of pure noise: any fit to y is memory

    def loss(logits, targets):
        return torch.nn.functional.mse_loss(logits[:, 0], targets["y"])

    encoder, head = SNN(40, (32, 32), 0.0, "selu"), torch.nn.Linear(32, 1)
    oof = crossfit_genomic_risk(encoder, head, genomics, {"y": y}, loss, 400, torch.Generator().manual_seed(1), 5)
    prefit_genomic_teacher(encoder, head, genomics, {"y": y}, loss, 400, torch.Generator().manual_seed(1))
    with torch.no_grad():
        in_sample = head(encoder(genomics))[:, 0]

    def corr(a, b):
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])

    assert corr(in_sample, y) > 0.8          # the teacher fitted on every case remembers their outcomes
    assert abs(corr(oof[:, 0], y)) < 0.35    # out of fold, nothing of a case's own outcome is left


def test_msrl_rows_lend_their_cross_fitted_risk_and_the_control_moves_it(tmp_path):
    from msrl_plugin.aggregators.base import Aggregator
    from msrl_plugin.aggregators.msrl_fitted import shuffle_buffer_genomics

    cohort = easy_survival_cohort(n=40, genomics_dim=6, seed=2)
    model = create_aggregator("msrl", max_epochs=1, pretrain_epochs=0, embed_dim=16, batch_size=20, k=3,
                              buffer_size=32, genomic_teacher_steps=5).fit(cohort)
    buf = model.model_.buffer
    _, ids, valid = buf.snapshot()
    rows = valid.nonzero().squeeze(1)
    assert buf.lent_dim == model.task_.n_outputs and len(buf.lent_table_) == 40
    torch.testing.assert_close(buf.lent[rows], buf.lent_of([ids[i] for i in rows.tolist()]))
    shuffled = shuffle_buffer_genomics(model).model_.buffer
    assert not torch.equal(shuffled.lent[rows], buf.lent[rows])
    model.save(tmp_path / "m.pt")
    loaded = Aggregator.load(tmp_path / "m.pt")
    assert loaded.model_.buffer.lent_table_ == buf.lent_table_
    import numpy as np

    np.testing.assert_allclose(loaded.predict(cohort).to_numpy(float), model.predict(cohort).to_numpy(float),
                               atol=1e-6)
    off = create_aggregator("msrl", max_epochs=1, pretrain_epochs=0, embed_dim=16, batch_size=20, k=3,
                            buffer_size=32, genomic_teacher_steps=5, teacher_crossfit=0).fit(cohort)
    assert off.model_.buffer.lent_dim == 0
