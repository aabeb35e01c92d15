"""SlideEncoder: TRIDENT's slide-encoder contract, called exactly as TRIDENT's slide-feature step calls it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from _cohorts import easy_survival_cohort

from msrl_plugin import create_aggregator
from msrl_plugin.errors import BadInputError, CheckpointError, MSRLPluginError
from msrl_plugin.slide_encoder import SlideEncoder

DIM = 8



@pytest.fixture(scope="module")
def cohort():
    return easy_survival_cohort(n=36, dim=DIM, seed=3, genomics_dim=4)


@pytest.fixture(scope="module")
def abmil(cohort):
    return create_aggregator("abmil", max_epochs=1, hidden_dim=16, attn_dim=8, device="cpu").fit(
        cohort.subset(cohort.case_ids[:24]))


@pytest.fixture(scope="module")
def msrl(cohort):
    return create_aggregator("msrl", max_epochs=1, pretrain_epochs=1, embed_dim=8, buffer_size=8, k=3,
                             device="cpu").fit(cohort.subset(cohort.case_ids[:24]))


def trident_batch(features: np.ndarray, name: str = "slide") -> dict:
    """The batch WSI.extract_slide_features builds (formats.md §1.5)."""
    n = len(features)
    coords = np.stack([np.arange(n) * 256, np.zeros(n)], axis=1).astype(np.int64)
    return {"features": torch.from_numpy(features).float().unsqueeze(0),
            "coords": torch.from_numpy(coords).unsqueeze(0),
            "attributes": {"patch_size_level0": 256, "name": name, "patch_size": 256,
                           "level0_magnification": 20, "target_magnification": 20.0}}


def trident_call(encoder, batch: dict, device: str = "cpu") -> np.ndarray:
    with torch.inference_mode():
        out = encoder(batch, device)
    return out.float().cpu().numpy().squeeze()


@pytest.mark.parametrize("which", ["abmil", "msrl"])
def test_contract_attributes_and_trident_call(which, request, cohort):
    model = request.getfixturevalue(which)
    encoder = SlideEncoder.from_aggregator(model, f"{which}-uni_v1")
    assert isinstance(encoder, torch.nn.Module)
    assert encoder.enc_name == f"{which}-uni_v1" and encoder.precision == torch.float32
    # MSRL (readout node+case, borrowing): concat(z (d), f = [g~, h] (2d)) then the borrowed logits (4 bins)
    assert encoder.embedding_dim == (256 if which == "abmil" else 3 * model.embed_dim + 4)
    emb = trident_call(encoder, trident_batch(cohort.load_bag(cohort.case_ids[30]).features))
    assert emb.shape == (encoder.embedding_dim,) and emb.dtype == np.float32 and np.isfinite(emb).all()
    assert not any(p.requires_grad for p in encoder.parameters()) and not encoder.training
    assert any(p.requires_grad for p in model.model_.parameters())  # the aggregator's own weights untouched


@pytest.mark.parametrize("which", ["abmil", "msrl"])
def test_head_of_embedding_reproduces_predict(which, request, cohort):
    """The embedding is exactly what the trained head reads: head(embedding) gives the model's predictions."""
    model = request.getfixturevalue(which)
    encoder = SlideEncoder.from_aggregator(model)
    held_out = cohort.subset(cohort.case_ids[24:30])  # not in the buffer
    expected = model.predict(held_out)["risk"].to_numpy()
    embs = np.stack([trident_call(encoder, trident_batch(held_out.load_bag(c).features, c))
                     for c in held_out.case_ids])
    logits = encoder.head(torch.from_numpy(embs))
    risk = model.task_.predictions(logits.detach(), held_out.case_ids)["risk"].to_numpy()
    np.testing.assert_allclose(risk, expected, rtol=1e-5, atol=1e-6)


def test_msrl_training_slide_never_reads_its_own_buffer_row(msrl, cohort):
    """A buffer case named in attributes['name'] is excluded, as predict excludes it."""
    buffered = msrl.buffer_case_ids()[0]
    encoder = SlideEncoder.from_aggregator(msrl)
    feats = cohort.load_bag(buffered).features
    expected = msrl.predict(cohort.subset([buffered]))["risk"].to_numpy()
    emb = trident_call(encoder, trident_batch(feats, name=buffered))
    risk = msrl.task_.predictions(encoder.head(torch.from_numpy(emb)[None]), [buffered])["risk"].to_numpy()
    np.testing.assert_allclose(risk, expected, rtol=1e-5)
    mapped = SlideEncoder.from_aggregator(msrl, case_of_slide={"slide-x": buffered})
    np.testing.assert_allclose(trident_call(mapped, trident_batch(feats, name="slide-x")), emb, rtol=1e-6)


def test_checkpoint_roundtrip_and_two_dim_input(abmil, cohort, tmp_path):
    path = abmil.save(tmp_path / "s_0_checkpoint.pt")
    encoder = SlideEncoder.from_checkpoint(path, "abmil-x")
    feats = cohort.load_bag(cohort.case_ids[31]).features
    a = trident_call(encoder, trident_batch(feats))
    b = trident_call(SlideEncoder.from_aggregator(abmil), {"features": torch.from_numpy(feats)})
    np.testing.assert_allclose(a, b, rtol=1e-6)
    mask = torch.ones(1, len(feats) + 3, dtype=torch.bool)
    mask[0, len(feats):] = False  # padding given with TRIDENT's attn_mask convention (True = valid)
    padded = torch.cat([torch.from_numpy(feats), torch.full((3, DIM), 50.0)])[None]
    np.testing.assert_allclose(trident_call(encoder, {"features": padded, "attn_mask": mask}), a, rtol=1e-5)


def test_bad_inputs_are_reported(abmil, cohort):
    encoder = SlideEncoder.from_aggregator(abmil)
    with pytest.raises(CheckpointError, match=f"trained on \\(1, N, {DIM}\\)"):
        encoder({"features": torch.zeros(1, 5, DIM + 1)}, "cpu")
    with pytest.raises(BadInputError, match="no 'features'"):
        encoder({"coords": torch.zeros(1, 5, 2)}, "cpu")
    with pytest.raises(BadInputError, match="empty bag"):
        encoder({"features": torch.zeros(1, 0, DIM)}, "cpu")
    with pytest.raises(BadInputError, match="not fitted"):
        SlideEncoder.from_aggregator(create_aggregator("abmil"))
    with pytest.raises(MSRLPluginError, match="no slide embedding"):
        fake = create_aggregator("abmil")
        fake.model_, fake.feature_dim_ = torch.nn.Linear(2, 2), 2
        SlideEncoder.from_aggregator(fake)
    if not torch.cuda.is_available():
        with pytest.raises(BadInputError, match="no CUDA device"):
            encoder({"features": torch.zeros(1, 3, DIM)}, "cuda")
