"""torchmil's MIL models as registered baselines and as MSRL's slide encoder (``msrl-plugin[torchmil]``).

Tests that train need torchmil and skip cleanly without it; the listing and the one-line error are tested in a
process where torchmil cannot be imported, whether or not it is installed here."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from _cohorts import easy_classification_cohort, easy_survival_cohort, labelled_genomics_cohort

from msrl_plugin import Cohort, InMemoryBags, create_aggregator, list_aggregators
from msrl_plugin.errors import BadInputError, MSRLPluginError
from msrl_plugin.nn.torchmil_encoders import TORCHMIL_MODELS, torchmil_available

needs_torchmil = pytest.mark.skipif(not torchmil_available(), reason="needs msrl-plugin[torchmil]")
QUICK = dict(hidden_dim=16, max_epochs=1, batch_size=4, max_patches=16, seed=0, device="cpu", precision="fp32")
#: the CLI with torchmil unimportable (``sys.modules[name] = None`` makes ``find_spec`` answer None)
WITHOUT = "import sys; sys.modules['torchmil'] = None; from msrl_plugin.cli import main; main(sys.argv[1:])"


def _cli_without_torchmil(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT, *args], capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": ""})


def test_names_are_registered_with_or_without_torchmil():
    assert set(TORCHMIL_MODELS) <= set(list_aggregators())


def test_without_torchmil_list_models_says_what_they_need_and_using_one_is_one_error_line(tmp_path):
    listing = _cli_without_torchmil("list-models")
    assert listing.returncode == 0, listing.stderr
    lines = {line.split()[0]: line for line in listing.stdout.splitlines() if line.strip()}
    for name in TORCHMIL_MODELS:
        assert "needs msrl-plugin[torchmil]" in lines[name]
    # (MSRL's --param wsi_encoder=dsmil reaches the same check: test_wsi_encoders.py, in-process)
    run = _cli_without_torchmil("train", "--model", "transmil", "--features", str(tmp_path), "--clinical",
                                str(tmp_path / "c.csv"))
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.returncode != 0 and len(errors) == 1, run.stderr
    assert "needs msrl-plugin[torchmil]" in errors[0] and "Traceback" not in run.stderr


def with_coords(cohort: Cohort) -> Cohort:
    """``cohort`` with each bag's patches on a grid (as TRIDENT's coords: level-0 pixels, 256 apart)."""
    feats = {s: cohort.bags.load(s).features for ss in cohort.slides.values() for s in ss}
    coords = {s: 256 * np.stack([np.arange(len(f)) % 7, np.arange(len(f)) // 7], axis=1) for s, f in feats.items()}
    return Cohort(cohort.cases, cohort.slides, InMemoryBags(feats, coords), cohort.task, cohort.genomics)


@needs_torchmil
@pytest.mark.parametrize("name", sorted(TORCHMIL_MODELS))
def test_each_torchmil_baseline_trains_predicts_and_reloads(name, tmp_path):
    survival = with_coords(easy_survival_cohort(n=16, dim=8))
    model = create_aggregator(name, **QUICK).fit(survival)
    risk = model.predict(survival)["risk"]
    assert np.isfinite(risk).all() and len(risk) == 16
    if name != "dtfdmil":  # DTFD-MIL draws its pseudo-bags at random on every call
        loaded = type(model).load(model.save(tmp_path / "m.pt"))
        np.testing.assert_allclose(loaded.predict(survival)["risk"], risk, rtol=1e-5, atol=1e-6)
    classes = create_aggregator(name, **QUICK).fit(with_coords(easy_classification_cohort(n=16, dim=8)))
    assert 0 <= classes.evaluate(with_coords(easy_classification_cohort(n=16, dim=8)))["auc"] <= 1


@needs_torchmil
def test_patch_gcn_reads_the_patches_positions():
    """Moving the patches on the slide (same features) changes Patch-GCN's case embedding; bags without coords
    are one error before training; MSRL, which passes no coords, refuses it as its slide encoder."""
    import torch

    from msrl_plugin.nn.torchmil_encoders import TorchMILEncoder

    torch.manual_seed(0)
    encoder = TorchMILEncoder("patch_gcn", 8, 16, dropout=0.0).eval()
    x = torch.randn(1, 30, 8)
    grid = torch.stack([torch.arange(30) % 6, torch.arange(30) // 6], dim=1).float()[None] * 256
    encoder.coords = grid
    h = encoder(x)[0]
    encoder.coords = grid[:, torch.randperm(30)]
    assert not torch.allclose(h, encoder(x)[0], atol=1e-4)
    with pytest.raises(BadInputError, match="without patch coordinates"):
        create_aggregator("patch_gcn", **QUICK).fit(easy_survival_cohort(n=16, dim=8))
    with pytest.raises(MSRLPluginError, match="reads patch coordinates"):
        create_aggregator("msrl", wsi_encoder="patch_gcn").fit(labelled_genomics_cohort(n=24))


@needs_torchmil
@pytest.mark.parametrize("form", ["msrl", "msrl_h"])
def test_msrl_trains_end_to_end_around_a_torchmil_encoder(form):
    """``wsi_encoder=transmil``: stage 1 pre-trains it, fine-tuning borrows through the buffer as with ABMIL."""
    cohort = labelled_genomics_cohort(n=24) if form == "msrl" else easy_survival_cohort(n=24, dim=8)
    teacher = {"genomic_teacher_steps": 5} if form == "msrl" else {}
    model = create_aggregator(form, wsi_encoder="transmil", embed_dim=16, max_epochs=1, pretrain_epochs=1,
                              batch_size=4, max_patches=16, device="cpu", precision="fp32", **teacher)
    model.fit(cohort)
    assert type(model.model_.wsi_encoder).__name__ == "TorchMILEncoder"
    with pytest.raises(MSRLPluginError, match="no per-patch attention"):  # heatmaps need attention scores
        model.attention_scores(cohort)
    assert np.isfinite(model.predict(cohort).select_dtypes("number").drop(columns="neighbour_coverage")).all().all()
