"""Clinical and genomics tables, and load_cohort wiring them to the bags."""
from __future__ import annotations

import warnings
import zipfile

import numpy as np
import pandas as pd
import pytest
from msrl_plugin.adapters import (
    ClinicalTable,
    load_cohort,
    read_clinical,
    read_genomics,
    read_table,
    strip_slide_extension,
)

from msrl_plugin.errors import BadInputError

SURV = """,case_id,slide_id,site,survival_months,censorship,oncotree_code
0,TCGA-AA-0001,TCGA-AA-0001-01Z-00-DX1.svs,AA,12.5,0,COAD
1,TCGA-AA-0001,TCGA-AA-0001-01Z-00-DX2.svs,AA,12.5,0,COAD
2,TCGA-BB-0002,TCGA-BB-0002-01Z-00-DX1.svs,BB,30.0,1,COAD
3,TCGA-CC-0003,TCGA-CC-0003-01Z-00-DX1.svs,CC,4.25,0,COAD
"""


def _write(tmp_path, text: str, name: str = "clin.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


# -- read_table ------------------------------------------------------------------------------------
def test_read_table_formats(tmp_path):
    csv = _write(tmp_path, "a,b\n1,x\n")
    tsv = _write(tmp_path, "a\tb\n1\tx\n", "t.tsv")
    semi = _write(tmp_path, "a;b\n1;x\n", "t.txt")
    with zipfile.ZipFile(tmp_path / "t.csv.zip", "w") as z:  # MCAT's oddly named single member
        z.writestr("../dataset_csv/t.csv", "a,b\n1,x\n")
    for path in (csv, tsv, semi, tmp_path / "t.csv.zip"):
        frame = read_table(path)
        assert list(frame.columns) == ["a", "b"] and frame.iloc[0].tolist() == ["1", "x"]
    with pytest.raises(BadInputError, match="table not found"):
        read_table(tmp_path / "missing.csv")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x01garbage\x00\n\x80\x81")
    with pytest.raises(BadInputError, match="cannot read this table"):
        read_table(tmp_path / "bin.csv")
    with pytest.raises(BadInputError, match="empty"):
        read_table(_write(tmp_path, "", "e.csv"))


# -- read_clinical ------------------------------------------------------------------------------------
def test_survpath_survival_table_multi_slide(tmp_path):
    table = read_clinical(_write(tmp_path, SURV), "survival")
    assert list(table.cases.index) == ["TCGA-AA-0001", "TCGA-BB-0002", "TCGA-CC-0003"]
    assert table.cases.index.name == "case_id"
    assert table.cases["time"].tolist() == [12.5, 30.0, 4.25]
    assert table.cases["censorship"].tolist() == [0, 1, 0]
    assert table.cases["site"].tolist() == ["AA", "BB", "CC"]
    assert table.slides["TCGA-AA-0001"] == ["TCGA-AA-0001-01Z-00-DX1", "TCGA-AA-0001-01Z-00-DX2"]
    assert table.case_of_slide()["TCGA-AA-0001-01Z-00-DX2"] == "TCGA-AA-0001"


def test_time_event_form_and_no_slide_column(tmp_path):
    path = _write(tmp_path, "patient\tos_days\tdead\np1\t100\t1\np2\t50.5\t0\n", "c.tsv")
    table = read_clinical(path, "survival", case_col="patient", time_col="os_days", event_col="dead")
    assert table.cases["censorship"].tolist() == [0, 1]
    assert table.slides == {"p1": ["p1"], "p2": ["p2"]}


def test_classification_table(tmp_path):
    table = read_clinical(_write(tmp_path, "case_id,slide_id,label\nc1,s1,tumor\nc1,s2,tumor\nc2,s3,normal\n"),
                          "classification")
    assert table.cases["label"].tolist() == ["tumor", "normal"] and table.task == "classification"


@pytest.mark.parametrize("raw, stem", [("abc.svs", "abc"), ("slides.svs", "slides"), ("x.ome.tiff", "x"),
                                       ("A.B.NDPI", "A.B"), ("s.v.s", "s.v.s"), (".svs", ".svs"),
                                       ("TCGA-1.UUID", "TCGA-1.UUID")])
def test_strip_slide_extension_is_a_suffix(raw, stem):
    assert strip_slide_extension(raw) == stem


CLINICAL_ERRORS = [
    ("case_id,slide_id,months,censorship\nA,a,1,0\n", {}, (r"missing column\(s\) \['survival_months'\].*"
                                                         r"\['case_id', 'slide_id', 'months', 'censorship'\]"
                                                         r".*--time-col NAME")),
    ("case_id,slide_id,survival_months,censorship\nA,a,1,0\nB,b,0,1\n", {},
     r"data row 2 \(line 3\), column 'survival_months'.*> 0"),
    ("case_id,slide_id,survival_months,censorship\nA,a,,0\n", {}, r"data row 1 \(line 2\).*missing or not"),
    ("case_id,slide_id,survival_months,censorship\nA,a,-3,0\n", {}, r"'-3' is missing or not a number > 0"),
    ("case_id,slide_id,survival_months,censorship\nA,a,3,2\n", {}, r"column 'censorship': value '2' is not 0 or 1"),
    ("case_id,slide_id,survival_months,event\nA,a,3,yes\n", {"event_col": "event"}, r"'event'.*'yes' is not 0 or 1"),
    ("case_id,slide_id,survival_months,censorship\nA,a,3,0\nA,b,4,0\n", {},
     r"case 'A' has conflicting 'time' values.*data row 1.*data row 2"),
    ("case_id,slide_id,survival_months,censorship\nA,a.svs,3,0\nB,a,3,0\n", {},
     r"slide id 'a' appears twice: data row 1 \(line 2\) and data row 2"),
    ("case_id,survival_months,censorship\nA,3,0\nA,3,0\n", {}, r"slide id 'A' appears twice.*make case ids unique"),
    ("case_id,slide_id,survival_months,censorship\n,a,3,0\n", {}, r"column 'case_id': missing case id"),
    ("case_id,slide_id,survival_months,censorship\n", {}, "no data rows"),
    ("case_id,slide_id,survival_months,censorship\nA,a,3,0\n", {"slide_col": "wsi"}, r"\['wsi'\].*--slide-col"),
]


@pytest.mark.parametrize("text, kwargs, pattern", CLINICAL_ERRORS)
def test_clinical_errors(tmp_path, text, kwargs, pattern):
    path = _write(tmp_path, text)
    with pytest.raises(BadInputError, match=pattern) as err:
        read_clinical(path, "survival", **kwargs)
    assert str(path) in str(err.value)


def test_classification_errors(tmp_path):
    with pytest.raises(BadInputError, match=r"data row 2 \(line 3\), column 'label': missing label"):
        read_clinical(_write(tmp_path, "case_id,slide_id,label\nA,a,x\nB,b,\n"), "classification")
    with pytest.raises(BadInputError, match=r"conflicting 'label' values.*'x' in data row 1"):
        read_clinical(_write(tmp_path, "case_id,slide_id,label\nA,a,x\nA,b,y\n"), "classification")
    with pytest.raises(BadInputError, match="unknown task"):
        read_clinical(_write(tmp_path, "case_id\nA\n"), "regression")


# -- read_genomics -------------------------------------------------------------------------------------
def test_survpath_rna_clean(tmp_path):
    path = _write(tmp_path, ",TP53,EGFR\nTCGA-1,-9.9658,1.5\nTCGA-2,0.0,2\nTCGA-3,,\n", "rna_clean.csv")
    frame = read_genomics(path)
    assert list(frame.index) == ["TCGA-1", "TCGA-2"] and frame.index.name == "case_id"  # all-NaN row dropped
    assert list(frame.columns) == ["TP53", "EGFR"] and frame.dtypes.eq(np.float64).all()
    assert frame.loc["TCGA-1", "TP53"] == pytest.approx(-9.9658)


def test_genomics_case_column(tmp_path):
    frame = read_genomics(_write(tmp_path, ",case_id,g1\n0,A,1\n1,B,2\n"))
    assert list(frame.columns) == ["g1"] and list(frame.index) == ["A", "B"]
    frame = read_genomics(_write(tmp_path, "g1,patient\n1,A\n"), case_col="patient")
    assert list(frame.index) == ["A"]
    with pytest.raises(BadInputError, match=r"\['pid'\].*--genomics-case-col"):
        read_genomics(_write(tmp_path, "g1,patient\n1,A\n"), case_col="pid")


@pytest.mark.parametrize("text, pattern", [
    ("case_id,g1,g2\nA,1,2\nB,3,high\n", r"data row 2 \(line 3\), column 'g2': non-numeric value 'high'"),
    ("case_id,g1\nA,1\nA,2\n", r"case id 'A' appears twice \(data row 1 \(line 2\) and data row 2"),
    ("case_id,g1\nA,inf\n", r"column 'g1': non-numeric value 'inf'"),
    ("case_id\nA\n", "no feature columns"),
    ("case_id,g1\nA,\n", "holds no values"),
])
def test_genomics_errors(tmp_path, text, pattern):
    with pytest.raises(BadInputError, match=pattern):
        read_genomics(_write(tmp_path, text, "g.csv"))


# -- load_cohort ---------------------------------------------------------------------------------------
def _features(tmp_path, kit, slides: dict[str, int], d: int = 8):
    folder = tmp_path / "job" / "20x_256px_0px_overlap" / "features_uni_v1"
    for i, (slide, n) in enumerate(slides.items()):
        x = kit.feats(n, d, seed=i) if n else np.empty((0,), np.float32)
        kit.write_trident(folder / f"{slide}.h5", x, None if n else np.empty((0, 2), np.int64))
    return tmp_path / "job"


SLIDES = {"TCGA-AA-0001-01Z-00-DX1": 4, "TCGA-AA-0001-01Z-00-DX2": 3, "TCGA-BB-0002-01Z-00-DX1": 5,
          "TCGA-CC-0003-01Z-00-DX1": 2}


def test_load_cohort_survival_with_genomics(tmp_path, kit):
    job = _features(tmp_path, kit, {**SLIDES, "extra-slide": 3})
    rna = _write(tmp_path, ",g1,g2\nTCGA-AA-0001,1,2\nTCGA-BB-0002,3,4\nTCGA-ZZ-9999,5,6\n", "rna.csv")
    with pytest.warns(UserWarning) as record:
        cohort = load_cohort(job, _write(tmp_path, SURV), "survival", rna)
    messages = " | ".join(str(w.message) for w in record)
    assert "1 bag(s) have no clinical row" in messages and "'extra-slide'" in messages
    assert "1 genomics row(s) match no clinical case" in messages and "TCGA-ZZ-9999" in messages
    assert len(cohort) == 3 and cohort.feature_dim == 8
    bag = cohort.load_bag("TCGA-AA-0001")
    assert bag.features.shape == (7, 8) and bag.coords.shape == (7, 2)  # two slides concatenated
    values, mask = cohort.genomics_matrix()
    assert mask.tolist() == [True, True, False] and values[1].tolist() == [3, 4]


def test_load_cohort_missing_bags(tmp_path, kit):
    slides = dict(SLIDES)
    del slides["TCGA-CC-0003-01Z-00-DX1"], slides["TCGA-AA-0001-01Z-00-DX2"]
    job = _features(tmp_path, kit, slides)
    clinical = _write(tmp_path, SURV)
    with pytest.raises(BadInputError, match=r"2 case\(s\) have no bag for 2 of their slides, e.g. case 'TCGA-AA-0001'.*"
                                            r"--on-missing-bag skip"):
        load_cohort(job, clinical, "survival")
    with pytest.warns(UserWarning) as record:
        cohort = load_cohort(job, clinical, "survival", on_missing_bag="skip")
    assert [str(w.message).endswith("dropped (1 case(s) with no bag left)") for w in record] == [True]
    assert cohort.case_ids == ["TCGA-AA-0001", "TCGA-BB-0002"]
    assert cohort.slides["TCGA-AA-0001"] == ["TCGA-AA-0001-01Z-00-DX1"]


def test_load_cohort_locked_bag_counts_as_missing(tmp_path, kit):
    job = _features(tmp_path, kit, SLIDES)
    lock = next(job.glob("*/features_uni_v1/TCGA-CC-*.h5"))
    lock.with_name(lock.name + ".lock").write_text("{}")
    with warnings.catch_warnings(), pytest.raises(BadInputError, match="1 of the missing bags are locked"):
        warnings.simplefilter("ignore")
        load_cohort(job, _write(tmp_path, SURV), "survival")


def test_load_cohort_empty_bags(tmp_path, kit):
    job = _features(tmp_path, kit, {**SLIDES, "TCGA-CC-0003-01Z-00-DX1": 0, "TCGA-AA-0001-01Z-00-DX2": 0})
    clinical = _write(tmp_path, SURV)
    with pytest.raises(BadInputError, match=r"2 bag\(s\) are empty \(0 patches\).*--on-empty skip"):
        load_cohort(job, clinical, "survival")
    with pytest.warns(UserWarning) as record:
        cohort = load_cohort(job, clinical, "survival", on_empty="skip")
    assert [str(w.message).split(":")[0] for w in record] == [
        "skipping 2 empty bag(s) (0 patches)", "1 case(s) dropped"]
    assert cohort.case_ids == ["TCGA-AA-0001", "TCGA-BB-0002"]
    assert cohort.load_bag("TCGA-AA-0001").features.shape == (4, 8)
    with pytest.raises(BadInputError, match="on_empty='maybe'"):
        load_cohort(job, clinical, "survival", on_empty="maybe")


def test_load_cohort_bad_bag_and_genomics(tmp_path, kit):
    job = _features(tmp_path, kit, SLIDES)
    clinical = _write(tmp_path, SURV)
    rna = _write(tmp_path, "sample,g1\nS1,1\nS2,2\n", "rna.csv")
    with pytest.raises(BadInputError, match=r"none of the 2 genomics case ids match.*--genomics-case-col"):
        load_cohort(job, clinical, "survival", rna)
    target = next(job.glob("*/features_uni_v1/TCGA-BB-*.h5"))
    target.write_bytes(b"not hdf5")
    with pytest.raises(BadInputError, match="not an HDF5 file"):
        load_cohort(job, clinical, "survival")


def test_load_cohort_from_table_object(tmp_path, kit):
    job = _features(tmp_path, kit, SLIDES)
    table = read_clinical(_write(tmp_path, SURV), "survival")
    assert isinstance(table, ClinicalTable)
    genomics = pd.DataFrame({"g": [1.0]}, index=["TCGA-CC-0003"])
    cohort = load_cohort(job, table, "survival", genomics)
    assert cohort.has_genomics.tolist() == [False, False, True]
    with pytest.raises(BadInputError, match="read for survival, not classification"):
        load_cohort(job, table, "classification")


def test_load_cohort_genuine_trident(real_fixtures, tmp_path):
    clinical = _write(tmp_path, "case_id,slide_id,survival_months,censorship\nA,cmu_small_region.svs,10,0\n"
                      "B,tissue_speck.tif,5,1\n")
    cohort = load_cohort(real_fixtures / "trident/job", clinical, "survival",
                         patch_encoder="custom_vits16head768_fp16_seed1")
    assert cohort.feature_dim == 768
    assert cohort.load_bag("A").features.dtype == np.float32 and cohort.load_bag("B").features.shape == (6, 768)
