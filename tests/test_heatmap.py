"""Attention heatmaps: export contents (h5/CSV), PNG rendering, the real-slide overlay and the CLI."""
from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.image import imread, imsave
from msrl_plugin.adapters.bags import read_bag, read_bag_attrs

from msrl_plugin import Cohort, InMemoryBags, create_aggregator
from msrl_plugin.cli import main
from msrl_plugin.errors import MSRLPluginError
from msrl_plugin.heatmap import (
    export_attention,
    infer_patch_size,
    read_attention,
    read_thumbnail,
    render_heatmap,
    slide_attention,
)

ATTRS = {"patch_size_level0": 512.0, "level0_width": 5120, "level0_height": 3072, "name": "s", "overlap": 0}



def tiny_model(dim: int):
    rng = np.random.default_rng(1)
    bags = {}
    for i in range(10):
        x = rng.normal(size=(15, dim)).astype(np.float32)
        x[:3, 0] += 4.0 * (i % 2)
        bags[f"s{i}"] = x
    cases = pd.DataFrame({"label": ["a", "b"] * 5}, index=[f"c{i}" for i in range(10)])
    cohort = Cohort(cases, {f"c{i}": [f"s{i}"] for i in range(10)}, InMemoryBags(bags), "classification")
    return create_aggregator("abmil", max_epochs=2, hidden_dim=16, attn_dim=8, device="cpu",
                             lr=1e-2).fit(cohort)


@pytest.fixture(scope="module")
def model():
    return tiny_model(8)


@pytest.fixture
def bag():
    rng = np.random.default_rng(0)
    coords = np.array([(x, y) for y in range(0, 3072, 512) for x in range(1024, 4096, 512)], np.int64)
    feats = rng.normal(size=(len(coords), 8)).astype(np.float32)
    feats[::5, 0] += 6.0  # a few distinctive patches
    return feats, coords


def png_stats(path) -> tuple[tuple[int, ...], int, float]:
    image = imread(path)[..., :3]
    colours = len(np.unique((image * 255).astype(np.uint8).reshape(-1, 3), axis=0))
    return image.shape, colours, float((image < 0.95).any(axis=2).mean())


def test_slide_attention_matches_the_model_and_the_attributes(model, bag):
    feats, coords = bag
    att = slide_attention(model, feats, coords, "s", attrs=ATTRS)
    one = Cohort(pd.DataFrame(index=["s"]), {"s": ["s"]}, InMemoryBags({"s": feats}), "classification",
                 labelled=False)
    expected, _ = model.attention_scores(one)["s"]
    np.testing.assert_allclose(att.scores, expected, rtol=1e-6)
    assert att.scores.shape == (len(coords),) and abs(att.scores.sum() - 1) < 1e-5
    assert att.patch_size_level0 == 512 and att.level0_size() == (5120, 3072)
    p = att.percentiles
    assert p.min() == 0 and p.max() == 1 and p[np.argmax(att.scores)] == 1


def test_msrl_attention_is_its_wsi_encoder_attention(bag):
    """Any attention-based aggregator works: MSRL's scores come from its WSI encoder's attention pool."""
    rng = np.random.default_rng(2)
    bags = {f"s{i}": rng.normal(size=(10, 8)).astype(np.float32) for i in range(8)}
    cohort = Cohort(pd.DataFrame({"time": np.arange(1.0, 9.0), "censorship": [0, 1] * 4},
                                 index=[f"c{i}" for i in range(8)]),
                    {f"c{i}": [f"s{i}"] for i in range(8)}, InMemoryBags(bags), "survival")
    msrl = create_aggregator("msrl_h", max_epochs=1, pretrain_epochs=1, embed_dim=8, buffer_size=4, k=2,
                             device="cpu").fit(cohort)
    att = slide_attention(msrl, *bag, slide_id="s", attrs=ATTRS)
    x = torch.from_numpy(bag[0])[None]
    with torch.no_grad():
        expected = torch.softmax(msrl.model_.eval().wsi_encoder(x)[1][0], dim=0).numpy()
    np.testing.assert_allclose(att.scores, expected, rtol=1e-5)
    assert att.model == "msrl_h"


def test_export_contents(model, bag, tmp_path):
    att = slide_attention(model, *bag, slide_id="s", attrs=ATTRS)
    files = export_attention(att, tmp_path)
    with h5py.File(files["h5"], "r") as f:
        np.testing.assert_array_equal(f["scores"][()], att.scores)
        np.testing.assert_array_equal(f["coords"][()], bag[1])
        assert f["coords"].dtype == np.int64 and f["scores"].dtype == np.float32
        assert f["coords"].attrs["patch_size_level0"] == 512
        assert f["coords"].attrs["patch_size_level0"].dtype == np.int64
        assert f["coords"].attrs["level0_width"] == 5120 and f["scores"].attrs["name"] == "s"
    table = pd.read_csv(files["csv"])
    assert list(table.columns) == ["x", "y", "attention", "percentile", "patch_size_level0"]
    np.testing.assert_array_equal(table[["x", "y"]].to_numpy(), bag[1])
    np.testing.assert_allclose(table["attention"], att.scores, rtol=1e-6)
    assert (table["patch_size_level0"] == 512).all()
    back = read_attention(files["h5"])
    np.testing.assert_array_equal(back.scores, att.scores)
    assert back.patch_size_level0 == 512 and back.slide_id == "s"


def test_patch_size_is_inferred_with_a_warning(model, bag):
    assert infer_patch_size(bag[1]) == 512
    with pytest.warns(UserWarning, match="grid step 512"):
        att = slide_attention(model, *bag)
    assert att.patch_size_level0 == 512
    with pytest.raises(MSRLPluginError, match="single patch"):
        infer_patch_size(np.zeros((1, 2)))


def test_png_grid_has_a_coloured_heatmap(model, bag, tmp_path):
    att = slide_attention(model, *bag, slide_id="s", attrs=ATTRS)
    result = render_heatmap(att, tmp_path / "s.png")
    assert result.png.is_file() and not result.overlay and result.note == ""
    shape, colours, inked = png_stats(result.png)
    assert shape[0] > 200 and shape[1] > 300 and colours > 20 and inked > 0.1


def test_unreadable_slide_falls_back_to_the_grid(model, bag, tmp_path):
    att = slide_attention(model, *bag, slide_id="s", attrs=ATTRS)
    (tmp_path / "broken.svs").write_bytes(b"not a slide")
    with pytest.warns(UserWarning, match="slide not drawn"):
        result = render_heatmap(att, tmp_path / "s.png", tmp_path / "broken.svs")
    assert not result.overlay and "broken.svs" in result.note and result.png.is_file()


def test_png_thumbnail_overlay(model, bag, tmp_path):
    att = slide_attention(model, *bag, slide_id="s", attrs=ATTRS)
    thumb = np.zeros((60, 100, 3), np.uint8)
    thumb[..., 1] = 200  # a green "slide"
    imsave(tmp_path / "s.png", thumb)
    result = render_heatmap(att, tmp_path / "heat.png", tmp_path / "s.png")
    grid = render_heatmap(att, tmp_path / "grid.png")
    assert result.overlay and not grid.overlay
    over, plain = imread(result.png)[..., :3], imread(grid.png)[..., :3]
    greener = (over[..., 1] - over[..., 0]).mean() > (plain[..., 1] - plain[..., 0]).mean()
    assert over.shape == plain.shape and greener


def test_model_without_attention_is_refused(bag):
    with pytest.raises(MSRLPluginError, match="no patch attention"):
        slide_attention(object(), *bag)


def test_real_slide_overlay(real_fixtures, shared_dir, tmp_path):
    pytest.importorskip("tifffile")
    slide = shared_dir / "data" / "cmu_small_region.svs"
    bag_path = real_fixtures / "trident/job/20x_256px_0px_overlap/features_uni_v1/cmu_small_region.h5"
    thumb, size = read_thumbnail(slide, max_side=1024)
    attrs = read_bag_attrs(bag_path)
    assert size == (attrs["level0_width"], attrs["level0_height"]) and max(thumb.shape[:2]) <= 1024
    bag = read_bag(bag_path)
    att = slide_attention(tiny_model(1024), bag.features, bag.coords, "cmu_small_region", attrs=attrs)
    result = render_heatmap(att, tmp_path / "cmu.png", slide)
    grid = render_heatmap(att, tmp_path / "grid.png")
    assert result.overlay, result.note
    over, plain = imread(result.png)[..., :3], imread(grid.png)[..., :3]
    assert np.abs(over - plain).mean() > 0.02  # the tissue shows under the grid


def test_cli_heatmap(model, kit, tmp_path, capsys):
    feats = tmp_path / "job" / "20x_256px_0px_overlap" / "features_uni_v1"
    kit.write_trident(feats / "slide_a.h5", kit.feats(12, 8, seed=2))
    ckpt = model.save(tmp_path / "s_0_checkpoint.pt")
    main(["heatmap", "--model-path", str(ckpt), "--features", str(tmp_path / "job"), "--slide", "slide_a",
          "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert "patch grid only" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "slide_a_attention.csv", "slide_a_attention.h5", "slide_a_heatmap.png"]
    assert read_attention(tmp_path / "out" / "slide_a_attention.h5").patch_size_level0 == 256
    with pytest.raises(SystemExit) as exc:
        main(["heatmap", "--model-path", str(ckpt), "--features", str(tmp_path / "job"), "--slide", "nope",
              "--out", str(tmp_path / "out")])
    assert exc.value.code == 2 and "no bag for slide 'nope'" in capsys.readouterr().err
