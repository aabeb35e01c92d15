"""Slide encoders by name (msrl_plugin.wsi_encoders), MSRL's named parts, and the MSRL -> ABMIL reduction."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from _cohorts import easy_survival_cohort, labelled_genomics_cohort

from msrl_plugin import create_aggregator
from msrl_plugin.aggregators.msrl_parts import TARGET_UPDATES, register_target_update
from msrl_plugin.errors import MSRLPluginError
from msrl_plugin.nn.abmil import GatedAttentionPool
from msrl_plugin.nn.torchmil_encoders import TORCHMIL_MODELS, torchmil_available
from msrl_plugin.wsi_encoders import build_wsi_encoder, check_wsi_encoder, list_wsi_encoders

TRAINING = dict(max_epochs=2, lr=1e-3, batch_size=4, max_patches=16, seed=3, precision="fp32", device="cpu")


def test_abmil_is_the_default_encoder_and_keeps_the_weights_layout():
    enc = build_wsi_encoder("abmil", 8, 16, None, 0.25)
    assert isinstance(enc, GatedAttentionPool) and enc.out_dim == 16
    model = create_aggregator("msrl_h", embed_dim=16, **TRAINING)
    assert model.wsi_encoder == "abmil"
    net = model._build_model(8, 0, 4)
    keys = {k for k in net.state_dict() if k.startswith("wsi_encoder.")}
    assert keys == {f"wsi_encoder.{k}" for k in GatedAttentionPool(8, 16, 8).state_dict()}
    assert "abmil" in list_wsi_encoders() and list_wsi_encoders()["abmil"] is None


def test_an_unknown_encoder_is_one_error_line_before_any_bag_is_read():
    with pytest.raises(MSRLPluginError, match="unknown slide encoder") as info:
        create_aggregator("msrl", wsi_encoder="nope")
    assert "\n" not in str(info.value) and "abmil" in str(info.value)


@pytest.mark.parametrize("form", ["msrl", "msrl_h"])
def test_msrl_without_a_graph_trains_the_same_function_as_abmil(form):
    """graph_forward='none' reduces MSRL to ABMIL over its encoder (msrl_parts' docstring): equal predictions."""
    cohort = labelled_genomics_cohort(n=24) if form == "msrl" else easy_survival_cohort(n=24, dim=8)
    abmil = create_aggregator("abmil", hidden_dim=32, attn_dim=8, dropout=0.25, **TRAINING).fit(cohort)
    msrl = create_aggregator(form, graph_forward="none", embed_dim=32, attn_dim=8, dropout=0.25,
                             **TRAINING).fit(cohort)
    losses = [[h["train_loss"] for h in m.history_] for m in (msrl, abmil)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    a, m = abmil.predict(cohort), msrl.predict(cohort)
    columns = list(a.select_dtypes("number").columns)
    np.testing.assert_allclose(m[columns].to_numpy(float), a[columns].to_numpy(float), rtol=1e-5, atol=1e-6)
    assert m["neighbour_coverage"].isna().all()
    # and the reduction really is structural: borrowing on, the same seed gives another function
    teacher = {"genomic_teacher_steps": 0} if form == "msrl" else {}
    borrowing = create_aggregator(form, embed_dim=32, attn_dim=8, pretrain_epochs=0, **teacher, **TRAINING)
    borrowing.fit(cohort)
    assert not np.allclose(borrowing.predict(cohort)[columns[0]], a[columns[0]])


def test_graph_none_checkpoint_round_trip(tmp_path):
    cohort = easy_survival_cohort(n=16, dim=8)
    model = create_aggregator("msrl_h", graph_forward="none", embed_dim=16, **TRAINING).fit(cohort)
    loaded = type(model).load(model.save(tmp_path / "m.pt"))
    np.testing.assert_allclose(loaded.predict(cohort)["risk"], model.predict(cohort)["risk"], rtol=1e-6)
    assert set(loaded.attention_scores(cohort)) == set(cohort.case_ids)


def _buffer_after(epochs: int, update: str) -> torch.Tensor:
    kw = {**TRAINING, "max_epochs": epochs}
    model = create_aggregator("msrl_h", embed_dim=16, pretrain_epochs=0, buffer_update=update, buffer_size=8, **kw)
    return model.fit(easy_survival_cohort(n=16, dim=8)).model_.buffer.features.clone()


def test_buffer_update_is_a_named_part():
    """``frozen`` keeps the initial rows (the same as after 0 epochs); ``fifo`` [P] replaces them."""
    assert torch.equal(_buffer_after(2, "frozen"), _buffer_after(0, "frozen"))
    assert not torch.equal(_buffer_after(2, "fifo"), _buffer_after(0, "fifo"))


def test_target_update_is_a_named_registered_part():
    cohort = easy_survival_cohort(n=16, dim=8)
    seen = []

    @register_target_update("test_recording")
    def _record(target, online, momentum):
        seen.append(momentum)

    try:  # registered after import, accepted by the keyword's constraint and called after every step
        create_aggregator("msrl_h", embed_dim=16, pretrain_epochs=0, target_update="test_recording",
                          ema_momentum=0.5, **TRAINING).fit(cohort)
        assert seen and set(seen) == {0.5}
    finally:
        TARGET_UPDATES.pop("test_recording")
    with pytest.raises(MSRLPluginError, match="target_update"):
        create_aggregator("msrl", target_update="nope")


def test_torchmil_names_are_listed_with_their_requirement(monkeypatch):
    from msrl_plugin import wsi_encoders
    from msrl_plugin.nn import torchmil_encoders

    monkeypatch.setattr(wsi_encoders, "torchmil_available", lambda: False)
    listed = list_wsi_encoders()
    assert all(listed[name] == "needs msrl-plugin[torchmil]" for name in TORCHMIL_MODELS)
    with pytest.raises(MSRLPluginError, match=r"needs msrl-plugin\[torchmil\]") as info:
        check_wsi_encoder("transmil")
    assert "\n" not in str(info.value)
    with pytest.raises(MSRLPluginError, match=r"'dsmil' needs msrl-plugin\[torchmil\]"):
        create_aggregator("msrl", wsi_encoder="dsmil")
    assert torchmil_encoders.TORCHMIL_MODELS is TORCHMIL_MODELS


@pytest.mark.skipif(not torchmil_available(), reason="needs msrl-plugin[torchmil]")
@pytest.mark.parametrize("name", sorted(TORCHMIL_MODELS))
def test_torchmil_encoders_embed_each_bag_alone(name):
    torch.manual_seed(0)
    enc = build_wsi_encoder(name, 8, 16, 8, 0.0).eval()
    x, mask = torch.randn(3, 12, 8), torch.ones(3, 12, dtype=torch.bool)
    mask[1, 7:] = False
    coords = torch.rand(3, 12, 2) * 2048  # read by Patch-GCN only
    enc.coords = coords
    h, scores = enc(x, mask)
    assert h.shape == (3, 16) and scores is None
    if name != "dtfdmil":  # DTFD-MIL shuffles its pseudo-bags at random on every call
        enc.coords = coords[1:2, :7]
        alone, _ = enc(x[1:2, :7], None)
        torch.testing.assert_close(alone, h[1:2], rtol=1e-4, atol=1e-5)


def test_a_checkpoint_written_before_these_keywords_loads_with_the_abmil_encoder(tmp_path):
    import json

    cohort = easy_survival_cohort(n=16, dim=8)
    model = create_aggregator("msrl_h", embed_dim=16, pretrain_epochs=0, **TRAINING).fit(cohort)
    ckpt = model.checkpoint()
    params = json.loads(ckpt["params"])
    for name in ("wsi_encoder", "graph_forward", "buffer_update", "target_update"):
        params.pop(name)  # as an older msrl-plugin wrote it
    torch.save({**ckpt, "params": json.dumps(params)}, tmp_path / "old.pt")
    loaded = type(model).load(tmp_path / "old.pt")
    assert (loaded.wsi_encoder, loaded.graph_forward) == ("abmil", "per_case")
    np.testing.assert_allclose(loaded.predict(cohort)["risk"], model.predict(cohort)["risk"], rtol=1e-6)
