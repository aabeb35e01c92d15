"""Hardening, second round (issue 13), part 2: disk full, killed runs and signals, file modes, silent wrong
results, formula injection, messages and TRIDENT ``.pt`` bags, through the real CLI.

The promise: one ``error:`` line naming the file and the fix, exit 2, no traceback, no input file changed,
nothing half-written and no temporaries left behind.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from _bad_input_kit import (
    assert_nothing_half_written,
    assert_one_error,
    run_cli,
    train_args,
    train_works,
    trained_folder,
)


# -- 3. disk full, killed runs, file modes ------------------------------------------------------------
def _no_temporaries(folder: Path) -> None:
    assert not [p.name for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_disk_full_while_saving_a_training_state(capsys, files, monkeypatch):
    import errno

    import torch

    real_save = torch.save

    def full_disk(obj, fh, *args, **kwargs):
        fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    run = run_cli(capsys, *train_args(files))
    monkeypatch.setattr(torch, "save", real_save)
    line = assert_one_error(run, "s_0_training_state.pt", "No space left on device", "Free disk space")
    assert run.code == 2 and "nothing partial was left" in line
    _no_temporaries(files.results)
    assert not list(files.results.rglob("*.pt"))


def test_disk_full_while_writing_a_csv(capsys, files, monkeypatch):
    import errno

    import pandas as pd

    def full_disk(self, path, *args, **kwargs):
        Path(path).write_text("case_id,ri")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full_disk)
    run = run_cli(capsys, *train_args(files))
    assert_one_error(run, "splits_0.csv", "No space left on device")
    _no_temporaries(files.results)
    assert not list(files.results.rglob("*.csv"))


def test_disk_full_at_the_last_file_of_a_fold_leaves_no_half_fold(capsys, files, monkeypatch):
    import errno

    import pandas as pd

    real = pd.DataFrame.to_csv

    def full_at_predictions(self, path, *args, **kwargs):
        if "split_0_results" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", full_at_predictions)
    run = run_cli(capsys, *train_args(files))
    assert_one_error(run, "split_0_results.csv", "No space left on device")
    assert_nothing_half_written(files.results)
    assert not list(files.results.rglob("s_0_checkpoint.pt"))


def test_temporaries_of_a_killed_run_are_removed_by_the_next(capsys, files):
    folder = files.results / "abmil_s1"
    folder.mkdir(parents=True)
    stale = [folder / ".s_0_training_state.pt.k2j4h_9x.tmp", folder / ".splits_0.csv.abcdefgh.csv.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    notes = folder / "notes.tmp"  # not a name the writer makes
    notes.write_text("mine")
    train_works(capsys, files)
    assert not any(p.exists() for p in stale) and notes.read_text() == "mine"


def test_results_files_honour_the_umask(capsys, files):
    old = os.umask(0o022)
    try:
        folder = trained_folder(capsys, files)
    finally:
        os.umask(old)
    for name in ("summary.csv", "config.json", "s_0_checkpoint.pt", "split_0_results.csv"):
        assert (folder / name).stat().st_mode & 0o777 == 0o644, name


def test_ctrl_c_while_saving_leaves_no_temporaries(capsys, files, monkeypatch):
    import torch

    def interrupted(obj, fh, *args, **kwargs):
        fh.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    run = run_cli(capsys, *train_args(files))
    assert run.code == 130 and "aborted" in run.err and "Traceback" not in run.err
    _no_temporaries(files.results)


def test_sigterm_leaves_no_temporaries(files):
    import signal
    import subprocess
    import sys
    import time

    args = [sys.executable, "-m", "msrl_plugin.cli", "--threads", "1", *map(str, train_args(files)),
            "--max-epochs", "100000"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    state = files.results / "abmil_s1" / "s_0_training_state.pt"
    try:
        for _ in range(1200):  # poll for the first epoch's state (a state, not a time, is what is waited for)
            if state.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert state.exists(), proc.stderr.read() if proc.poll() is not None else "no training state yet"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143 and "terminated" in err and "Traceback" not in err, err
    _no_temporaries(files.results)


# -- 4. validate on a file declaring more rows than it holds ------------------------------------------
def test_validate_a_tiny_file_declaring_2_40_rows(capsys, tmp_path):
    import h5py

    folder = tmp_path / "features_x"
    folder.mkdir()
    with h5py.File(folder / "huge.h5", "w") as f:
        f.create_dataset("features", shape=(2**40, 16), dtype="f4", chunks=(1, 16), maxshape=(None, 16))
    with h5py.File(folder / "contiguous.h5", "w") as f:
        f.create_dataset("features", shape=(2**40, 16), dtype="f4")
    assert (folder / "huge.h5").stat().st_size < 1 << 20
    run = run_cli(capsys, "validate", folder)
    assert run.code == 1
    assert run.out.count("declares shape (1099511627776, 16)") == 2 and "NOT USABLE" in run.out


# -- 6. silent wrong results ---------------------------------------------------------------------------
def test_duplicate_column_names_are_refused(capsys, files):
    text = files.clinical.read_text().splitlines()
    rows = [text[0] + ",censorship"] + [line + ",0" for line in text[1:]]
    files.clinical.write_text("\n".join(rows) + "\n")
    assert_one_error(run_cli(capsys, *train_args(files)), str(files.clinical), "'censorship' appears twice")


def test_empty_genomics_cells_are_imputed_with_a_warning(capsys, files):
    import pandas as pd

    genomics = pd.read_csv(files.genomics, dtype=str)
    genomics.loc[2, "g1"] = None
    genomics.to_csv(files.genomics, index=False)
    with pytest.warns(UserWarning, match=r"1 empty genomics cell.*imputed with the training cases' mean"):
        train_works(capsys, files, "--genomics", files.genomics, "--model", "msrl", "--param", "pretrain_epochs=0")


def test_case_ids_in_nfc_and_nfd_are_one_case_and_leading_zeros_survive(capsys, files):
    import unicodedata

    import pandas as pd

    table = pd.read_csv(files.clinical, dtype=str)
    table.loc[0, "case_id"] = unicodedata.normalize("NFD", "café-0012")
    table.loc[1, "case_id"] = unicodedata.normalize("NFC", "café-0012")
    table.loc[1, ["survival_months", "censorship"]] = table.loc[0, ["survival_months", "censorship"]]
    table.loc[2, "case_id"] = "0012"
    table.to_csv(files.clinical, index=False)
    train_works(capsys, files)
    ids = set()
    for path in (files.results / "abmil_s1").glob("split_*_results.csv"):
        ids |= set(pd.read_csv(path, dtype=str)["case_id"])
    assert unicodedata.normalize("NFC", "café-0012") in ids and "0012" in ids and len(ids) == 19


def test_integer_features_warn_once(capsys, files):
    import h5py

    for i in range(3):
        with h5py.File(files.bag(i), "r+") as f:
            data = f["features"][()]
            del f["features"]
            f.create_dataset("features", data=np.round(data * 10).astype(np.int32))
    with pytest.warns(UserWarning, match="int32 features are cast to float32") as record:
        train_works(capsys, files)
    assert sum("cast to float32" in str(w.message) for w in record) == 1


def test_external_link_features_are_refused(capsys, files, tmp_path):
    import h5py

    outside = tmp_path / "outside.h5"
    with h5py.File(outside, "w") as f:
        f.create_dataset("features", data=np.ones((5, 8), np.float32))
    with h5py.File(files.bag(0), "r+") as f:
        del f["features"]
        f["features"] = h5py.ExternalLink(str(outside), "/features")
    assert_one_error(run_cli(capsys, *train_args(files)), str(files.bag(0)), "external link")


# -- 7. formula injection --------------------------------------------------------------------------------
def test_formula_cells_are_neutralised_in_every_csv_written(capsys, files, tmp_path):
    import pandas as pd

    table = pd.read_csv(files.clinical, dtype=str)
    evil = {0: '=HYPERLINK("http://x","y")', 1: "+cmd|' /C calc'!A0", 2: "@SUM(A1)", 3: "-2+3", 4: "-7"}
    for i, case in evil.items():
        table.loc[i, "case_id"] = case
    table.to_csv(files.clinical, index=False)
    folder = trained_folder(capsys, files)
    cells = set()
    for path in folder.glob("*.csv"):
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        cells |= set(frame.to_numpy().ravel()) | set(frame.columns)
    assert not [c for c in cells if c[:1] in ("=", "+", "@", "\t", "\r") or (c.startswith("-") and not
                                                                              _is_number(c))]
    assert "'=HYPERLINK(\"http://x\",\"y\")" in cells and "-7" in cells  # an id that is a number stays as is
    risks = pd.concat(pd.read_csv(p) for p in folder.glob("split_*_results.csv"))["risk"]
    assert risks.dtype == float and (risks < 0).all()  # negative numbers stay numbers
    out = tmp_path / "pred.csv"
    assert run_cli(capsys, "predict", "--model-path", folder / "s_0_checkpoint.pt", "--features",
                   files.features, "--clinical", files.clinical, "--out", out).code == 0
    assert "'@SUM(A1)" in set(pd.read_csv(out, dtype=str)["case_id"])
    # and a resumed run reads its own neutralised ids back
    assert run_cli(capsys, *train_args(files, "--resume")).code == 0


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# -- 8. messages -------------------------------------------------------------------------------------------
def test_semicolon_separated_csv_is_read(capsys, files):
    text = files.clinical.read_text().replace(",", ";")
    files.clinical.write_text(text)
    train_works(capsys, files)


def test_semicolon_csv_with_missing_columns_says_so(capsys, files):
    text = files.clinical.read_text().replace(",", ";").replace("censorship", "status")
    files.clinical.write_text(text)
    assert_one_error(run_cli(capsys, *train_args(files)), str(files.clinical), "'censorship'")


@pytest.mark.parametrize("kind, words", [("dir", "is a folder"), ("loop", "symbolic link loop")])
def test_folder_or_link_loop_named_like_a_bag(capsys, files, kind, words):
    bag = files.bag(3)
    bag.unlink()
    if kind == "dir":
        bag.mkdir()
    else:
        bag.symlink_to(bag.name)
    assert_one_error(run_cli(capsys, *train_args(files)), str(bag), words)


def test_sparse_pt_bag_is_reported_as_sparse(capsys, tmp_path):
    import torch

    folder = tmp_path / "pt_files"
    folder.mkdir()
    torch.save(torch.eye(4).to_sparse(), folder / "s.pt")
    run = run_cli(capsys, "validate", folder)
    assert run.code == 1 and "sparse" in run.out


# -- 9. TRIDENT saveas='pt' of a slide without tissue ---------------------------------------------------
def _pt_cohort(root: Path, n: int = 20):
    import pandas as pd
    import torch

    folder = root / "features_uni_v1"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):  # TRIDENT saveas='pt' pickles the numpy array itself
        torch.save(rng.normal(size=(int(rng.integers(6, 12)), 8)).astype(np.float32), folder / f"s{i}.pt")
    torch.save(np.zeros((0,), np.float32), folder / f"s{n}.pt")  # TRIDENT's 0-patch output: shape (0,)
    clinical = root / "clinical.csv"
    pd.DataFrame({"case_id": [f"c{i}" for i in range(n + 1)], "slide_id": [f"s{i}" for i in range(n + 1)],
                  "survival_months": rng.uniform(1, 60, n + 1).round(2),
                  "censorship": [i % 2 for i in range(n + 1)]}).to_csv(clinical, index=False)
    return folder, clinical


def test_trident_pt_bag_of_an_empty_slide_is_an_empty_bag(capsys, tmp_path):
    folder, clinical = _pt_cohort(tmp_path)
    base = ["train", "--features", folder, "--clinical", clinical, "--results-dir", tmp_path / "r",
            "--max-epochs", "1", "--k", "2"]
    assert_one_error(run_cli(capsys, *base), "s20.pt", "empty (0 patches)", "--on-empty skip")
    run = run_cli(capsys, *base, "--on-empty", "skip")
    assert run.code == 0, run.err
    assert "empty" in run_cli(capsys, "validate", folder).out


def test_other_pickled_objects_in_pt_bags_stay_refused(capsys, tmp_path):
    import torch

    class Sized:
        def __reduce__(self):
            return (bytes, (10**6,))  # bytes(n) would allocate n bytes on the file's say-so

    folder = tmp_path / "pt_files"
    folder.mkdir()
    torch.save({"features": Sized()}, folder / "s.pt")
    run = run_cli(capsys, "validate", folder)
    assert run.code == 1 and "refusing to unpickle" in run.out


def test_a_signal_during_torch_save_ends_as_the_signal(tmp_path, monkeypatch):
    """SIGTERM inside torch.save makes its zip writer fail on closing; the stop, not that error, propagates."""
    import torch

    from msrl_plugin.atomic import write_torch

    def interrupted_save(obj, fh):
        try:
            raise SystemExit(143)  # what the SIGTERM handler raises mid-write
        finally:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos")

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(SystemExit) as stop:
        write_torch(tmp_path / "state.pt", {"x": 1})
    assert stop.value.code == 143
    assert list(tmp_path.iterdir()) == []
