"""Bag readers, the safe .pt loader, the file-backed BagSource and folder layouts."""
from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from msrl_plugin.adapters import (
    BagFile,
    FileBagSource,
    find_bags,
    inspect_bag,
    is_locked,
    load_pt_bag,
    read_bag,
    read_bag_attrs,
)

from msrl_plugin.errors import BadInputError

CDIR = "trident/job/20x_256px_0px_overlap"
FP16 = "custom_vits16head768_fp16_seed1"


# -- genuine toolkit outputs -------------------------------------------------------------------------
def test_trident_uni_v1_bag(real_fixtures):
    path = real_fixtures / CDIR / "features_uni_v1" / "cmu_small_region.h5"
    bag = read_bag(path)
    assert bag.features.shape == (58, 1024) and bag.features.dtype == np.float32
    assert bag.coords.shape == (58, 2) and bag.coords.dtype == np.int64
    with h5py.File(path) as f:
        np.testing.assert_array_equal(bag.coords, f["coords"][:])
    report = inspect_bag(path)
    assert (report.fmt, report.n_patches, report.dim, report.status) == ("trident", 58, 1024, "ok")


def test_trident_float16_bag_is_cast(real_fixtures):
    path = real_fixtures / CDIR / f"features_{FP16}" / "cmu_small_region.h5"
    bag = read_bag(path)
    assert bag.features.shape == (58, 768) and bag.features.dtype == np.float32
    with h5py.File(path) as f:
        assert f["features"].dtype == np.float16
        np.testing.assert_array_equal(bag.features, f["features"][:].astype(np.float32))
    assert inspect_bag(path).dtype == "float16"


def test_tissue_speck_bags_are_small_not_empty(real_fixtures):
    # In the shipped variant the speck yields 6 patches; the 0-patch variant is held back (tested self-made).
    for enc, dim in (("uni_v1", 1024), (FP16, 768)):
        bag = read_bag(real_fixtures / CDIR / f"features_{enc}" / "tissue_speck.h5")
        assert bag.features.shape == (6, dim)


def test_trident_attrs_are_jsonable(real_fixtures):
    attrs = read_bag_attrs(real_fixtures / CDIR / "features_uni_v1" / "cmu_small_region.h5")
    assert attrs["patch_size_level0"] == 256.0 and attrs["patch_size"] == 256
    assert attrs["target_magnification"] == 20.0 and attrs["name"] == "cmu_small_region"
    json.dumps(attrs)


@pytest.mark.parametrize("rel", [f"{CDIR}/patches/cmu_small_region_patches.h5", "clam/job/patches/cmu_small_region.h5"])
def test_patches_file_rejected(real_fixtures, rel):
    with pytest.raises(BadInputError, match="coords/patches file passed where a features file was expected"):
        read_bag(real_fixtures / rel)


def test_slide_features_file_rejected(real_fixtures):
    with pytest.raises(BadInputError, match="slide-level embedding"):
        read_bag(real_fixtures / CDIR / "slide_features_mean-uni_v1" / "cmu_small_region.h5")


def test_clam_h5_and_pt(real_fixtures):
    feat_dir = real_fixtures / "clam/job/features_resnet50_trunc"
    h5 = read_bag(feat_dir / "h5_files/cmu_small_region.h5")
    assert h5.features.shape == (50, 1024) and h5.coords.dtype == np.int64
    assert inspect_bag(feat_dir / "h5_files/cmu_small_region.h5").fmt == "clam_h5"
    pt = read_bag(feat_dir / "pt_files/cmu_small_region.pt")
    assert pt.coords is None
    np.testing.assert_array_equal(pt.features, h5.features)
    np.testing.assert_array_equal(load_pt_bag(feat_dir / "pt_files/cmu_small_region.pt"), h5.features)


def test_find_bags_genuine_trident(real_fixtures):
    job = real_fixtures / "trident/job"
    with pytest.raises(BadInputError, match=r"uni_v1 \(2 bags\).*--patch-encoder"):
        find_bags(job)
    index = find_bags(job, patch_encoder="uni_v1")
    assert index.layout == "trident_job" and sorted(index.files) == ["cmu_small_region", "tissue_speck"]
    assert all(f.path.parent.name == "features_uni_v1" and f.fmt == "trident" for f in index.files.values())
    assert find_bags(job / CDIR.split("/", 2)[2], patch_encoder=FP16).layout == "trident_coords_dir"
    assert find_bags(job, patch_encoder="uni_v1", mag=20, patch_size=256, overlap=0).files
    with pytest.raises(BadInputError, match="no coords dir matches"):
        find_bags(job, patch_encoder="uni_v1", mag=10)
    assert find_bags(real_fixtures / CDIR / "features_uni_v1").layout == "trident_features"
    with pytest.raises(BadInputError, match="slide-level embeddings"):
        find_bags(real_fixtures / CDIR / "slide_features_mean-uni_v1")
    with pytest.raises(BadInputError, match="patches/ folder"):
        find_bags(real_fixtures / CDIR / "patches")


def test_find_bags_genuine_clam(real_fixtures):
    for root in ("clam/job", "clam/job/features_resnet50_trunc", "clam/job/features_resnet50_trunc/h5_files"):
        index = find_bags(real_fixtures / root)
        assert index.layout == "clam" and index.files["cmu_small_region"].fmt == "clam_h5"
    pt = find_bags(real_fixtures / "clam/job/features_resnet50_trunc/pt_files")
    assert pt.files["cmu_small_region"].fmt == "pt"
    with pytest.raises(BadInputError, match="coords, not features"):
        find_bags(real_fixtures / "clam/job/patches")


# -- self-made files, one per format and defect --------------------------------------------------------
def test_self_made_formats(tmp_path, kit):
    x = kit.feats(7, 16)
    cases = {
        "trident": kit.write_trident(tmp_path / "t.h5", x),
        "clam_h5": kit.write_clam_h5(tmp_path / "c.h5", x),
        "stamp": kit.write_stamp(tmp_path / "s.h5", x),
        "pt": kit.write_pt(tmp_path / "p.pt", torch.from_numpy(x)),
    }
    for fmt, path in cases.items():
        bag = read_bag(path)
        np.testing.assert_array_equal(bag.features, x)
        assert inspect_bag(path).fmt == fmt
    assert read_bag(cases["clam_h5"]).coords.dtype == np.int64
    assert read_bag(cases["stamp"]).coords.dtype == np.int64  # float coords rounded
    assert read_bag_attrs(cases["clam_h5"]) == {} and read_bag_attrs(cases["pt"]) == {}
    assert read_bag_attrs(cases["trident"])["level0_magnification"] == 20


def test_squeezes_leading_batch_axis(tmp_path, kit):
    x = kit.feats(4, 6)
    with h5py.File(tmp_path / "b.h5", "w") as f:
        f["features"], f["coords"] = x[None], kit.grid_coords(4)[None]
    bag = read_bag(tmp_path / "b.h5")
    assert bag.features.shape == (4, 6) and bag.coords.shape == (4, 2)
    kit.write_pt(tmp_path / "b.pt", torch.from_numpy(x)[None])
    assert read_bag(tmp_path / "b.pt").features.shape == (4, 6)


@pytest.mark.parametrize("key", ["features", "feats"])
def test_pt_dict_payload(tmp_path, kit, key):
    x = kit.feats(3, 4)
    path = kit.write_pt(tmp_path / "d.pt", {key: torch.from_numpy(x), "coords": torch.zeros(3, 2)})
    bag = read_bag(path)
    np.testing.assert_array_equal(bag.features, x)
    assert bag.coords.shape == (3, 2)


def test_pickled_numpy_pt_loads_safely(tmp_path, kit):
    x = kit.feats(5, 8, dtype=np.float16)
    path = kit.write_pt(tmp_path / "np.pt", x)  # TRIDENT saveas='pt' pickles the numpy array
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, map_location="cpu", weights_only=True)
    features = load_pt_bag(path)
    assert features.dtype == np.float32
    np.testing.assert_array_equal(features, x.astype(np.float32))


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("wrap", [lambda e: e, lambda e: {"features": torch.zeros(2, 2), "x": e}])
def test_malicious_pt_is_refused(tmp_path, kit, wrap):
    marker = tmp_path / "pwned"
    path = kit.write_pt(tmp_path / "evil.pt", wrap(_Exploit(marker)))
    with pytest.raises(BadInputError, match="refusing to unpickle arbitrary objects") as err:
        read_bag(path)
    assert "evil.pt" in str(err.value)
    assert not marker.exists()
    assert "refusing" in inspect_bag(path).status
    assert not marker.exists()


def test_every_torch_load_is_weights_only():
    root = Path(__file__).parents[1]
    for py in [*root.glob("adapters/**/*.py"), *root.glob("msrl_plugin/**/*.py")]:
        text = py.read_text()
        for m in re.finditer(r"torch\.load\(", text):
            depth, i = 1, m.end()
            while depth and i < len(text):
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            assert "weights_only=True" in text[m.end():i], f"{py}: torch.load without weights_only=True"


@pytest.mark.parametrize("shape", [(0,), (0, 8)])
def test_empty_bag(tmp_path, kit, shape):
    path = kit.write_trident(tmp_path / "e.h5", np.empty(shape, np.float32), np.empty((0, 2), np.int64))
    with pytest.raises(BadInputError, match=r"empty bag \(0 patches\).*--on-empty skip"):
        read_bag(path)
    report = inspect_bag(path)
    assert report.status == "empty" and report.n_patches == 0


def test_locked_bag(tmp_path, kit):
    path = kit.write_trident(tmp_path / "l.h5", kit.feats())
    assert not is_locked(path)
    (tmp_path / "l.h5.lock").write_text('{"pid": 1}')
    assert is_locked(path) and inspect_bag(path).status == "locked"


def _h5(path: Path, **datasets) -> Path:
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f[k] = v
    return path


def test_defects_name_file_problem_and_fix(tmp_path, kit):
    x = kit.feats(5, 4)
    nan = x.copy()
    nan[1, 2], nan[3, 0] = np.nan, np.inf
    (tmp_path / "garbage.h5").write_bytes(b"this is not hdf5" * 100)
    good = kit.write_trident(tmp_path / "trunc.h5", kit.feats(200, 64))
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    defects = {
        _h5(tmp_path / "nan.h5", features=nan): r"NaN/Inf in 2 of 5 rows",
        tmp_path / "garbage.h5": "not an HDF5 file",
        good: "truncated or corrupt",
        _h5(tmp_path / "rows.h5", features=x, coords=kit.grid_coords(4)): "coords have 4 rows but features have 5",
        _h5(tmp_path / "c3.h5", features=x, coords=np.zeros((5, 3))): r"coords have shape \(5, 3\)",
        _h5(tmp_path / "3d.h5", features=np.zeros((2, 5, 4))): "expected 2-D",
        _h5(tmp_path / "str.h5", features=np.array([[b"a", b"b"]])): "non-numeric dtype",
        _h5(tmp_path / "imgs.h5", imgs=np.zeros((2, 4, 4, 3), np.uint8)): "CLAM legacy patch-image file",
        kit.write_coords_only(tmp_path / "x_patches.h5"): "coords/patches file passed",
        _h5(tmp_path / "other.h5", embeddings=x): r"no 'features'.*'feats'.*\['embeddings'\]",
        tmp_path / "missing.h5": "bag file not found",
        _h5(tmp_path / "d0.h5", features=np.zeros((3, 0))): "feature dim is 0",
    }
    for path, pattern in defects.items():
        with pytest.raises(BadInputError, match=pattern) as err:
            read_bag(path)
        assert str(path) in str(err.value)
        assert err.value.fix or "not found" in pattern
        report = inspect_bag(path)
        assert report.status.startswith("error"), (path, report)
        assert re.search(pattern, report.problems[0]), report.problems


def test_inspect_scans_in_blocks(tmp_path, monkeypatch):
    from msrl_plugin.adapters import bag_inspection

    x = np.ones((100, 4), np.float32)
    x[97] = np.nan
    _h5(tmp_path / "n.h5", features=x)
    monkeypatch.setattr(bag_inspection, "_SCAN_BYTES", 64)
    assert inspect_bag(tmp_path / "n.h5").problems == ["features contain NaN/Inf in 1 of 100 rows"]
    assert inspect_bag(tmp_path / "n.h5", scan_values=False).status == "ok"


# -- FileBagSource ------------------------------------------------------------------------------------
def test_file_bag_source_dim_and_cache(tmp_path, kit):
    paths = {f"s{i}": kit.write_trident(tmp_path / f"s{i}.h5", kit.feats(10, 8, seed=i)) for i in range(3)}
    source = FileBagSource(paths, cache_bytes=2 * 10 * 8 * 4 + 2 * 10 * 2 * 8)
    assert source.feature_dim == 8 and not source._cache  # header only
    first = source.load("s0")
    assert source.load("s0") is first
    source.load("s1")
    source.load("s2")  # evicts s0 (least recently used)
    assert list(source._cache) == ["s1", "s2"]
    assert source.load("s0") is not first
    no_cache = FileBagSource(paths, cache_bytes=0)
    assert no_cache.load("s1") is not no_cache.load("s1")
    with pytest.raises(BadInputError, match="no bag file for slide 'zz'"):
        source.load("zz")


def test_file_bag_source_mixed_dims(tmp_path, kit):
    files = {"a": BagFile("a", kit.write_trident(tmp_path / "a.h5", kit.feats(3, 8)), "trident"),
             "b": kit.write_clam_h5(tmp_path / "b.h5", kit.feats(3, 16))}
    source = FileBagSource(files)
    source.load("a")
    with pytest.raises(BadInputError, match="feature dim 16 differs from 8 of the other bags: mixed encoders"):
        source.load("b")


def test_file_bag_source_skips_empty_for_dim(tmp_path, kit):
    files = {"e": kit.write_trident(tmp_path / "e.h5", np.empty((0,), np.float32), np.empty((0, 2), np.int64)),
             "a": kit.write_trident(tmp_path / "a.h5", kit.feats(3, 12))}
    assert FileBagSource(files).feature_dim == 12
    with pytest.raises(BadInputError, match="no readable non-empty bag"):
        _ = FileBagSource({"e": files["e"]}).feature_dim


# -- layouts ---------------------------------------------------------------------------------------------
def test_find_bags_layouts(tmp_path, kit):
    job = tmp_path / "job"
    for cdir in ("20x_256px_0px_overlap", "10x_512px_64px_overlap"):
        kit.write_trident(job / cdir / "features_conch_v15" / "TCGA-AA-0001-01Z-00-DX1.AB-CD.h5", kit.feats())
        kit.write_coords_only(job / cdir / "patches" / "TCGA-AA-0001-01Z-00-DX1.AB-CD_patches.h5")
        kit.write_trident(job / cdir / "slide_features_titan" / "x.h5", np.zeros(8, np.float32))
        (job / cdir / "_config_coords.json").write_text("{}")
    (job / "summary.md").write_text("# run")
    with pytest.raises(BadInputError, match=r"several patching settings.*10x_512px_64px_overlap.*--mag"):
        find_bags(job)
    index = find_bags(job, mag=10)
    assert list(index.files) == ["TCGA-AA-0001-01Z-00-DX1.AB-CD"]
    assert index.files["TCGA-AA-0001-01Z-00-DX1.AB-CD"].path.parts[-3] == "10x_512px_64px_overlap"
    assert find_bags(job, patch_size=256, overlap=0).folder.parent.name == "20x_256px_0px_overlap"
    with pytest.raises(BadInputError, match=r"no features_uni_v1/ folder.*conch_v15"):
        find_bags(job / "20x_256px_0px_overlap", patch_encoder="uni_v1")


def test_find_bags_flat_and_stamp(tmp_path, kit):
    kit.write_stamp(tmp_path / "stamp" / "a.h5", kit.feats())
    assert find_bags(tmp_path / "stamp").files["a"].fmt == "stamp"
    kit.write_pt(tmp_path / "pts" / "a.b.pt", torch.zeros(2, 3))
    index = find_bags(tmp_path / "pts")
    assert index.layout == "flat" and index.files["a.b"].fmt == "pt"
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no .h5 or .pt feature bags"):
        find_bags(tmp_path / "empty")
    with pytest.raises(BadInputError, match="not found"):
        find_bags(tmp_path / "nope")
    kit.write_coords_only(tmp_path / "coords" / "a.h5")
    with pytest.raises(BadInputError, match="coords/patches files, not features"):
        find_bags(tmp_path / "coords")


def test_find_bags_clam_prefers_h5(tmp_path, kit):
    kit.write_clam_h5(tmp_path / "feat" / "h5_files" / "s1.h5", kit.feats())
    kit.write_pt(tmp_path / "feat" / "pt_files" / "s1.pt", torch.zeros(5, 8))
    index = find_bags(tmp_path / "feat")
    assert index.layout == "clam" and index.files["s1"].path.parent.name == "h5_files"


def test_find_bags_skips_locked(tmp_path, kit):
    folder = tmp_path / "features_uni_v1"
    kit.write_trident(folder / "a.h5", kit.feats())
    kit.write_trident(folder / "b.h5", kit.feats())
    (folder / "b.h5.lock").write_text("{}")
    with pytest.warns(UserWarning, match="locked"):
        index = find_bags(folder)
    assert list(index.files) == ["a"] and index.locked == [folder / "b.h5"]
    (folder / "a.h5.lock").write_text("{}")
    with warnings.catch_warnings(), pytest.raises(BadInputError, match="all 2 bag"):
        warnings.simplefilter("ignore")
        find_bags(folder)


def test_numpy1_pickled_pt_loads(tmp_path, kit):
    # Files pickled under numpy 1 name numpy.core.multiarray._reconstruct.
    import zipfile

    kit.write_pt(tmp_path / "new.pt", np.arange(6, dtype=np.float32).reshape(2, 3))
    with zipfile.ZipFile(tmp_path / "new.pt") as zin, zipfile.ZipFile(tmp_path / "old.pt", "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            zout.writestr(name, data)
    np.testing.assert_array_equal(load_pt_bag(tmp_path / "old.pt"), np.arange(6).reshape(2, 3))


def test_pt_unsupported_payloads(tmp_path, kit):
    for obj, pattern in (([1, 2], "is a list"), ({"w": torch.zeros(1)}, "without a 'features'"),
                         (torch.zeros(4, 3, dtype=torch.bool), "non-numeric dtype"),
                         (torch.zeros(4, 3, dtype=torch.complex64), "complex dtype")):
        path = kit.write_pt(tmp_path / "x.pt", obj)
        with pytest.raises(BadInputError, match=pattern):
            read_bag(path)
    (tmp_path / "junk.pt").write_bytes(b"\x00junk" * 10)
    with pytest.raises(BadInputError, match="not a readable torch .pt file"):
        read_bag(tmp_path / "junk.pt")
    path = kit.write_pt(tmp_path / "bf16.pt", torch.ones(3, 2, dtype=torch.bfloat16))
    assert read_bag(path).features.dtype == np.float32
