"""MSRL aggregator: leakage guards, batch invariance, learning signals, variants, checkpoint round trip."""
import numpy as np
import pytest
import torch
from _cohorts import easy_survival_cohort

from msrl_plugin import create_aggregator
from msrl_plugin.aggregators.base import Aggregator
from msrl_plugin.errors import MSRLPluginError

FAST = dict(max_epochs=2, pretrain_epochs=2, embed_dim=32, batch_size=16, k=5, buffer_size=64, seed=0)
VARIANTS = ["msrl", "msrl_h", "msrl_multi", "msrl_knn_euclidean", "msrl_knn_cosine", "msrl_random_gsl",
            "msrl_online_buffer"]


@pytest.fixture(scope="module")
def cohort():
    return easy_survival_cohort(n=80, genomics_dim=8, missing_genomics=0.2, seed=4)


@pytest.fixture(scope="module")
def split(cohort):
    return cohort.subset(cohort.case_ids[:60]), cohort.subset(cohort.case_ids[60:])


@pytest.fixture(scope="module")
def fitted(split):
    return create_aggregator("msrl", **FAST).fit(split[0])


def test_buffer_holds_only_training_cases_with_genomics(fitted, split):
    train, test = split
    ids = fitted.buffer_case_ids()
    assert ids and set(ids) <= set(train.case_ids)
    assert not set(ids) & set(test.case_ids)
    with_genomics = {c for c, ok in zip(train.case_ids, train.has_genomics) if ok}
    assert set(ids) <= with_genomics  # cases without genomics never enter the buffer


def test_predictions_are_batch_invariant(fitted, split):
    test = split[1]
    full = fitted.predict(test)["risk"]
    alone = [fitted.predict(test.subset([c]))["risk"].iloc[0] for c in test.case_ids[:5]]
    np.testing.assert_allclose(full.iloc[:5].to_numpy(), alone, atol=1e-5)
    other = fitted.predict(test.subset(test.case_ids[:3] + test.case_ids[10:]))["risk"]
    np.testing.assert_allclose(other.loc[test.case_ids[:3]], full.loc[test.case_ids[:3]], atol=1e-5)


def test_prediction_is_wsi_only(fitted, split):
    test = split[1]
    no_genomics = test.subset(test.case_ids)
    no_genomics.genomics = None
    np.testing.assert_allclose(fitted.predict(test)["risk"], fitted.predict(no_genomics)["risk"], atol=1e-6)


def test_a_case_never_reads_its_own_buffer_row(fitted, split):
    train = split[0]
    neighbours = fitted.buffer_neighbours(train.subset(fitted.buffer_case_ids()[:5]), top=20)
    assert (neighbours["case_id"] != neighbours["neighbour_case_id"]).all()
    assert (neighbours["edge_weight"] > 0).all()


def test_neighbours_are_reported_per_test_case(fitted, split):
    test = split[1]
    table = fitted.buffer_neighbours(test.subset(test.case_ids[:3]), top=4)
    assert set(table["case_id"]) == set(test.case_ids[:3])
    assert table.groupby("case_id").size().max() <= 4
    assert set(table["neighbour_case_id"]) <= set(split[0].case_ids)


def test_training_moves_hadamard_weights_and_encoders(split):
    model = create_aggregator("msrl_random_gsl", **{**FAST, "lr": 1e-2})
    model.fit(split[0])
    omega = torch.cat([w.detach().flatten() for w in model.model_.graph_learner.weights])
    assert not torch.allclose(omega, torch.ones_like(omega))  # learner starts at w = 1
    fresh = create_aggregator("msrl_random_gsl", **{**FAST, "max_epochs": 0}).fit(split[0])
    assert not torch.allclose(model.model_.wsi_encoder.fc[1].weight, fresh.model_.wsi_encoder.fc[1].weight)
    assert not torch.allclose(model.model_.inductor.net[0].weight, fresh.model_.inductor.net[0].weight)


def test_gene_encoder_is_frozen_for_wsi_only_inference_and_trained_for_msrl_multi_by_default(split):
    frozen = create_aggregator("msrl", **FAST).fit(split[0])
    assert not any(p.requires_grad for p in frozen.model_.gene_encoder.parameters())
    multi = create_aggregator("msrl_multi", **FAST).fit(split[0])
    assert all(p.requires_grad for p in multi.model_.gene_encoder.parameters())
    trained = create_aggregator("msrl", **FAST, train_gene_encoder=True).fit(split[0])
    assert all(p.requires_grad for p in trained.model_.gene_encoder.parameters())


def test_genomic_teacher_prefit_learns_and_stays_fixed_when_frozen(split):
    model = create_aggregator("msrl", **FAST, genomic_teacher_steps=60, train_gene_encoder=False)
    model.fit(split[0])
    losses = model.teacher_history_
    assert len(losses) == 60 and np.mean(losses[-5:]) < np.mean(losses[:5])
    net = model.model_
    assert not any(p.requires_grad for p in [*net.gene_encoder.parameters(), *net.genomic_head.parameters()])
    # frozen through fine-tuning: refitting from the same pre-fit with more epochs leaves r_G as it was
    longer = create_aggregator("msrl", **{**FAST, "max_epochs": 4}, genomic_teacher_steps=60,
                               train_gene_encoder=False).fit(split[0])
    assert torch.equal(net.genomic_head.weight, longer.model_.genomic_head.weight)


def test_pretrain_transfer_keeps_named_encoders_at_random_init(split, monkeypatch):
    from msrl_plugin.aggregators.msrl import MSRLAggregator

    seen = {}
    original = MSRLAggregator._transfer

    def spy(self, pre, net, learned_graph):
        original(self, pre, net, learned_graph)
        seen[self.pretrain_transfer] = {
            "wsi": torch.equal(net.wsi_encoder.fc[1].weight, pre.wsi_encoder.fc[1].weight),
            "gene": torch.equal(net.gene_encoder.net[0].weight, pre.gene_encoder.net[0].weight),
            "gcn": all(torch.equal(a, b) for a, b in zip(net.gcn.state_dict().values(),
                                                          pre.finetune_stack.gcn.state_dict().values()))}

    monkeypatch.setattr(MSRLAggregator, "_transfer", spy)
    for transfer in ("all", "wsi+graph", "graph"):
        create_aggregator("msrl", **{**FAST, "max_epochs": 0}, pretrain_transfer=transfer).fit(split[0])
    assert seen["all"] == {"wsi": True, "gene": True, "gcn": True}
    assert seen["wsi+graph"] == {"wsi": True, "gene": False, "gcn": True}
    assert seen["graph"] == {"wsi": False, "gene": False, "gcn": True}


def test_pretraining_loss_decreases(split):
    model = create_aggregator("msrl", **{**FAST, "pretrain_epochs": 25, "pretrain_lr": 3e-3})
    data = model._prepare_fit(split[0])
    model.pretrain(data)
    losses = [h["loss"] for h in model.pretrain_history_]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert {"intra", "inter", "fused"} <= set(model.pretrain_history_[0])


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_fits_predicts_and_round_trips(name, split, tmp_path):
    train, test = split
    model = create_aggregator(name, **{**FAST, "max_epochs": 1, "pretrain_epochs": 1}).fit(train)
    pred = model.predict(test)
    assert list(pred.index) == test.case_ids and np.isfinite(pred["risk"]).all()
    loaded = Aggregator.load(model.save(tmp_path / f"{name}.pt"))
    np.testing.assert_allclose(loaded.predict(test)["risk"], pred["risk"], atol=1e-6)
    assert loaded.buffer_case_ids() == model.buffer_case_ids()


def test_msrl_multi_reads_genomics_at_test(split):
    train, test = split
    model = create_aggregator("msrl_multi", **FAST).fit(train)
    no_genomics = test.subset(test.case_ids)
    no_genomics.genomics = None
    with pytest.raises(MSRLPluginError, match="genomic"):
        model.predict(no_genomics)


def test_online_buffer_ablation_switches_only_the_buffer_source(split):
    train = split[0]
    target = create_aggregator("msrl", **FAST).fit(train)
    online = create_aggregator("msrl_online_buffer", **FAST).fit(train)
    assert target.buffer_case_ids() and online.buffer_case_ids()
    assert target.get_params() == online.get_params()
    assert not torch.allclose(target.model_.buffer.features, online.model_.buffer.features)


def test_msrl_needs_genomics():
    cohort = easy_survival_cohort(n=30)
    with pytest.raises(MSRLPluginError, match="genomics"):
        create_aggregator("msrl", **FAST).fit(cohort)
    create_aggregator("msrl_h", **{**FAST, "max_epochs": 1}).fit(cohort)  # pure WSI needs none


def test_same_seed_same_predictions(split):
    train, test = split
    a = create_aggregator("msrl", **FAST).fit(train).predict(test)
    b = create_aggregator("msrl", **FAST).fit(train).predict(test)
    np.testing.assert_array_equal(a["risk"].to_numpy(), b["risk"].to_numpy())


def test_dense_propagation_equals_torch_geometric_message_passing(split):
    train, test = split
    dense = create_aggregator("msrl", **FAST).fit(train)
    pyg = create_aggregator("msrl", **FAST, propagation="pyg")
    pyg.task_, pyg.feature_dim_, pyg.genomics_columns_ = dense.task_, dense.feature_dim_, dense.genomics_columns_
    pyg.scaler_, pyg.buffer_rows_, pyg.training_case_ids_ = dense.scaler_, dense.buffer_rows_, dense.training_case_ids_
    pyg.model_ = pyg._build_model(dense.feature_dim_, len(dense.genomics_columns_), dense.task_.n_outputs)
    pyg.model_.load_state_dict(dense.model_.state_dict())
    np.testing.assert_allclose(pyg.predict(test)["risk"], dense.predict(test)["risk"], atol=1e-5)


# -- borrowing, alignment and the phi_G fixes ----------------------------------------------------------
def test_borrowed_logits_come_from_the_buffers_real_genomics(fitted, split):
    """The borrowed term is the edge-weighted mean of what the buffer rows lend (their cross-fitted genomic
    risks by default, r_G of their genomic half with ``teacher_crossfit=0``): permuting the rows' genomics
    changes it, and the prediction is the mean of the head and the borrowed term."""
    from msrl_plugin.batching import collate

    net = fitted.model_.eval()
    data = fitted._case_data(split[1])
    batch = collate(data, torch.arange(6))
    with torch.no_grad():
        h = net.encode_wsi(batch.x, batch.mask)
        f = net.online_nodes(h)
        z, graph, _ = net.graph_forward(f, batch.case_ids)
        borrowed = net.borrowed_logits(graph)
        own = net.head(net.readout_features(z, f, h))
        np.testing.assert_allclose(net.logits(z, f, h, graph), (own + borrowed) / 2, atol=1e-6)
        w = graph.adj[:, 0, 1:] / graph.adj[:, 0, 1:].sum(1, keepdim=True)
        rows = net.buffer.lent if net.buffer.lent_dim else net.genomic_head(net.buffer.features[:, : net.embed_dim])
        np.testing.assert_allclose(borrowed, w @ rows, atol=1e-5)
    shuffled = fitted.with_shuffled_buffer(seed=2).model_.eval()
    with torch.no_grad():
        _, graph_s, _ = shuffled.graph_forward(f, batch.case_ids)
        assert not torch.allclose(shuffled.borrowed_logits(graph_s), borrowed)


def test_paper_forms_stay_available(split):
    """readout='node', borrow='none', f_align='paper' give the paper's network (no genomic head)."""
    model = create_aggregator("msrl", **FAST, readout="node", borrow="none", f_align="paper").fit(split[0])
    assert model.model_.genomic_head is None and model.model_.head.in_features == FAST["embed_dim"]
    assert np.isfinite(model.predict(split[1])["risk"]).all()


def test_target_branch_has_its_own_gene_encoder(split, monkeypatch):
    """phi_G is no longer shared with the target (whose eval() disabled the online AlphaDropout), and
    train_gene_encoder=True trains it for msrl too (the genomic teacher loss reaches it)."""
    from msrl_plugin.aggregators.msrl import MSRLAggregator

    start = {}
    original = MSRLAggregator._initialise_buffer

    def record(self, net, data, eligible):  # called after stage 1 is transferred, before fine-tuning
        start[self.train_gene_encoder] = net.gene_encoder.net[0].weight.detach().clone()
        return original(self, net, data, eligible)

    monkeypatch.setattr(MSRLAggregator, "_initialise_buffer", record)
    frozen = create_aggregator("msrl", **FAST, train_gene_encoder=False).fit(split[0])
    trained = create_aggregator("msrl", **FAST, train_gene_encoder=True).fit(split[0])
    assert torch.equal(frozen.model_.gene_encoder.net[0].weight, start[False])
    assert not torch.allclose(trained.model_.gene_encoder.net[0].weight, start[True])


def test_coverage_flags_cases_unlike_the_buffer(fitted, split):
    pred = fitted.predict(split[1])
    assert {"neighbour_coverage", "outside_buffer_coverage"} <= set(pred.columns)
    assert np.isfinite(pred["neighbour_coverage"]).all() and np.isfinite(fitted.coverage_threshold_)
    assert pred["outside_buffer_coverage"].dtype == bool
    train_coverage = fitted.neighbour_coverage(fitted._case_data(split[0]))
    assert np.mean(train_coverage < fitted.coverage_threshold_) == pytest.approx(0.05, abs=0.03)


def test_wsi_similarity_graph_ignores_the_genomic_half(fitted, split):
    """similarity='wsi' (default): the edges come from h alone, so the shuffled-buffer control keeps the very
    same graph and changes only what is borrowed through it; the paper's fused similarity changes edges."""
    from msrl_plugin.batching import collate

    data = fitted._case_data(split[1])
    batch = collate(data, torch.arange(5))
    for model, same in ((fitted, True),
                        (create_aggregator("msrl", **FAST, similarity="fused").fit(split[0]), False)):
        net, shuffled = model.model_.eval(), model.with_shuffled_buffer(seed=3).model_.eval()
        with torch.no_grad():
            f = net.online_nodes(net.encode_wsi(batch.x, batch.mask))
            adj = net.graph_forward(f, batch.case_ids)[1].adj
            adj_s = shuffled.graph_forward(f, batch.case_ids)[1].adj
        assert torch.allclose(adj, adj_s) == same


def test_checkpoints_from_before_the_new_keywords_load_as_trained(split, tmp_path):
    """A checkpoint without borrow/similarity/... (written before they existed) loads with the old network."""
    import json

    old = dict(borrow="none", similarity="fused", f_align="paper", pretrain_inter_level="graph")
    model = create_aggregator("msrl", **FAST, **old, genomic_teacher_steps=0).fit(split[0])
    ckpt = torch.load(model.save(tmp_path / "new.pt"), weights_only=True)
    params = json.loads(ckpt["params"])
    for key in (*old, "genomic_teacher_weight", "distill_weight", "pretrain_holdout", "genomic_teacher_steps",
                "pretrain_transfer"):
        params.pop(key)
    ckpt["params"] = json.dumps(params)
    torch.save(ckpt, tmp_path / "old.pt")
    loaded = Aggregator.load(tmp_path / "old.pt")
    assert (loaded.borrow, loaded.similarity, loaded.genomic_teacher_steps) == ("none", "fused", 0)
    np.testing.assert_allclose(loaded.predict(split[1])["risk"], model.predict(split[1])["risk"], atol=1e-6)
