"""The bad-input tests' kit: a tiny TRIDENT-like cohort on disk and the CLI run in-process, with the
checks every bad-input test makes (one ``error:`` line, no traceback, nothing half-written)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from conftest import write_trident

from msrl_plugin.cli import main

DIM = 8
FAST = ["--max-epochs", "1", "--k", "2", "--seed", "1"]


# -- a tiny TRIDENT-like cohort on disk ------------------------------------------------------------
@dataclass
class Files:
    root: Path
    features: Path
    clinical: Path
    genomics: Path
    results: Path

    def bag(self, i: int) -> Path:
        return self.features / f"s{i}.h5"

    def cases(self) -> pd.DataFrame:
        return pd.read_csv(self.clinical, dtype=str)

    def write_cases(self, frame: pd.DataFrame) -> None:
        frame.to_csv(self.clinical, index=False)


def make_files(root: Path, n: int = 20, dim: int = DIM, task: str = "survival", seed: int = 0) -> Files:
    """``n`` one-slide cases with 6..12-patch TRIDENT bags, a clinical table and a 4-gene genomics table."""
    rng = np.random.default_rng(seed)
    features = root / "features_uni_v1"
    for i in range(n):
        n_patches = int(rng.integers(6, 12))
        write_trident(features / f"s{i}.h5", rng.normal(size=(n_patches, dim)).astype(np.float32))
    table = pd.DataFrame({"case_id": [f"c{i}" for i in range(n)],
                          "slide_id": [f"s{i}.svs" for i in range(n)]})
    if task == "survival":
        table["survival_months"] = np.round(rng.uniform(1, 60, n), 2)
        table["censorship"] = [i % 2 for i in range(n)]
    else:
        table["label"] = ["tumor" if i % 2 else "normal" for i in range(n)]
    clinical = root / "clinical.csv"
    table.to_csv(clinical, index=False)
    genomics = root / "genomics.csv"
    pd.DataFrame(rng.normal(size=(n, 4)), index=pd.Index(table["case_id"], name="case_id"),
                 columns=[f"g{j}" for j in range(4)]).to_csv(genomics)
    return Files(root, features, clinical, genomics, root / "results")



# -- running the CLI -------------------------------------------------------------------------------
@dataclass
class Run:
    code: int
    out: str
    err: str


def run_cli(capsys, *args) -> Run:
    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return Run(code, out, err)


def train_args(f: Files, *extra) -> list:
    return ["train", "--features", f.features, "--clinical", f.clinical, "--results-dir", f.results, *FAST,
            *extra]


def assert_one_error(run: Run, *must_contain: str) -> str:
    """Non-zero exit, one ``error:`` line on stderr (no traceback) that contains every ``must_contain``."""
    assert run.code != 0, run.out
    lines = [line for line in run.err.splitlines() if line.strip()]
    assert len(lines) == 1, run.err
    line = lines[0]
    assert line.startswith("error: "), line
    assert "Traceback" not in run.err + run.out
    for text in must_contain:
        assert text in line, f"{text!r} not in {line!r}"
    return line


def assert_nothing_half_written(results: Path) -> None:
    """No temporaries, no summary, and no fold whose checkpoint or predictions are missing."""
    if not results.exists():
        return
    names = [p.name for p in results.rglob("*") if p.is_file()]
    assert not [n for n in names if n.endswith(".tmp") or n.startswith(".")], names
    assert "summary.csv" not in names, names
    for name in names:
        if name.startswith("s_") and name.endswith("_checkpoint.pt"):
            k = name[2:-len("_checkpoint.pt")]
            assert f"split_{k}_results.csv" in names, names


def train_fails(capsys, f: Files, *extra, contains: tuple[str, ...] = ()) -> str:
    run = run_cli(capsys, *train_args(f, *extra))
    line = assert_one_error(run, *contains)
    assert_nothing_half_written(f.results)
    return line


def train_works(capsys, f: Files, *extra) -> Run:
    run = run_cli(capsys, *train_args(f, *extra))
    assert run.code == 0, run.err
    assert "Traceback" not in run.err + run.out
    return run


def trained_folder(capsys, f: Files) -> Path:
    """Train ABMIL on ``f`` (must succeed) and return its results folder."""
    train_works(capsys, f)
    return f.results / "abmil_s1"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every regular file under ``folder`` (links excluded) with its bytes, to show nothing changed."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink()}


def result_cases(f: Files, model: str = "abmil") -> set[str]:
    folder = f.results / f"{model}_s1"
    tables = [pd.read_csv(p, dtype=str) for p in folder.glob("split_*_results.csv")]
    return set().union(*(set(t["case_id"]) for t in tables))


