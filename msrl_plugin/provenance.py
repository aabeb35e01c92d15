"""Provenance: what produced a results folder, and whether a rerun into it would mix two data sets.

Every command writes a ``provenance.json`` (``RunRecord``): the msrl-plugin version (and git commit when run
from a checkout), Python / torch / CUDA versions, the command line, start and end time, the device, the
precision each model was asked for and the one it trained in, the CPU model (and its bf16 flags) and GPU
models, and fingerprints of the inputs: a SHA-256 of each table and of the sorted ``(slide id, bytes,
mtime)`` listing of the bags (with ``--hash-contents``, a SHA-256 of every bag file too).

A rerun or ``--resume`` into a folder whose recorded fingerprints differ is refused (:func:`check_inputs`)
unless ``--allow-changed-inputs`` is given: results of two data sets never mix in one folder.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .atomic import write_text
from .errors import MSRLPluginError
from .fingerprints import describe_changes, input_fingerprints, sha256_file

FORMAT = "msrl-plugin-provenance"
VERSION = 1
FILE_NAME = "provenance.json"
#: the override flag a refused rerun names
ALLOW_FLAG = "--allow-changed-inputs"

_command_line: list[str] | None = None


def set_command_line(argv: list[str]) -> None:
    """The command line to record (the CLI's entry point sets it; tests call ``main(argv)`` in-process)."""
    global _command_line
    _command_line = list(argv)


def command_line() -> str:
    return shlex.join(_command_line if _command_line is not None else [Path(sys.argv[0]).name, *sys.argv[1:]])


def now() -> str:
    """Local time with its UTC offset, to the second (ISO 8601)."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


# -- the machine and the software ------------------------------------------------------------------
def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("msrl-plugin")
    except PackageNotFoundError:
        from . import __version__

        return __version__


def source_checkout() -> Path | None:
    """The msrl-plugin source tree this package is imported from, when it is one (an editable install)."""
    root = Path(__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    try:
        if 'name = "msrl-plugin"' in pyproject.read_text():
            return root
    except OSError:
        pass
    return None


def git_commit(root: Path | None = None) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` of the checkout msrl-plugin runs from; None when it is not a git
    checkout or git is not installed (never an error: provenance must not stop a run)."""
    root = root if root is not None else source_checkout()
    if root is None:
        return None
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                                  env=env, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != root.resolve():  # another repository that happens to hold us
        return None
    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def cpu_model(path: str = "/proc/cpuinfo") -> str:
    with contextlib.suppress(OSError):
        with open(path) as fh:
            for line in fh:
                if line.startswith(("model name", "Model", "Hardware")):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def environment(device: str) -> dict[str, Any]:
    """Versions, machine and device of this process."""
    import torch

    from .precision import cpu_flags

    flags = cpu_flags()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    return {
        "msrl_plugin": package_version(), "git": git_commit(), "python": platform.python_version(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "platform": platform.platform(),
        "device": device,
        "cpu": {"model": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                "capability": str(torch.backends.cpu.get_cpu_capability()),
                "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags},
        "gpus": gpus,
    }


def read_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """A provenance file's content, or None when there is none (or it is not one of ours)."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("format") == FORMAT else None


def check_inputs(recorded: str | os.PathLike, inputs: dict[str, Any], allow: bool, where: str) -> str | None:
    """Refuse to write into ``where`` when the provenance at ``recorded`` names other inputs than ``inputs``.

    Returns the change (one phrase) when ``allow`` lets it pass, None when nothing changed or nothing was
    recorded. ``where`` names the flag that chooses the folder, for the fix."""
    record = read_record(recorded)
    change = None if record is None or "inputs" not in record else describe_changes(record["inputs"], inputs)
    if change and not allow:
        raise MSRLPluginError(f"the inputs differ from those of the results here ({change})", recorded,
                              f"choose another {where}, or pass {ALLOW_FLAG} to write into it anyway")
    return change


def start_record(command: str, recorded: str | os.PathLike, cohort, device: str, *,
                 features: str | os.PathLike | None = None, tables: dict[str, Any] | None = None,
                 hash_contents: bool = False, allow_changed: bool = False, holds_results: bool = True,
                 resume: bool = False, where: str = "output folder", models: dict[str, Any] | None = None,
                 settings: dict[str, Any] | None = None) -> RunRecord:
    """Fingerprint the inputs, refuse them when ``recorded`` (an existing provenance file beside results,
    ``holds_results``) names others (a warning instead with ``allow_changed``), and return the run's record
    (not yet written: write it once the command's own checks have passed). ``models``: name -> unfitted
    aggregator, for the precision each will train in; ``resume`` keeps the earlier runs' records."""
    inputs = input_fingerprints(cohort, features, tables, hash_contents)
    change = check_inputs(recorded, inputs, allow_changed, where) if holds_results else None
    if change:
        warnings.warn(f"{recorded}: the inputs differ from those of the results here ({change}); writing into "
                      f"it anyway, as {ALLOW_FLAG} asks", stacklevel=2)
    record = RunRecord(command, inputs, device, settings={"hash_contents": hash_contents, **(settings or {})},
                       inputs_changed=change)
    for name, aggregator in (models or {}).items():
        record.expect_model(name, aggregator)
    if resume:
        record.continue_from(recorded)
    return record


# -- the record ------------------------------------------------------------------------------------
@dataclass
class RunRecord:
    """What one command run used; :meth:`write` it at the start and again at the end.

    ``precision[model] = {"requested": ..., "used": ...}``: ``used`` is what the fitted model reports
    (``precision_``) once one is fitted, else what the request resolves to on ``device``."""

    command: str
    inputs: dict[str, Any]
    device: str
    settings: dict[str, Any] = field(default_factory=dict)
    precision: dict[str, dict[str, Any]] = field(default_factory=dict)
    started: str = field(default_factory=now)
    command_line: str = field(default_factory=command_line)
    extra: dict[str, Any] = field(default_factory=dict)
    folds: dict[str, dict[str, Any]] = field(default_factory=dict)
    previous_runs: list[dict[str, Any]] = field(default_factory=list)
    inputs_changed: str | None = None

    def __post_init__(self) -> None:
        self.environment = environment(self.device)

    def expect_model(self, name: str, aggregator) -> None:
        """The precision ``aggregator`` (unfitted) will train in on this run's device."""
        import torch

        from .precision import resolve_precision

        requested = getattr(aggregator, "precision", None)
        used = resolve_precision(requested, torch.device(self.device)) if requested in ("auto", "fp32", "bf16") \
            else "fp32"
        self.precision[name] = {"requested": requested or "fp32 (the model has no precision setting)",
                                "used": used}

    def record_model(self, name: str, model, fold: str | int | None = None) -> None:
        """A fitted model: its actual training precision, per fold when ``fold`` is given."""
        used = getattr(model, "precision_", None)
        if used is None:  # a model loaded back: its checkpoint's record says how it trained
            embedded = (getattr(model, "provenance_", None) or {}).get("precision", {}).get(name, {})
            used = embedded.get("used") if isinstance(embedded, dict) else None
        if used is not None:
            self.precision.setdefault(name, {})["used"] = used
        if fold is not None:
            self.folds[str(fold)] = {"model": name, "precision": used, "finished": now()}

    def continue_from(self, path: str | os.PathLike) -> RunRecord:
        """On resume: keep the runs recorded in ``path`` (without their bag listings) as ``previous_runs``."""
        old = read_record(path)
        if old is not None:
            earlier = old.pop("previous_runs", [])
            self.previous_runs = [*earlier, _without_listing(old)]
        return self

    def to_dict(self, finished: bool = False) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "command": self.command,
                "command_line": self.command_line, "started": self.started,
                "finished": now() if finished else None, "status": "finished" if finished else "running",
                **self.environment, "precision": self.precision, "settings": self.settings,
                **self.extra, "folds": self.folds, "inputs_changed": self.inputs_changed,
                "inputs": self.inputs, "previous_runs": self.previous_runs}

    def write(self, path: str | os.PathLike, finished: bool = False) -> Path:
        write_text(path, dumps(self.to_dict(finished)))
        return Path(path)

    def for_checkpoint(self, name: str, model, fold: str | int | None = None) -> dict[str, Any]:
        """The record a checkpoint carries: this run without the bag listing, with the model's precision."""
        record = _without_listing(self.to_dict())
        record.update(status="checkpoint written", checkpoint_written=now(), fold=fold, model=name,
                      precision={name: {**self.precision.get(name, {}),
                                        "used": getattr(model, "precision_", None)}})
        for key in ("folds", "previous_runs"):
            record.pop(key, None)
        return json.loads(json.dumps(record, default=str))


def dumps(record: dict[str, Any]) -> str:
    """Indented JSON in the record's own key order, each list of plain values on one line (a bag per line)."""
    leaves: list[str] = []

    def fold(value):
        if isinstance(value, dict):
            return {str(k): fold(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            if all(not isinstance(v, dict | list | tuple) for v in value):
                leaves.append(json.dumps(list(value), default=str))
                return f"\0{len(leaves) - 1}\0"
            return [fold(v) for v in value]
        return value

    text = json.dumps(fold(record), indent=2, default=str)
    return re.sub(r'"\\u0000(\d+)\\u0000"', lambda m: leaves[int(m.group(1))], text) + "\n"


def _without_listing(record: dict[str, Any]) -> dict[str, Any]:
    out = dict(record)
    inputs = dict(out.get("inputs") or {})
    if isinstance(inputs.get("bags"), dict):
        inputs["bags"] = {k: v for k, v in inputs["bags"].items() if k not in ("files", "files_columns")}
    out["inputs"] = inputs
    return out


def checkpoint_provenance(model, checkpoint: str | os.PathLike) -> dict[str, Any]:
    """What is known of how a checkpoint was made: the record it carries, else the ``provenance.json`` of
    its results folder (checkpoints written before 0.2 carry none), plus its own SHA-256."""
    checkpoint = Path(checkpoint)
    record, source = getattr(model, "provenance_", None), "embedded in the checkpoint"
    if not record:
        folder = read_record(checkpoint.parent / FILE_NAME)
        record, source = (_without_listing(folder), f"{checkpoint.parent / FILE_NAME}") if folder else \
            (None, "not recorded (checkpoint written before provenance was kept)")
    return {"path": str(checkpoint), "sha256": sha256_file(checkpoint), "provenance_source": source,
            "provenance": record}
