"""CLAM dataset CSVs, split files (CLAM ragged/bool, SurvPath/MCAT) and load_clam_cohort."""
from __future__ import annotations

import pytest
from msrl_plugin.adapters import (
    find_split_files,
    load_clam_cohort,
    read_clam_dataset_csv,
    read_clinical,
    read_split_file,
    resolve_split_ids,
)

from msrl_plugin.errors import BadInputError

DATASET = """case_id,slide_id,label
patient_0,slide_0,tumor_tissue
patient_0,slide_1,tumor_tissue
patient_1,slide_2,normal_tissue
patient_2,slide_3,tumor_tissue
patient_3,0012,normal_tissue
"""
RAGGED = """,train,val,test
0,slide_0,slide_2,0012
1,slide_1,,
2,slide_3,,
"""
BOOL = """,train,val,test
slide_0,True,False,False
slide_1,True,False,False
slide_2,False,True,False
slide_3,True,False,False
0012,False,False,True
"""


def _write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_read_clam_dataset_csv(tmp_path):
    table = read_clam_dataset_csv(_write(tmp_path, "d.csv", DATASET))
    assert table.task == "classification" and list(table.cases.index)[-1] == "patient_3"
    assert table.slides["patient_0"] == ["slide_0", "slide_1"] and table.slides["patient_3"] == ["0012"]
    renamed = read_clam_dataset_csv(_write(tmp_path, "e.csv", DATASET.replace(",label", ",subtype")), "subtype")
    assert renamed.cases["label"].iloc[0] == "tumor_tissue"


def test_ragged_and_bool_splits_agree(tmp_path):
    ragged = read_split_file(_write(tmp_path, "splits_0.csv", RAGGED))
    boolean = read_split_file(_write(tmp_path, "splits_0_bool.csv", BOOL))
    expected = {"train": ["slide_0", "slide_1", "slide_3"], "val": ["slide_2"], "test": ["0012"]}
    assert ragged == expected and boolean == expected  # "0012" stays a string, never 12.0


def test_survpath_split_with_case_ids(tmp_path):
    split = read_split_file(_write(tmp_path, "splits_0.csv", ",train,val\n0,patient_0,patient_1\n1,patient_2,\n"))
    assert split == {"train": ["patient_0", "patient_2"], "val": ["patient_1"]}
    table = read_clam_dataset_csv(_write(tmp_path, "d.csv", DATASET))
    assert resolve_split_ids(split, table) == split


def test_resolve_split_maps_slides_to_cases(tmp_path):
    table = read_clam_dataset_csv(_write(tmp_path, "d.csv", DATASET))
    split = read_split_file(_write(tmp_path, "splits_0.csv", RAGGED))
    assert resolve_split_ids(split, table) == {"train": ["patient_0", "patient_2"], "val": ["patient_1"],
                                               "test": ["patient_3"]}
    assert resolve_split_ids({"train": ["slide_0.svs"]}, table) == {"train": ["patient_0"]}


def test_resolve_split_errors(tmp_path):
    table = read_clam_dataset_csv(_write(tmp_path, "d.csv", DATASET))
    path = tmp_path / "splits_3.csv"
    with pytest.raises(BadInputError, match=r"splits_3.csv: the val split lists 'slide_99'"):
        resolve_split_ids({"train": ["slide_0"], "val": ["slide_99"]}, table, path)
    with pytest.raises(BadInputError, match=r"case 'patient_0' is in both the train and the test split"):
        resolve_split_ids({"train": ["slide_0"], "test": ["slide_1"]}, table, path)


def test_split_file_errors(tmp_path):
    with pytest.raises(BadInputError, match="split file not found"):
        read_split_file(tmp_path / "nope.csv")
    with pytest.raises(BadInputError, match="no train/val/test column"):
        read_split_file(_write(tmp_path, "x.csv", ",a,b\n0,1,2\n"))
    with pytest.raises(BadInputError, match="has no id"):
        read_split_file(_write(tmp_path, "y.csv", ",train,test\n,True,False\n"))


def test_find_split_files(tmp_path):
    for name in ("splits_10.csv", "splits_2.csv", "splits_2_bool.csv", "splits_2_descriptor.csv",
                 "splits_0_bool.csv", "notes.csv"):
        _write(tmp_path, name, RAGGED)
    assert [p.name for p in find_split_files(tmp_path)] == ["splits_0_bool.csv", "splits_2.csv", "splits_10.csv"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no splits_<k>.csv"):
        find_split_files(tmp_path / "empty")
    with pytest.raises(BadInputError, match="split folder not found"):
        find_split_files(tmp_path / "missing")


def test_load_clam_cohort_self_made(tmp_path, kit):
    data = tmp_path / "tumor_vs_normal_resnet_features"
    for i, slide in enumerate(["slide_0", "slide_1", "slide_2", "slide_3", "0012"]):
        kit.write_clam_h5(data / "h5_files" / f"{slide}.h5", kit.feats(3 + i, 16, seed=i))
    cohort = load_clam_cohort(data, _write(tmp_path, "d.csv", DATASET),
                              class_names=["normal_tissue", "tumor_tissue"])
    assert cohort.task == "classification" and len(cohort) == 4 and cohort.feature_dim == 16
    assert cohort.labels().tolist() == [1, 0, 1, 0]
    assert cohort.load_bag("patient_0").features.shape == (7, 16)


def test_load_clam_cohort_genuine(real_fixtures, tmp_path):
    csv = _write(tmp_path, "d.csv", "case_id,slide_id,label\np0,cmu_small_region,tumor\n")
    cohort = load_clam_cohort(real_fixtures / "clam/job/features_resnet50_trunc", csv)
    bag = cohort.load_bag("p0")
    assert bag.features.shape == (50, 1024) and bag.coords.dtype.name == "int64"
    table = read_clinical(csv, "classification")
    assert resolve_split_ids({"test": ["cmu_small_region"]}, table) == {"test": ["p0"]}
