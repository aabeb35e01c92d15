"""Load ``.pt`` feature bags without ever running pickled code.

Every load uses ``torch.load(..., weights_only=True)``. TRIDENT's ``saveas='pt'`` writes a pickled *numpy
array*, which that refuses; those are retried with only numpy's array-reconstruction globals allow-listed.
There is deliberately no fallback to ``weights_only=False``.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import BadInputError

_UNSAFE_FIX = ("Convert it to a plain tensor or numpy array on a machine that trusts the file "
               "(torch.save(torch.as_tensor(x), path)), or use the .h5 features instead")


def _empty_bytes(*args: Any) -> bytes:
    """Stands in for ``bytes`` when unpickling: protocol 2 writes an empty array's raw data as ``bytes()``.

    Only the no-argument call is allowed (``bytes(n)`` would allocate ``n`` bytes on a file's say-so).
    """
    if args:
        raise pickle.UnpicklingError("GLOBAL builtins.bytes called with arguments")
    return b""


def _numpy_array_globals() -> list[Any]:
    """The globals a pickled ndarray needs: ``_reconstruct`` (numpy 1 and 2 names), ndarray, dtype and dtype
    classes, and ``bytes()`` for the raw data of an empty array (TRIDENT's ``saveas='pt'`` of a 0-patch slide)."""
    core = getattr(np, "_core", None) or np.core
    reconstruct = core.multiarray._reconstruct
    # Plain numeric/bool dtypes only: object, string and void arrays could carry arbitrary pickled objects.
    dtype_classes = {type(np.dtype(code)) for code in "?bhilqBHILQefdgFDG"}
    return [
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        (reconstruct, "numpy._core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        (_empty_bytes, "__builtin__.bytes"),
        (_empty_bytes, "builtins.bytes"),
        *sorted(dtype_classes, key=lambda c: c.__name__),
    ]


def _refused_global(exc: Exception) -> str | None:
    """The global name a weights-only unpickler refused, if that is why it failed."""
    match = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return match.group(1) if match else None


def _torch_load(path: Path, allow_numpy: bool) -> Any:
    if allow_numpy:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    return torch.load(path, map_location="cpu", weights_only=True)


def _load_object(path: Path) -> Any:
    try:
        return _torch_load(path, allow_numpy=False)
    except pickle.UnpicklingError as exc:
        if _refused_global(exc) is None:
            raise BadInputError(f"not a readable torch .pt file ({_short(exc)})", path,
                                "Re-export the features; .pt bags must hold a (N, D) tensor or array") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt files
        raise BadInputError(f"not a readable torch .pt file ({type(exc).__name__}: {_short(exc)})", path,
                            "Re-export the features; .pt bags must hold a (N, D) tensor or array") from None
    try:
        return _torch_load(path, allow_numpy=True)
    except Exception as exc:  # noqa: BLE001
        name = _refused_global(exc)
        what = f" ({name})" if name else f" ({type(exc).__name__}: {_short(exc)})"
        raise BadInputError(f"refusing to unpickle arbitrary objects{what}: the file holds more than "
                            "a tensor or a numeric numpy array", path, _UNSAFE_FIX) from None


def _short(exc: Exception, limit: int = 160) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _to_numpy(value: Any, path: Path, what: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.layout != torch.strided:
            raise BadInputError(f"{what} tensor is sparse ({value.layout})", path,
                                "Save a dense tensor instead: torch.save(x.to_dense(), path)")
        if value.dtype in (torch.bfloat16, torch.float16):
            value = value.float()
        try:
            return value.numpy()
        except (TypeError, RuntimeError) as exc:
            raise BadInputError(f"{what} tensor has unsupported dtype {value.dtype} ({exc})", path) from None
    if isinstance(value, np.ndarray):
        return value
    raise BadInputError(f"{what} is a {type(value).__name__}, expected a tensor or numpy array", path,
                        "Save the bag as torch.save(features_tensor_of_shape_N_by_D, path)")


def load_pt_payload(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Features and (if the file is a dict holding them) coords of a ``.pt`` bag, unvalidated.

    Accepts a tensor/array ``(N, D)`` or ``(1, N, D)``, or a dict with ``features`` or ``feats`` (and optionally
    ``coords``).
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError("bag file not found", path, "Check the path and the slide ids")
    obj = _load_object(path)
    coords = None
    if isinstance(obj, dict):
        key = next((k for k in ("features", "feats") if k in obj), None)
        if key is None:
            keys = sorted(map(str, obj))[:10]
            raise BadInputError(f"dict without a 'features' or 'feats' entry (keys: {keys})", path,
                                "Save the features tensor itself, or a dict with key 'features'")
        if obj.get("coords") is not None:
            coords = _to_numpy(obj["coords"], path, "coords")
        obj = obj[key]
    return _to_numpy(obj, path, "features"), coords
