"""Every script in examples/ runs as a lab would run it (subprocess, a temp working folder, tiny budgets).

The shell examples that start several ``msrl-plugin`` processes are marked slow (each process imports torch):
``python -m pytest tests/test_examples.py -m ""`` runs them all.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pandas as pd
import pytest

EXAMPLES = Path(__file__).parents[1] / "examples"
#: the smallest demo cohort and budgets: each example in seconds
BUDGET = {"EPOCHS": "1", "FOLDS": "2", "CASES": "40", "OMP_NUM_THREADS": "1"}


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **BUDGET, **extra}
    # the msrl-plugin script installed next to this interpreter (a venv's bin/)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    if args[0] == "bash" and shutil.which("msrl-plugin", path=_env()["PATH"]) is None:
        pytest.skip("the msrl-plugin console script is not installed next to this interpreter")
    proc = subprocess.run(args, cwd=cwd, env=env or _env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_every_example_is_tested():
    tested = {"01_trident_end_to_end.sh", "02_clam_native.sh", "03_python_api.py",
              "04_sklearn_model_selection.py", "05_encode_slides.sh", "custom_aggregator"}
    found = {p.name for p in EXAMPLES.iterdir() if p.name != "README.md"}
    assert found == tested


@pytest.mark.slow
def test_trident_end_to_end(tmp_path):
    out = _run(["bash", str(EXAMPLES / "01_trident_end_to_end.sh"), "work"], tmp_path)
    work = tmp_path / "work"
    assert "usable" in out.lower()
    for model in ("abmil", "msrl"):
        assert (work / "results" / f"{model}_s1" / "summary.csv").is_file()
    assert "data:image/png;base64," in (work / "compare" / "report.html").read_text()
    assert len(pd.read_csv(work / "predictions.csv")) == 40
    assert list((work / "heatmaps").glob("*_heatmap.png"))


def test_clam_native(tmp_path):
    out = _run(["bash", str(EXAMPLES / "02_clam_native.sh"), "work"], tmp_path)
    summary = tmp_path / "work" / "clam" / "results" / "tcga_abmil_s1" / "summary.csv"
    assert list(pd.read_csv(summary, index_col=0).columns[:3]) == ["folds", "test_cindex", "val_cindex"]
    assert "test_cindex" in out


def test_python_api(tmp_path):
    out = _run([sys.executable, str(EXAMPLES / "03_python_api.py"), "--work", "work", "--epochs", "1",
                "--cases", "40"], tmp_path)
    assert "held-out: {'c_index'" in out and "saved and reloaded" in out


def test_sklearn_model_selection(tmp_path):
    out = _run([sys.executable, str(EXAMPLES / "04_sklearn_model_selection.py"), "--work", "work",
                "--epochs", "1", "--cases", "40"], tmp_path)
    assert "ABMIL best lr" in out and "MSRL 3-fold c-index" in out


@pytest.mark.slow
def test_encode_slides(tmp_path):
    out = _run(["bash", str(EXAMPLES / "05_encode_slides.sh"), "work"], tmp_path)
    files = list((tmp_path / "work" / "job").glob("*/slide_features_msrl-synthetic/*.h5"))
    assert len(files) == 40 and "40 slide embeddings" in out
    with h5py.File(files[0]) as f:
        assert f["features"].ndim == 1


def _install(package: Path, target: Path) -> None:
    """Install ``package`` into ``target`` offline: with pip when its build backend is at hand, else the
    layout pip would leave (the sources plus a dist-info with the pyproject's entry points)."""
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                          "-q", "-t", str(target), str(package)], capture_output=True, text=True, timeout=300)
    if pip.returncode == 0:
        return
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((package / "pyproject.toml").read_text())["project"]
    shutil.copytree(package / "src", target, dirs_exist_ok=True)
    info = target / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    groups = project["entry-points"]
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {obj}\n" for name, obj in eps.items()) for group, eps in groups.items()))


def test_custom_aggregator_registers_through_its_entry_point(tmp_path, monkeypatch):
    """Installed into a temporary target, the example package is found by the registry as model 'meanpool'."""
    from _cohorts import easy_survival_cohort

    from msrl_plugin import registry

    target = tmp_path / "site"
    _install(EXAMPLES / "custom_aggregator", target)
    monkeypatch.syspath_prepend(str(target))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # forget it again afterwards
    monkeypatch.setattr(registry, "_loaded", False)
    assert "meanpool" in registry.list_aggregators()
    cohort = easy_survival_cohort(n=24, dim=8)
    model = registry.create_aggregator("meanpool", max_epochs=1, hidden_dim=8, seed=0).fit(cohort)
    assert set(model.predict(cohort).index) == set(cohort.case_ids)
    assert len(model.training_history()) == 1
    # its build_wsi_encoder lends the encoder to MSRL under the same name
    from msrl_plugin.wsi_encoders import list_wsi_encoders

    assert list_wsi_encoders()["meanpool"] is None
    msrl = registry.create_aggregator("msrl_h", wsi_encoder="meanpool", embed_dim=8, max_epochs=1,
                                      pretrain_epochs=1, seed=0).fit(cohort)
    assert type(msrl.model_.wsi_encoder).__name__ == "MeanPoolEncoder"
    assert set(msrl.predict(cohort).index) == set(cohort.case_ids)


@pytest.mark.slow
def test_custom_aggregator_run_script(tmp_path):
    """The example's run.sh in a new process: list-models, train and compare with 'meanpool'."""
    target = tmp_path / "site"
    _install(EXAMPLES / "custom_aggregator", target)
    env = _env(PYTHONPATH=os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]))
    out = _run(["bash", str(EXAMPLES / "custom_aggregator" / "run.sh"), "work"], tmp_path, env)
    assert "meanpool" in out and "Mean pooling of patch features" in out
    per_fold = pd.read_csv(tmp_path / "work" / "compare" / "per_fold.csv")
    assert set(per_fold["model"]) == {"abmil", "meanpool"} and per_fold["c_index"].between(0, 1).all()
    assert (tmp_path / "work" / "results" / "meanpool_s1" / "s_0_checkpoint.pt").is_file()
