"""Write slide embeddings into a TRIDENT job dir as TRIDENT's own slide-feature step does (formats.md §1.5).

``<job>/<cdir>/slide_features_<name>/<slide>.h5`` holds two root datasets, written like TRIDENT's ``save_h5``
(chunks ``(1,) + shape[1:]``, maxshape ``(None,) + shape[1:]``, no compression, no file attributes):

- ``features`` ``(D,)`` float32 with attributes ``name`` (slide stem) and ``savetodir`` (the output folder,
  absolute as TRIDENT writes it);
- ``coords`` as read from the patch-feature file (squeezed), carrying that file's coords attributes with
  ``patch_size_level0`` cast to int64.

A 0-patch slide gets ``features`` ``(0,)`` float32 and its coords and attributes unchanged (what TRIDENT
writes). Skip and resume follow TRIDENT's lock protocol: ``<out>.lock`` (JSON ``pid``, ``hostname``,
``created_at``) exists while a slide is being written; a slide whose output exists without a lock is done.
A lock left by a dead process on this host is stale and the slide is redone; any other lock means another
worker is on it and the slide is skipped.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from ..atomic import atomic_path, write_json, write_text
from ..errors import BadInputError
from .bag_inspection import inspect_bag
from .bags import read_bag
from .layouts import find_bags

TRIDENT_LAYOUTS = ("trident_job", "trident_coords_dir", "trident_features")
LOCK_SUFFIX = ".lock"
_JOB_FIX = ("Pass a TRIDENT job dir (or one <mag>x_<ps>px_<ov>px_overlap/ folder of it) that holds "
            "features_<patch encoder>/")


# -- the lock protocol -------------------------------------------------------------------------------
def lock_path(output: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(output)}{LOCK_SUFFIX}")


def read_lock(output: str | os.PathLike) -> dict[str, Any] | None:
    """The lock's JSON (``{}`` if unreadable, e.g. still being written), or None when there is no lock."""
    path = lock_path(output)
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but belongs to someone else (or cannot be probed): assume alive
    return True


def lock_is_stale(info: dict[str, Any]) -> bool:
    """True only when the lock was made on this host by a process that no longer runs."""
    pid = info.get("pid")
    return (info.get("hostname") == socket.gethostname() and isinstance(pid, int) and pid > 0
            and pid != os.getpid() and not _pid_alive(pid))


def acquire_lock(output: str | os.PathLike) -> bool:
    """Create ``<output>.lock`` exclusively; False if another writer holds it.

    The JSON is written through :mod:`msrl_plugin.atomic` to a private temp file and hard-linked into
    place: ``link`` fails when the lock exists, so two workers can never both own a slide, and a lock is
    never seen half-written.
    """
    lock = lock_path(output)
    tmp = lock.with_name(f".{lock.name}.{socket.gethostname()}.{os.getpid()}")
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    write_json(tmp, {"pid": os.getpid(), "hostname": socket.gethostname(), "created_at": created})
    try:
        os.link(tmp, lock)
    except FileExistsError:
        return False
    except OSError:  # a filesystem without hard links: exclusive create instead
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as fh:
            fh.write(tmp.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)
    return True


def release_lock(output: str | os.PathLike) -> None:
    lock_path(output).unlink(missing_ok=True)


# -- reading the patch features and writing the slide file --------------------------------------------
@dataclass
class PatchFeatures:
    """One slide's patch-feature file: features ``(N, D) float32`` (``(0,)`` if empty), coords as stored,
    and the coords attributes with their stored types."""

    slide_id: str
    features: np.ndarray
    coords: np.ndarray
    coords_attrs: dict[str, Any]

    @property
    def empty(self) -> bool:
        return self.features.shape[0] == 0


def read_patch_features(path: str | os.PathLike) -> PatchFeatures:
    """Read a TRIDENT ``features_<enc>/<slide>.h5`` for the slide step (bad files raise BadInputError)."""
    path = Path(path)
    report = inspect_bag(path, scan_values=False)
    if report.n_patches == 0:
        features = np.zeros((0,), np.float32)
    else:
        features = read_bag(path, "trident").features  # validated: 2-D, finite, float32
    try:
        with h5py.File(path, "r") as f:
            coords_ds = f.get("coords")
            if not isinstance(coords_ds, h5py.Dataset):
                raise BadInputError("no 'coords' dataset (TRIDENT patch-feature files carry one)", path,
                                    "Re-run TRIDENT's feature step (--task feat) for this slide")
            coords = np.asarray(coords_ds[()])
            attrs = {k: coords_ds.attrs[k] for k in coords_ds.attrs}
    except OSError as exc:
        raise BadInputError(f"cannot read coords ({exc})", path, "Re-run feature extraction") from None
    return PatchFeatures(path.stem, features, coords, attrs)


def slide_coords_attrs(patch: PatchFeatures) -> dict[str, Any]:
    """The coords attributes as TRIDENT writes them to a slide file: ``patch_size_level0`` -> int64.

    The genuine runs keep it float64 in 0-patch slide files, so it is cast only for non-empty slides.
    """
    attrs = dict(patch.coords_attrs)
    if "patch_size_level0" in attrs and not patch.empty:
        attrs["patch_size_level0"] = np.int64(int(attrs["patch_size_level0"]))
    return attrs


def _save_h5_dataset(f: h5py.File, key: str, array: np.ndarray, attrs: dict[str, Any]) -> None:
    """One root dataset laid out like TRIDENT's ``save_h5``."""
    array = np.asarray(array)
    ds = f.create_dataset(key, shape=array.shape, dtype=array.dtype, chunks=(1,) + array.shape[1:],
                          maxshape=(None,) + array.shape[1:])
    if array.size:
        ds[...] = array
    for name, value in attrs.items():
        if isinstance(value, dict):
            value = json.dumps(value)
        ds.attrs[name] = "None" if value is None else value


def write_slide_features(out_path: str | os.PathLike, embedding: np.ndarray, patch: PatchFeatures) -> Path:
    """Write one slide-feature file atomically (a crash never leaves a truncated file TRIDENT would trust)."""
    out_path = Path(out_path)
    embedding = np.asarray(embedding, dtype=np.float32).reshape(-1)
    with atomic_path(out_path, suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
        _save_h5_dataset(f, "features", embedding,
                         {"name": patch.slide_id, "savetodir": os.path.abspath(out_path.parent)})
        _save_h5_dataset(f, "coords", np.squeeze(patch.coords), slide_coords_attrs(patch))
    return out_path


def read_slide_features(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A slide-feature file (TRIDENT's or ours): embedding ``(D,) float32``, coords, coords attributes."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if not {"features", "coords"} <= set(f.keys()):
                raise BadInputError(f"not a slide-feature file (datasets: {sorted(f.keys())})", path,
                                    "Pass a file from <job>/<cdir>/slide_features_<encoder>/")
            features = np.asarray(f["features"][()], dtype=np.float32)
            coords = np.asarray(f["coords"][()])
            attrs = {k: f["coords"].attrs[k] for k in f["coords"].attrs}
    except OSError as exc:
        raise BadInputError(f"cannot read this slide-feature file ({exc})", path,
                            "Re-run the slide step") from None
    if features.ndim != 1:
        raise BadInputError(f"'features' has shape {features.shape}, expected (D,)", path,
                            "Slide-feature files hold one vector per slide")
    return features, coords, attrs


# -- the job --------------------------------------------------------------------------------------
@dataclass
class TridentPatchFeatures:
    """The patch-feature files a slide step reads: ``files`` by slide id under ``coords_dir``."""

    coords_dir: Path
    patch_encoder: str
    files: dict[str, Path]
    locked: list[Path] = field(default_factory=list)


def find_patch_features(job_dir: str | os.PathLike, patch_encoder: str | None = None,
                        mag: float | None = None, patch_size: int | None = None,
                        overlap: int | None = None) -> TridentPatchFeatures:
    """Locate ``<cdir>/features_<patch_encoder>/`` in a TRIDENT job dir (several choices need the flags)."""
    index = find_bags(job_dir, patch_encoder, mag, patch_size, overlap)
    folder = index.folder
    if index.layout not in TRIDENT_LAYOUTS or folder is None or not folder.name.startswith("features_"):
        raise BadInputError(f"this is a {index.layout} features folder, not a TRIDENT job", job_dir, _JOB_FIX)
    return TridentPatchFeatures(folder.parent, folder.name[len("features_"):],
                                {sid: bf.path for sid, bf in index.files.items()}, list(index.locked))


@dataclass
class EncodeReport:
    """What :func:`encode_slides` did, slide ids per outcome."""

    out_dir: Path
    written: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    locked: list[str] = field(default_factory=list)
    stale_locks: list[str] = field(default_factory=list)
    input_locked: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        parts = [f"{len(self.written)} written", f"{len(self.empty)} empty (0 patches)",
                 f"{len(self.done)} already done", f"{len(self.locked)} locked by another run"]
        if self.stale_locks:
            parts.append(f"{len(self.stale_locks)} stale lock(s) redone")
        if self.input_locked:
            parts.append(f"{len(self.input_locked)} patch-feature file(s) still being written")
        if self.errors:
            parts.append(f"{len(self.errors)} error(s)")
        return f"{', '.join(parts)} -> {self.out_dir}"


def embed_slide(encoder: torch.nn.Module, patch: PatchFeatures, device: str) -> np.ndarray:
    """Call ``encoder`` the way TRIDENT's slide step does: ``(D,) float32``."""
    attrs = slide_coords_attrs(patch)
    coords = np.rint(np.asarray(patch.coords, dtype=np.float64)).astype(np.int64).reshape(1, -1, 2)
    batch = {"features": torch.from_numpy(patch.features).unsqueeze(0).to(device),
             "coords": torch.from_numpy(coords).to(device),
             "attributes": {k: (v.item() if isinstance(v, np.generic) else v) for k, v in attrs.items()}}
    precision = getattr(encoder, "precision", torch.float32)
    autocast = (contextlib.nullcontext() if precision == torch.float32
                else torch.autocast(torch.device(device).type, dtype=precision))
    with torch.inference_mode(), autocast:
        out = encoder(batch, device)
    return out.float().cpu().numpy().reshape(-1)


def _update_log(path: Path, lines: dict[str, str]) -> None:
    """TRIDENT-style ``_logs_*.txt``: one ``<slide>: <message>`` line per slide, later runs replace lines."""
    old: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            key, sep, msg = line.partition(": ")
            if sep:
                old[key] = msg
    old.update(lines)
    write_text(path, "".join(f"{k}: {v}\n" for k, v in old.items()))


def encode_slides(features: TridentPatchFeatures, encoder: torch.nn.Module, *, name: str | None = None,
                  device: str = "cpu", slides: Iterable[str] | None = None, skip_errors: bool = False,
                  config: dict[str, Any] | None = None,
                  log: Callable[[str], None] | None = None) -> EncodeReport:
    """Write ``<cdir>/slide_features_<name>/<slide>.h5`` for every slide (``name`` default: ``enc_name``).

    Slides already done are skipped; slides locked by a live run are skipped; stale locks are redone.
    A bad patch-feature file raises :class:`BadInputError` (``skip_errors=True``: listed in ``errors``).
    The encoder is anything with TRIDENT's slide-encoder contract (e.g. :class:`~msrl_plugin.slide_encoder.
    SlideEncoder`).
    """
    name = name or encoder.enc_name
    out_dir = features.coords_dir / f"slide_features_{name}"
    report = EncodeReport(out_dir, input_locked=[p.stem for p in features.locked])
    wanted = sorted(features.files) if slides is None else list(slides)
    unknown = [s for s in wanted if s not in features.files]
    if unknown:
        raise BadInputError(f"no patch features for slide {unknown[0]!r} ({len(unknown)} unknown)",
                            features.coords_dir / f"features_{features.patch_encoder}", "Check the slide ids")
    out_dir.mkdir(parents=True, exist_ok=True)
    messages: dict[str, str] = {}
    for slide in wanted:
        out = out_dir / f"{slide}.h5"
        info = read_lock(out)
        if info is not None:
            if not lock_is_stale(info):
                report.locked.append(slide)
                continue
            warnings.warn(f"{lock_path(out)}: stale lock of dead process {info.get('pid')}; "
                          "redoing the slide", stacklevel=2)
            if read_lock(out) == info:  # not replaced meanwhile by a worker that also found it stale
                release_lock(out)
            report.stale_locks.append(slide)
        elif out.exists():
            report.done.append(slide)
            continue
        if not acquire_lock(out):
            report.locked.append(slide)
            continue
        try:
            patch = read_patch_features(features.files[slide])
            dim = getattr(encoder, "feature_dim", None)
            if not patch.empty and dim is not None and patch.features.shape[1] != dim:
                raise BadInputError(f"patch features are {patch.features.shape[1]}-d but the model was "
                                    f"trained on {dim}-d features", features.files[slide],
                                    "Pass --patch-encoder of the features the model was trained on")
            embedding = np.zeros((0,), np.float32) if patch.empty else embed_slide(encoder, patch, device)
            write_slide_features(out, embedding, patch)
        except BadInputError as exc:
            if not skip_errors:
                raise
            report.errors[slide] = str(exc)
            messages[slide] = f"Error: {exc}"
            continue
        finally:
            release_lock(out)
        (report.empty if patch.empty else report.written).append(slide)
        messages[slide] = "Saving empty features (0 patches)." if patch.empty else "Slide features extracted."
        if log is not None:
            log(f"{slide}: {messages[slide]}")
    if config is not None:
        write_json(features.coords_dir / f"_config_slide_features_{name}.json",
                   {**config, "saveas": "h5", "saveto": os.fspath(out_dir)})
    if messages:
        _update_log(features.coords_dir / f"_logs_slide_features_{name}.txt", messages)
    return report
