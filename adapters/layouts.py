"""Find the feature bags under a folder, whichever toolkit laid it out.

Accepted roots: a TRIDENT job dir (``<mag>x_<ps>px_<ov>px_overlap/features_<enc>/*.h5``), one coords dir of it,
a TRIDENT ``features_<enc>/`` folder, a CLAM feature dir (``h5_files/`` preferred over ``pt_files/``) or one of
those two folders, and a flat folder of ``.h5`` (TRIDENT/CLAM ``features`` or STAMP ``feats``) or ``.pt`` bags.
"""
from __future__ import annotations

import errno
import os
import re
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import h5py

from ..errors import BadInputError
from .bags import PT_SUFFIXES, BagFile, detect_format, is_locked
from .paths import missing_problem

H5_SUFFIXES = (".h5", ".hdf5")
COORDS_DIR = re.compile(r"^(?P<mag>\d+(?:\.\d+)?)x_(?P<ps>\d+)px_(?P<ov>\d+)px_overlap$")
_FEATURES_FIX = ("Pass the features folder: TRIDENT <job>/<mag>x_<ps>px_<ov>px_overlap/features_<encoder>/ "
                 "or CLAM <feat_dir>/h5_files/")


@dataclass
class BagIndex:
    """The bags found under ``root``: ``files`` by slide id, ``locked`` files skipped, the ``layout`` seen.

    ``layout`` is one of ``trident_job``, ``trident_coords_dir``, ``trident_features``, ``clam``, ``flat``;
    ``folder`` is the folder the bag files were taken from.
    """

    files: dict[str, BagFile]
    locked: list[Path]
    layout: str
    root: Path
    folder: Path | None = None
    ignored: list[Path] = field(default_factory=list)
    #: slide id -> (path, what is wrong) for bag names that are not readable files (a folder, a link loop)
    unusable: dict[str, tuple[Path, str]] = field(default_factory=dict)


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _bag_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes)


def slide_id_of(path: Path) -> str:
    """The slide id of a bag file: its name without the final .h5/.pt, in Unicode NFC (macOS writes NFD)."""
    return unicodedata.normalize("NFC", path.stem)


def _not_a_file(path: Path) -> str:
    """Why an entry with a bag's name is not a readable file."""
    if path.is_symlink():
        try:
            os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return "is a symbolic link loop"
            return f"is a symbolic link to a missing file ({os.readlink(path)!r})"
    return "is a folder, not a bag file" if path.is_dir() else "is not a regular file"


def _unusable(folder: Path, suffixes: tuple[str, ...]) -> dict[str, tuple[Path, str]]:
    return {slide_id_of(p): (p, _not_a_file(p)) for p in sorted(folder.iterdir())
            if not p.name.startswith(".") and p.suffix.lower() in suffixes and not p.is_file()}


def _feature_dirs(folder: Path) -> list[Path]:
    """``features_<enc>`` folders (``slide_features_*`` does not match: it holds slide embeddings)."""
    return [d for d in _subdirs(folder) if d.name.startswith("features_")]


def _count(folder: Path) -> int:
    """Bag files in a features folder (CLAM's ``h5_files``/``pt_files`` inside it counted instead)."""
    inner = [folder / sub for sub in ("h5_files", "pt_files") if (folder / sub).is_dir()]
    return len(_bag_files(inner[0] if inner else folder, H5_SUFFIXES + PT_SUFFIXES))


def _choose_encoder(cdir: Path, patch_encoder: str | None) -> Path:
    dirs = _feature_dirs(cdir)
    names = {d.name[len("features_"):]: d for d in dirs}
    listing = ", ".join(f"{n} ({_count(d)} bags)" for n, d in names.items())
    if patch_encoder is not None:
        if patch_encoder not in names:
            raise BadInputError(f"no features_{patch_encoder}/ folder; patch encoders found: {listing or 'none'}",
                                cdir, "Pass one of these names to --patch-encoder")
        return names[patch_encoder]
    if len(names) > 1:
        raise BadInputError(f"features of several patch encoders found: {listing}", cdir,
                            "Choose one with --patch-encoder NAME")
    return dirs[0]


def _coords_dir_matches(cdir: Path, mag: float | None, patch_size: int | None, overlap: int | None) -> bool:
    if mag is None and patch_size is None and overlap is None:
        return True
    m = COORDS_DIR.match(cdir.name)
    if m is None:
        return False
    return ((mag is None or float(m["mag"]) == float(mag))
            and (patch_size is None or int(m["ps"]) == int(patch_size))
            and (overlap is None or int(m["ov"]) == int(overlap)))


def _choose_coords_dir(root: Path, cdirs: list[Path], patch_encoder: str | None, mag: float | None,
                       patch_size: int | None, overlap: int | None) -> Path:
    chosen = [d for d in cdirs if _coords_dir_matches(d, mag, patch_size, overlap)]
    if patch_encoder is not None:
        chosen = [d for d in chosen if (d / f"features_{patch_encoder}").is_dir()] or chosen
    if not chosen:
        raise BadInputError(f"no coords dir matches mag={mag}, patch_size={patch_size}, overlap={overlap}; "
                            f"found: {', '.join(d.name for d in cdirs)}", root,
                            "Fix --mag/--patch-size/--overlap")
    if len(chosen) > 1:
        raise BadInputError(f"several patching settings found: {', '.join(d.name for d in chosen)}", root,
                            "Choose one with --mag/--patch-size/--overlap, or pass one of these folders")
    return chosen[0]


def _peek_keys(path: Path) -> set[str] | None:
    try:
        with h5py.File(path, "r") as f:
            return set(f.keys())
    except Exception:  # noqa: BLE001 - unreadable files are reported when read, not here
        return None


def _flat(folder: Path, layout: str, default_fmt: str, root: Path) -> BagIndex:
    h5s, pts = _bag_files(folder, H5_SUFFIXES), _bag_files(folder, PT_SUFFIXES)
    paths, fmt, ignored = (h5s, default_fmt, pts) if h5s else (pts, "pt", [])
    if h5s:
        fmt = next((f for f in map(detect_format, h5s[:5]) if f is not None), default_fmt)
        keys = next((k for k in map(_peek_keys, h5s[:1]) if k is not None), set())
        if not keys & {"features", "feats"} and keys & {"coords", "imgs"}:
            what = "CLAM legacy patch-image" if "imgs" in keys else "coords/patches"
            raise BadInputError(f"this folder holds {what} files, not features (e.g. {h5s[0].name})", folder,
                                _FEATURES_FIX)
    if ignored:
        warnings.warn(f"{folder}: {len(ignored)} .pt file(s) ignored; the .h5 bags are used", stacklevel=3)
    files: dict[str, BagFile] = {}
    locked: list[Path] = []
    for path in paths:
        if is_locked(path):
            locked.append(path)
            continue
        slide_id = slide_id_of(path)  # only the final .h5/.pt: "TCGA-...-DX1.<uuid>" stays whole
        files[slide_id] = BagFile(slide_id, path, "pt" if path.suffix.lower() in PT_SUFFIXES else fmt)
    if locked:
        warnings.warn(f"{folder}: skipping {len(locked)} locked bag(s) still being written "
                      f"(a .lock file exists), e.g. {locked[0].name}", stacklevel=3)
    return BagIndex(files, locked, layout, root, folder, ignored, _unusable(folder, H5_SUFFIXES + PT_SUFFIXES))


def _features_folder(folder: Path, layout: str, root: Path) -> BagIndex:
    """A ``features_<enc>`` folder: CLAM (``h5_files``/``pt_files`` inside) or TRIDENT (files directly)."""
    for sub, fmt in (("h5_files", "clam_h5"), ("pt_files", "pt")):
        if (folder / sub).is_dir() and _bag_files(folder / sub, H5_SUFFIXES + PT_SUFFIXES):
            return _flat(folder / sub, "clam", fmt, root)
    return _flat(folder, layout, "trident", root)


def scan_bags(root: str | os.PathLike, patch_encoder: str | None = None, mag: float | None = None,
              patch_size: int | None = None, overlap: int | None = None) -> BagIndex:
    """Like :func:`find_bags` but an index without bags is returned, not an error (for ``validate``)."""
    root = Path(root)
    if not root.exists():
        raise BadInputError(missing_problem(root, "features folder"), root, "Check the --features path")
    if not root.is_dir():
        raise BadInputError("expected a folder of feature bags, got a file", root, _FEATURES_FIX)
    if _feature_dirs(root):  # a coords dir, or a CLAM job dir holding features_<model>/
        layout = "trident_coords_dir" if COORDS_DIR.match(root.name) else "trident_features"
        return _features_folder(_choose_encoder(root, patch_encoder), layout, root)
    cdirs = [d for d in _subdirs(root) if _feature_dirs(d)]
    if cdirs:
        cdir = _choose_coords_dir(root, cdirs, patch_encoder, mag, patch_size, overlap)
        return _features_folder(_choose_encoder(cdir, patch_encoder), "trident_job", root)
    if any(COORDS_DIR.match(d.name) for d in _subdirs(root)):
        raise BadInputError("this TRIDENT job dir has coords but no features_<encoder>/ folder yet", root,
                            "Run TRIDENT's feature step (--task feat --patch_encoder NAME) first")
    if root.name.startswith("slide_features_"):
        raise BadInputError("this folder holds slide-level embeddings (one vector per slide), not patch features",
                            root, "Pass the sibling features_<encoder>/ folder")
    if root.name == "patches":
        raise BadInputError("this is a patches/ folder: it holds coords, not features", root, _FEATURES_FIX)
    if root.name.startswith("features_") or root.name in ("h5_files", "pt_files"):
        return _features_folder(root, "clam" if root.name.endswith("_files") else "trident_features", root)
    for sub, fmt in (("h5_files", "clam_h5"), ("pt_files", "pt")):
        if (root / sub).is_dir():
            return _flat(root / sub, "clam", fmt, root)
    # CLAM's --data_root_dir is often the parent of one task feature dir (<root>/<task>_features/h5_files)
    clam_dirs = sorted(d for d in root.iterdir() if d.is_dir() and ((d / "h5_files").is_dir()
                                                                    or (d / "pt_files").is_dir()))
    if len(clam_dirs) == 1 and not any(root.glob("*.h5")) and not any(root.glob("*.pt")):
        return scan_bags(clam_dirs[0], patch_encoder, mag, patch_size, overlap)
    if len(clam_dirs) > 1:
        raise BadInputError(f"several CLAM feature folders: {', '.join(d.name for d in clam_dirs)}", root,
                            "pass the one to use as --features / --data_root_dir")
    return _flat(root, "flat", "h5", root)


def find_bags(root: str | os.PathLike, patch_encoder: str | None = None, mag: float | None = None,
              patch_size: int | None = None, overlap: int | None = None) -> BagIndex:
    """The feature bags under ``root`` (see the module docstring for the layouts).

    Bags with a ``.lock`` sibling are skipped with a warning and listed in ``locked``. Several encoders or
    patching settings without a choice, a coords-only folder, or no bags at all raise :class:`BadInputError`.
    """
    index = scan_bags(root, patch_encoder, mag, patch_size, overlap)
    if not index.files:
        folder = index.folder or index.root
        if index.locked:
            raise BadInputError(f"all {len(index.locked)} bag(s) are locked (still being written)", folder,
                                "Wait for feature extraction to finish, or delete stale .lock files")
        raise BadInputError("no .h5 or .pt feature bags found", folder, _FEATURES_FIX)
    return index


#: folders below a job dir that never hold patch-feature bags
_NOT_FEATURES = ("patches", "masks", "stitches", "contours", "contours_geojson", "thumbnails", "wsi_states", "runs",
                 "visualization")


def _is_feature_folder(folder: Path) -> bool:
    """A ``features_<enc>/`` folder or a CLAM feature dir (``h5_files/`` or ``pt_files/`` inside)."""
    return folder.name.startswith("features_") or any((folder / sub).is_dir() for sub in ("h5_files", "pt_files"))


def find_feature_folders(root: str | os.PathLike, max_depth: int = 4) -> list[Path]:
    """Every patch-feature folder at or below ``root``: each TRIDENT ``features_<enc>/`` of each coords dir
    and each CLAM feature dir, in path order. ``slide_features_*``, ``patches/`` and other outputs that
    hold no patch features are not entered. Empty when ``root`` is itself a plain folder of bags."""
    root = Path(root)
    found: list[Path] = []

    def walk(folder: Path, depth: int) -> None:
        if _is_feature_folder(folder):
            found.append(folder)
            return
        if depth >= max_depth:
            return
        for sub in _subdirs(folder):
            if not sub.name.startswith("slide_features_") and sub.name not in _NOT_FEATURES:
                walk(sub, depth + 1)

    if root.is_dir():
        walk(root, 0)
    return found


def feature_folder_settings(folder: Path) -> dict[str, object]:
    """``patch_encoder`` and, under a TRIDENT coords dir, ``mag``/``patch_size``/``overlap`` of a folder."""
    encoder = folder.name[len("features_"):] if folder.name.startswith("features_") else None
    m = COORDS_DIR.match(folder.parent.name)
    settings: dict[str, object] = {"patch_encoder": encoder}
    if m is not None:
        settings.update(mag=float(m["mag"]), patch_size=int(m["ps"]), overlap=int(m["ov"]))
    return settings
