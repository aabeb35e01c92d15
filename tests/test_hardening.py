"""Hardening, second round (issue 13): each case goes through the real CLI with input files made here.

The promise: one ``error:`` line naming the file and the fix, exit 2, no traceback, no input file changed,
nothing half-written; a shared ``--cache-dir`` only ever touches files the cache made.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from msrl_plugin.adapters.cache_folder import HEADER, MARKER, SUBFOLDER
from test_bad_inputs import assert_nothing_half_written, assert_one_error, make_files, run_cli, train_args


@pytest.fixture
def files(tmp_path: Path):
    return make_files(tmp_path)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink()}


def _train_ok(capsys, f, *extra):
    run = run_cli(capsys, *train_args(f, *extra))
    assert run.code == 0, run.err
    assert "Traceback" not in run.err + run.out
    return run


# -- 1. a shared --cache-dir ------------------------------------------------------------------------
def _planted_index(cache: Path, data_file: str) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "index.json").write_text(json.dumps({
        "format": "msrl-plugin-packed-cache", "version": 2, "data_file": data_file, "data_bytes": 0,
        "entries": {}}))


def test_planted_symlink_data_file_never_touches_its_target(capsys, files, tmp_path):
    victim = tmp_path / "victim.dat"
    victim.write_bytes(b"precious" * 100)
    cache = tmp_path / "cache"
    _planted_index(cache, "features-0123456789abcdef.bin")
    (cache / "features-0123456789abcdef.bin").symlink_to(victim)
    (cache / MARKER).write_text("")  # even inside a folder the cache owns
    with pytest.warns(UserWarning, match="symbolic link"):
        _train_ok(capsys, files, "--cache-dir", cache)
    assert victim.read_bytes() == b"precious" * 100
    assert (cache / "features-0123456789abcdef.bin").is_symlink()  # left alone, not deleted either


def test_index_naming_a_bag_and_the_features_folder_as_cache(capsys, files):
    _planted_index(files.features, "s0.h5")
    before = _snapshot(files.features)
    run = run_cli(capsys, *train_args(files, "--cache-dir", files.features))
    assert_one_error(run, str(files.features), "features folder", "--cache-dir")
    assert _snapshot(files.features) == before


def test_foreign_index_is_a_miss_with_a_warning_and_the_named_file_is_kept(capsys, files, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / MARKER).write_text("")
    mine = cache / "features-00000000000000aa.bin"
    mine.write_bytes(b"not written by the cache")
    _planted_index(cache, mine.name)
    with pytest.warns(UserWarning, match="damaged or foreign cache index"):
        _train_ok(capsys, files, "--cache-dir", cache)
    assert mine.read_bytes() == b"not written by the cache"


def test_a_planted_lock_link_is_refused_and_its_target_untouched(capsys, files, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / MARKER).write_text("")
    (cache / ".lock").symlink_to(victim)
    assert_one_error(run_cli(capsys, *train_args(files, "--cache-dir", cache)), ".lock", "--cache-dir")
    assert victim.read_text() == "keep"


def test_users_own_files_in_the_cache_folder_are_never_deleted(capsys, files, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "features-0001.bin").write_bytes(b"user data")
    (scratch / "index.json").write_text('{"mine": true}')
    _train_ok(capsys, files, "--cache-dir", scratch)
    assert (scratch / "features-0001.bin").read_bytes() == b"user data"
    assert (scratch / "index.json").read_text() == '{"mine": true}'
    own = scratch / SUBFOLDER  # a folder holding other files gets the cache in a subfolder
    assert (own / MARKER).is_file()
    data = [p for p in own.glob("features-*.bin")]
    assert len(data) == 1 and data[0].read_bytes().startswith(HEADER)
    # a file at a generated-looking name that the cache did not make survives every later run
    stranger = own / "features-00000000000000ff.bin"
    stranger.write_bytes(b"x" * 100)
    _train_ok(capsys, files, "--cache-dir", scratch, "--exp-code", "again")
    assert stranger.read_bytes() == b"x" * 100


# -- 2. every bad value: one error line, exit 2, nothing written ------------------------------------
@pytest.mark.parametrize("extra, flag", [
    (("--batch-size", "0"), "batch_size"), (("--lr", "-1"), "lr"), (("--drop-out", "1.5"), "dropout"),
    (("--param", "hidden_dim=abc"), "hidden_dim"), (("--max-epochs", "-3"), "max_epochs"),
    (("--k-start", "2"), "--k-start"), (("--k-start", "1", "--k-end", "1"), "--k-end"),
    (("--k-end", "5"), "--k-end"), (("--seed", "-2"), "seed"),
])
def test_bad_flag_values(capsys, files, extra, flag):
    run = run_cli(capsys, *train_args(files, *extra))
    assert_one_error(run, flag)
    assert run.code == 2
    assert not files.results.exists() or not any(files.results.rglob("*"))


@pytest.mark.parametrize("text", ["lr: [1, 2\n", "lr: !!python/object/apply:os.system ['echo hi']\n",
                                  "\tlr: 1\n"])
def test_malformed_or_unsafe_config(capsys, files, tmp_path, text):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    run = run_cli(capsys, *train_args(files, "--config", config))
    assert_one_error(run, str(config), "YAML")
    assert not files.results.exists()


def test_config_values_are_checked_like_flags(capsys, files, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("batch_size: 0\n")
    assert_one_error(run_cli(capsys, *train_args(files, "--config", config)), "batch_size")


@pytest.mark.parametrize("text, word", [("seed: 1.5\n", "seed"), ("k: three\n", "--k")])
def test_config_values_of_the_wrong_type(capsys, files, tmp_path, text, word):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    args = ["train", "--features", files.features, "--clinical", files.clinical, "--results-dir", files.results,
            "--max-epochs", "1", "--config", config]
    assert_one_error(run_cli(capsys, *args), word)
    assert not files.results.exists()


def test_a_flag_click_cannot_parse_is_one_line(capsys, files):
    assert_one_error(run_cli(capsys, *train_args(files, "--batch-size", "abc")), "--batch-size", "--help")


def _trained(capsys, f) -> Path:
    _train_ok(capsys, f)
    return f.results / "abmil_s1"


def _edit_checkpoint(path: Path, **params) -> None:
    import torch

    ckpt = torch.load(path, weights_only=True)
    ckpt["params"] = json.dumps({**json.loads(ckpt["params"]), **params})
    torch.save(ckpt, path)


@pytest.mark.parametrize("params", [{"batch_size": 0}, {"n_bins": 0}])
def test_checkpoint_with_impossible_parameters(capsys, files, tmp_path, params):
    ckpt = _trained(capsys, files) / "s_0_checkpoint.pt"
    _edit_checkpoint(ckpt, **params)
    out = tmp_path / "pred.csv"
    run = run_cli(capsys, "predict", "--model-path", ckpt, "--features", files.features, "--out", out)
    assert_one_error(run, str(ckpt), next(iter(params)))
    assert not out.exists()


def test_resume_with_foreign_fold_results(capsys, files):
    folder = _trained(capsys, files)
    (folder / "split_0_results.csv").write_text("case_id,risk\nzz1,0.5\nzz2,0.1\n")
    before = _snapshot(folder)
    run = run_cli(capsys, *train_args(files, "--resume"))
    assert_one_error(run, "split_0_results.csv", "not this run")
    assert _snapshot(folder) == before


def test_resume_with_a_training_state_for_other_features(capsys, files, tmp_path):
    from msrl_plugin.adapters import load_cohort

    from msrl_plugin.aggregators.abmil import ABMILAggregator

    other = make_files(tmp_path / "other", dim=16)
    cohort = load_cohort(other.features, other.clinical, "survival")
    state = files.results / "abmil_s1" / "s_0_training_state.pt"
    ABMILAggregator(max_epochs=1, seed=1).enable_resume(state).fit(cohort)  # what a killed 16-d run leaves
    before = _snapshot(files.results)
    run = run_cli(capsys, *train_args(files, "--resume"))
    assert_one_error(run, str(state), "16-d")
    assert _snapshot(files.results) == before


def test_a_run_that_stopped_after_its_config_can_be_started_again(capsys, files):
    folder = files.results / "abmil_s1"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"lr": 123}))  # an earlier start that failed
    _train_ok(capsys, files)
    assert json.loads((folder / "config.json").read_text())["lr"] != 123  # this run's own settings


def test_genomics_ids_that_do_not_match_fail_before_anything_is_written(capsys, files):
    import pandas as pd

    genomics = pd.read_csv(files.genomics, dtype=str)
    genomics["case_id"] = [f"00{i}" if i else "c0" for i in range(len(genomics))]  # only c0 matches
    genomics.to_csv(files.genomics, index=False)
    run = run_cli(capsys, *train_args(files, "--genomics", files.genomics, "--model", "msrl", "--k", "5",
                                      "--param", "pretrain_epochs=0"))
    assert_one_error(run, "fold", "genomics")
    assert_nothing_half_written(files.results)
    assert not list(files.results.rglob("split_*"))


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
    _train_ok(capsys, files)
    assert not any(p.exists() for p in stale) and notes.read_text() == "mine"


def test_results_files_honour_the_umask(capsys, files):
    old = os.umask(0o022)
    try:
        folder = _trained(capsys, files)
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
        _train_ok(capsys, files, "--genomics", files.genomics, "--model", "msrl", "--param", "pretrain_epochs=0")


def test_case_ids_in_nfc_and_nfd_are_one_case_and_leading_zeros_survive(capsys, files):
    import unicodedata

    import pandas as pd

    table = pd.read_csv(files.clinical, dtype=str)
    table.loc[0, "case_id"] = unicodedata.normalize("NFD", "café-0012")
    table.loc[1, "case_id"] = unicodedata.normalize("NFC", "café-0012")
    table.loc[1, ["survival_months", "censorship"]] = table.loc[0, ["survival_months", "censorship"]]
    table.loc[2, "case_id"] = "0012"
    table.to_csv(files.clinical, index=False)
    _train_ok(capsys, files)
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
        _train_ok(capsys, files)
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
    folder = _trained(capsys, files)
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
    _train_ok(capsys, files)


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
