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
from test_bad_inputs import assert_nothing_half_written, assert_one_error, make_files, run_cli, train_args

from msrl_plugin.adapters.cache_folder import HEADER, MARKER, SUBFOLDER


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
