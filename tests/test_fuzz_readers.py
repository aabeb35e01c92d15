"""Property tests for the readers test_adapters_fuzz.py does not cover, and for raw bytes into every reader.

Whatever the file holds (random bytes, foreign pickles, odd dtypes, missing keys, odd strings, folder trees),
a reader returns a valid value or raises :class:`MSRLPluginError`; nothing else may escape.
"""
from __future__ import annotations

import gzip
import io
import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from _cohorts import easy_survival_cohort
from conftest import write_coords_only, write_trident
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msrl_plugin.adapters import (
    find_bags,
    load_pt_bag,
    read_bag,
    read_clam_dataset_csv,
    read_clinical,
    read_genomics,
    read_split_file,
    validate_folder,
)

from msrl_plugin.aggregators.abmil import ABMILAggregator
from msrl_plugin.aggregators.base import Aggregator
from msrl_plugin.checkpoint import CHECKPOINT_FORMAT, read_checkpoint
from msrl_plugin.errors import MSRLPluginError
from msrl_plugin.pretrain_io import PRETRAIN_FORMAT, read_pretrained

FUZZ = settings(max_examples=40, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz_readers")


def outcome(call, *args, **kwargs):
    """The reader's value, or None when it raised the project's error (anything else fails the test)."""
    try:
        return call(*args, **kwargs)
    except MSRLPluginError as exc:
        assert "\n" not in str(exc) and str(exc).strip()
        return None


# -- raw bytes into every file reader ------------------------------------------------------------------
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
PREFIXES = [b"", HDF5_MAGIC, HDF5_MAGIC + b"\x00" * 8, b"PK\x03\x04", b"\x80\x02", b"\x1f\x8b",
            b"\xef\xbb\xbf", b"\xff\xfe", b"case_id,slide_id,label\n", b",train,val,test\n"]


def _zip_of(data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", data)
        zf.writestr("archive/version", b"3\n")
    return buf.getvalue()


raw_bytes = st.one_of(
    st.tuples(st.sampled_from(PREFIXES), st.binary(max_size=300)).map(lambda t: t[0] + t[1]),
    st.binary(max_size=200).map(_zip_of),          # a torch-like zip with a junk pickle
    st.binary(max_size=200).map(gzip.compress),    # compressed junk behind a .gz name
)
READERS = {
    "bag.h5": lambda p: read_bag(p),
    "bag.pt": lambda p: load_pt_bag(p),
    "clinical.csv": lambda p: read_clinical(p, "survival"),
    "clinical.tsv": lambda p: read_clinical(p, "classification"),
    "clinical.csv.gz": lambda p: read_clinical(p, "survival"),
    "rna.csv.zip": lambda p: read_genomics(p),
    "rna.txt": lambda p: read_genomics(p),
    "dataset.csv": lambda p: read_clam_dataset_csv(p),
    "splits_0.csv": lambda p: read_split_file(p),
    "model.pt": lambda p: read_checkpoint(p),
    "model2.pt": lambda p: Aggregator.load(p),
    "gsl.pt": lambda p: read_pretrained(p),
}


@FUZZ
@given(data=raw_bytes)
def test_random_bytes_into_every_reader(work, data):
    for name, reader in READERS.items():
        path = work / name
        path.write_bytes(data)
        outcome(reader, path)


def test_every_reader_reports_a_missing_file_and_a_folder(work):
    for name, reader in READERS.items():
        with pytest.raises(MSRLPluginError, match="not found"):
            reader(work / "absent" / name)
        folder = work / "dir" / name
        folder.mkdir(parents=True, exist_ok=True)
        with pytest.raises(MSRLPluginError):
            reader(folder)


# -- CLAM dataset CSVs ----------------------------------------------------------------------------------
ODD = ["", " ", "nan", "NA", "None", "0", "1", "-1", "1e400", "True", "tumor", "TCGA-A1.svs", "a,b", '"',
       "\t", "é", "\x00", "=1+1", "#", "s.svs.svs"]
odd_strings = st.one_of(st.sampled_from(ODD), st.text(max_size=6))
clam_tables = st.tuples(
    st.lists(st.sampled_from(["case_id", "slide_id", "label", "Label", "", "site", "case_id", "Unnamed: 0"]),
             min_size=1, max_size=5),
    st.lists(st.lists(odd_strings, min_size=0, max_size=6), max_size=6),
    st.sampled_from([",", ";", "\t"]),
)


def _write_table(path: Path, header: list[str], rows: list[list[str]], sep: str) -> None:
    text = "\n".join(sep.join(r) for r in [header, *rows]) + "\n"
    path.write_bytes(text.encode("utf-8", errors="surrogatepass"))


@FUZZ
@given(table=clam_tables, label_col=st.sampled_from(["label", "Label", "site", "missing"]))
def test_read_clam_dataset_csv_only_raises_our_error(work, table, label_col):
    path = work / "dataset.csv"
    _write_table(path, *table)
    clinical = outcome(read_clam_dataset_csv, path, label_col)
    if clinical is not None:
        assert clinical.task == "classification"
        assert set(clinical.slides) == set(clinical.cases.index)
        assert clinical.cases["label"].map(lambda v: isinstance(v, str) and v.strip() != "").all()
        slides = [s for ss in clinical.slides.values() for s in ss]
        assert len(slides) == len(set(slides)) and all(slides)


# -- .pt bags: foreign payloads ------------------------------------------------------------------------
TORCH_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.uint8,
                torch.int64, torch.bool, torch.complex64]
NUMPY_DTYPES = ["float32", "float16", "int16", "uint64", "bool", "complex128", "object", "U3",
                "datetime64[s]", "float32,int8"]
shapes = st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple)


def _torch_tensor(dtype: torch.dtype, shape: tuple[int, ...], fill: float, layout: str) -> torch.Tensor:
    t = torch.full(shape, fill).to(dtype) if dtype != torch.bool else torch.zeros(shape, dtype=torch.bool)
    if layout == "transposed" and t.dim() >= 2:
        t = t.transpose(0, 1)
    elif layout == "sparse" and t.dim() >= 1:
        t = t.to_sparse()
    elif layout == "grad" and t.is_floating_point():
        t = t.clone().requires_grad_(True)
    return t


def _numpy_array(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    if dtype == "object":
        return np.full(shape, {"a": 1}, dtype=object)
    return np.zeros(shape, dtype=np.dtype(dtype))


tensors = st.builds(_torch_tensor, st.sampled_from(TORCH_DTYPES), shapes,
                    st.sampled_from([0.5, -2.0, float("nan"), float("inf"), 7.0]),
                    st.sampled_from(["plain", "transposed", "sparse", "grad"]))
arrays = st.builds(_numpy_array, st.sampled_from(NUMPY_DTYPES), shapes)
leaves = st.one_of(tensors, arrays, st.none(), st.integers(), st.floats(), st.text(max_size=4),
                   st.binary(max_size=4), st.complex_numbers(allow_nan=True))
payloads = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.one_of(st.sampled_from(["features", "feats", "coords", "x"]), st.integers(0, 3)),
                        inner, max_size=3)),
    max_leaves=6)


@FUZZ
@given(payload=payloads)
def test_load_pt_bag_only_raises_our_error(work, payload):
    path = work / "bag.pt"
    try:
        torch.save(payload, path)
    except Exception:  # noqa: BLE001 - torch cannot save every object (e.g. some sparse layouts)
        return
    features = outcome(load_pt_bag, path)
    if features is not None:
        assert features.dtype == np.float32 and features.ndim == 2 and len(features) > 0
        assert np.isfinite(features).all()


@FUZZ
@given(keep=st.floats(0.0, 0.99), flip=st.integers(0, 10**6))
def test_damaged_pt_bag_only_raises_our_error(work, keep, flip):
    path = work / "damaged.pt"
    torch.save({"features": torch.ones(6, 4), "coords": torch.zeros(6, 2, dtype=torch.int64)}, path)
    data = bytearray(path.read_bytes())
    data[flip % len(data)] ^= 0xFF
    path.write_bytes(bytes(data[: max(1, int(len(data) * keep))] if keep > 0.01 else data))
    outcome(load_pt_bag, path)


# -- checkpoints ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(work) -> tuple[Path, dict]:
    path = work / "abmil.pt"
    ABMILAggregator(max_epochs=1, seed=0, device="cpu").fit(easy_survival_cohort(n=10, dim=6)).save(path)
    return path, torch.load(path, weights_only=True)


json_junk = st.one_of(st.just("{}"), st.just("[]"), st.just("null"), st.text(max_size=6),
                      st.dictionaries(st.text(max_size=4), st.integers(), max_size=2).map(json.dumps))
values = st.one_of(st.none(), st.integers(-3, 10**6), st.floats(), st.text(max_size=6), json_junk, tensors,
                   st.lists(st.text(max_size=3), max_size=3),
                   st.dictionaries(st.text(max_size=3), tensors, max_size=2))


@FUZZ
@given(fmt=st.sampled_from([CHECKPOINT_FORMAT, PRETRAIN_FORMAT, "other", None]),
       body=st.dictionaries(st.text(max_size=8), values, max_size=4), version=st.one_of(st.none(), values))
def test_read_checkpoint_and_read_pretrained_only_raise_our_error(work, fmt, body, version):
    payload = dict(body)
    if fmt is not None:
        payload["format"] = fmt
    if version is not None:
        payload["version"] = version
    path = work / "ckpt.pt"
    torch.save(payload, path)
    ckpt = outcome(read_checkpoint, path)
    if ckpt is not None:
        assert ckpt["format"] == CHECKPOINT_FORMAT
    pre = outcome(read_pretrained, path)
    if pre is not None:
        assert pre["format"] == PRETRAIN_FORMAT


CHECKPOINT_KEYS = ["aggregator", "params", "task", "feature_dim", "genomics_columns", "genomics_mean",
                   "genomics_std", "training_case_ids", "state_dict", "extra", "version"]


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(CHECKPOINT_KEYS), st.one_of(st.just("<delete>"), values),
                               min_size=1, max_size=3))
def test_aggregator_load_of_a_damaged_checkpoint_only_raises_our_error(work, checkpoint, changes):
    _, ckpt = checkpoint
    damaged = dict(ckpt)
    for key, value in changes.items():
        if value == "<delete>":
            damaged.pop(key)
        else:
            damaged[key] = value
    path = work / "damaged_ckpt.pt"
    torch.save(damaged, path)
    model = outcome(Aggregator.load, path, device="cpu")
    if model is not None:
        assert model.feature_dim_ == damaged["feature_dim"]


# -- folders: whatever the tree, find_bags / validate report it ---------------------------------------------
ENTRY_NAMES = ["features_uni", "features_conch", "h5_files", "pt_files", "patches", "slide_features_titan",
               "20x_256px_0px_overlap", "10x_512px_0px_overlap", "a.h5", "b.h5", "c.pt", "a.h5.lock", "x.csv",
               ".hidden.h5", "d.HDF5"]
trees = st.recursive(st.sampled_from(["feat", "coords", "junk", "empty", "pt"]),
                     lambda inner: st.dictionaries(st.sampled_from(ENTRY_NAMES), inner, max_size=4),
                     max_leaves=8)


def _build(folder: Path, tree) -> None:
    if not isinstance(tree, dict):
        return
    for name, sub in tree.items():
        path = folder / name
        if isinstance(sub, dict):
            path.mkdir(parents=True, exist_ok=True)
            _build(path, sub)
        elif sub == "feat":
            write_trident(path, np.ones((3, 4), np.float32))
        elif sub == "coords":
            write_coords_only(path, 3)
        elif sub == "empty":
            write_trident(path, np.zeros((0, 4), np.float32))
        elif sub == "pt":
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(torch.ones(2, 4), path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"junk")


@FUZZ
@given(tree=st.dictionaries(st.sampled_from(ENTRY_NAMES), trees, max_size=4),
       encoder=st.sampled_from([None, "uni", "conch", "nope"]))
def test_find_bags_and_validate_only_raise_our_error(tmp_path_factory, tree, encoder):
    root = tmp_path_factory.mktemp("tree")
    _build(root, tree)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # locked / ignored files are warned about; not what this test checks
        index = outcome(find_bags, root, encoder)
        report = outcome(validate_folder, root, encoder)
    if index is not None:
        assert index.files and all(f.path.is_file() for f in index.files.values())
    if report is not None:
        assert report.usable == (not report.reasons)
