"""Per-patch attention of an attention-based aggregator: export (h5/CSV) and a PNG heatmap.

The export carries TRIDENT's heatmap arguments (``scores``, ``coords``, ``patch_size_level0``): coords are
level-0 top-left corners, boxes have side ``patch_size_level0``. Scores are the softmax attention of the
model's attention pool (ABMIL's pool, MSRL's WSI encoder phi_H), which sums to 1 over a slide; the
heatmap is coloured by their percentile rank, as CLAM and TRIDENT normalise heatmaps.
Drawing uses matplotlib's Agg canvas (no display, no global pyplot state).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .atomic import atomic_path, write_csv
from .cohort import Cohort, InMemoryBags
from .errors import BadInputError, MSRLPluginError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_MAX_DECODE_PIXELS = 200_000_000  # never decode a larger level: a gigapixel baseline would not fit in memory
_SLIDES_FIX = "Install the optional extra: pip install 'msrl-plugin[slides]' (tifffile, imagecodecs)"


@dataclass
class SlideAttention:
    """One slide's attention: ``scores`` ``(N,)`` float32 (softmax, sums to 1), ``coords`` ``(N, 2)`` int64
    level-0 top-left corners, boxes of side ``patch_size_level0``; ``attrs`` are the coords attributes."""

    slide_id: str
    scores: np.ndarray
    coords: np.ndarray
    patch_size_level0: int
    model: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def percentiles(self) -> np.ndarray:
        """Rank of each score in ``[0, 1]`` (ties share a rank): the colour scale of the heatmap."""
        if len(self.scores) < 2:
            return np.ones(len(self.scores), np.float32)
        ranks = pd.Series(self.scores).rank(method="average").to_numpy()
        return ((ranks - 1) / (len(ranks) - 1)).astype(np.float32)

    def level0_size(self) -> tuple[int, int]:
        """Slide ``(width, height)`` in level-0 px: from the attributes, else the patch grid's extent."""
        w, h = self.attrs.get("level0_width"), self.attrs.get("level0_height")
        if w is not None and h is not None:
            return int(w), int(h)
        ends = self.coords.max(axis=0) + self.patch_size_level0
        return int(ends[0]), int(ends[1])


def infer_patch_size(coords: np.ndarray) -> int:
    """The grid step of level-0 coords (= ``patch_size_level0`` without overlap); an estimate."""
    steps = [np.diff(np.unique(coords[:, j])) for j in (0, 1)]
    steps = np.concatenate([s[s > 0] for s in steps])
    if not len(steps):
        raise BadInputError("cannot infer the patch size from a single patch position",
                            fix="pass patch_size_level0 (the bag's coords attributes usually hold it)")
    return int(steps.min())


def slide_attention(model: Any, features: np.ndarray, coords: np.ndarray, slide_id: str = "slide",
                    patch_size_level0: int | None = None,
                    attrs: dict[str, Any] | None = None) -> SlideAttention:
    """Attention of a fitted attention-based aggregator over one slide's patches ``(N, D)`` at ``coords``."""
    if not hasattr(model, "attention_scores"):
        name = getattr(model, "name", type(model).__name__)
        raise MSRLPluginError(f"model {name!r} has no patch attention",
                              fix="use an attention-based model (abmil, msrl and its variants)")
    coords = np.asarray(coords)
    if coords.ndim != 2 or coords.shape != (len(features), 2):
        raise BadInputError(f"coords have shape {coords.shape}, expected ({len(features)}, 2)",
                            fix="pass the coords of the same bag")
    attrs = dict(attrs or {})
    if patch_size_level0 is None and attrs.get("patch_size_level0") is not None:
        patch_size_level0 = round(float(attrs["patch_size_level0"]))
    if patch_size_level0 is None:
        patch_size_level0 = infer_patch_size(coords)
        warnings.warn(f"{slide_id}: no patch_size_level0 attribute; using the grid step "
                      f"{patch_size_level0} px", stacklevel=2)
    cases = pd.DataFrame(index=pd.Index([slide_id], name="case_id"))
    cohort = Cohort(cases, {slide_id: [slide_id]}, InMemoryBags({slide_id: features}, {slide_id: coords}),
                    model.task_.name, labelled=False)
    scores, _ = model.attention_scores(cohort)[slide_id]
    return SlideAttention(slide_id, scores.astype(np.float32), np.rint(coords).astype(np.int64),
                          int(patch_size_level0), getattr(model, "name", ""), attrs)


# -- export -------------------------------------------------------------------------------------------
def attention_frame(att: SlideAttention) -> pd.DataFrame:
    """One row per patch: ``x, y, attention, percentile, patch_size_level0``."""
    return pd.DataFrame({"x": att.coords[:, 0], "y": att.coords[:, 1], "attention": att.scores,
                         "percentile": att.percentiles, "patch_size_level0": att.patch_size_level0})


def export_attention(att: SlideAttention, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``<slide>_attention.h5`` and ``<slide>_attention.csv`` into ``out_dir``.

    h5 (root datasets, TRIDENT-style attributes on ``coords``): ``scores`` ``(N,)`` float32 (attrs ``name``,
    ``model``), ``percentiles`` ``(N,)`` float32, ``coords`` ``(N, 2)`` int64 with the bag's coords attributes
    and ``patch_size_level0`` as int64.
    """
    out_dir = Path(out_dir)
    h5_path, csv_path = out_dir / f"{att.slide_id}_attention.h5", out_dir / f"{att.slide_id}_attention.csv"
    coords_attrs = {k: v for k, v in att.attrs.items() if isinstance(v, (str, int, float, bool, np.generic))}
    coords_attrs["patch_size_level0"] = np.int64(att.patch_size_level0)
    with atomic_path(h5_path, suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
        scores = f.create_dataset("scores", data=att.scores.astype(np.float32))
        scores.attrs.update({"name": att.slide_id, "model": att.model,
                             "meaning": "softmax attention over the slide's patches (sums to 1)"})
        f.create_dataset("percentiles", data=att.percentiles)
        f.create_dataset("coords", data=att.coords.astype(np.int64)).attrs.update(coords_attrs)
    write_csv(csv_path, attention_frame(att))
    return {"h5": h5_path, "csv": csv_path}


def read_attention(path: str | os.PathLike) -> SlideAttention:
    """Read back a file written by :func:`export_attention`."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: f["coords"].attrs[k] for k in f["coords"].attrs}
            return SlideAttention(str(f["scores"].attrs.get("name", path.stem)), f["scores"][()],
                                  f["coords"][()], int(attrs["patch_size_level0"]),
                                  str(f["scores"].attrs.get("model", "")), attrs)
    except (OSError, KeyError) as exc:
        raise BadInputError(f"not an attention export ({exc})", path, "pass a <slide>_attention.h5") from None


# -- the slide thumbnail ------------------------------------------------------------------------------
def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] in (3, 4) and image.shape[-1] not in (3, 4):
        image = np.moveaxis(image, 0, -1)  # planar (C, H, W)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"unexpected image shape {image.shape}")
    image = image[..., :3]
    if image.dtype != np.uint8:
        top = float(image.max()) or 1.0
        image = (image.astype(np.float64) / (max(1.0, top)) * 255).astype(np.uint8)
    return image


def _downsample(image: np.ndarray, max_side: int) -> np.ndarray:
    step = int(np.ceil(max(image.shape[:2]) / max_side))
    return image[::step, ::step] if step > 1 else image


def read_thumbnail(path: str | os.PathLike,
                   max_side: int = 2048) -> tuple[np.ndarray, tuple[int, int] | None]:
    """An RGB thumbnail ``(h, w, 3) uint8`` of a slide and its level-0 ``(width, height)``.

    TIFF-family slides (``.svs``, ``.tif``, ``.ndpi``, ...) are read with ``tifffile``: the smallest pyramid
    level (or SVS thumbnail) at least ``max_side`` wide is decoded and downsampled. A ``.png``/``.jpg``
    (e.g. TRIDENT's ``thumbnails/<slide>.jpg``) is taken as the whole slide; its level-0 size is then unknown
    (None). Raises :class:`MSRLPluginError` when the file cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise MSRLPluginError("slide file not found", path, "Check the --wsi path")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        from matplotlib.image import imread

        try:
            return _downsample(_as_rgb(imread(path)), max_side), None
        except Exception as exc:  # noqa: BLE001 - any decoder error means "unreadable"
            raise MSRLPluginError(f"cannot read this image ({type(exc).__name__}: {exc})", path) from None
    try:
        import tifffile
    except ImportError:
        raise MSRLPluginError("reading slides needs tifffile", path, _SLIDES_FIX) from None
    try:
        with tifffile.TiffFile(path) as tif:
            base = tif.series[0]
            axes = base.axes
            h0, w0 = base.shape[axes.index("Y")], base.shape[axes.index("X")]
            candidates = list(base.levels) + [s for s in tif.series[1:] if s.name.lower() == "thumbnail"]
            by_size = sorted(candidates, key=lambda s: int(np.prod(s.shape)))
            big_enough = [s for s in by_size if max(s.shape[s.axes.index("Y")], s.shape[s.axes.index("X")])
                          >= max_side and int(np.prod(s.shape)) <= _MAX_DECODE_PIXELS]
            small = [s for s in by_size if int(np.prod(s.shape)) <= _MAX_DECODE_PIXELS]
            if not big_enough and not small:
                raise ValueError("no pyramid level small enough to decode")
            errors = []
            order = list({id(s): s for s in big_enough[:1] + small[::-1]}.values())
            for series in order:
                try:
                    image = _as_rgb(series.asarray())
                    return _downsample(image, max_side), (int(w0), int(h0))
                except Exception as exc:  # noqa: BLE001 - e.g. a codec missing for one level: try the next
                    errors.append(f"{type(exc).__name__}: {exc}")
            raise ValueError("; ".join(errors[:2]))
    except MSRLPluginError:
        raise
    except Exception as exc:  # noqa: BLE001 - tifffile raises many types for foreign or broken files
        raise MSRLPluginError(f"cannot read a thumbnail from this slide ({str(exc)[:200]})", path,
                              f"Pass a TIFF/SVS slide or a .png/.jpg thumbnail. {_SLIDES_FIX}") from None


# -- rendering ----------------------------------------------------------------------------------------
@dataclass
class HeatmapResult:
    """The written PNG, whether the slide was drawn under the grid, and why not when it was not."""

    png: Path
    overlay: bool
    note: str = ""


def _score_canvas(att: SlideAttention, size: tuple[int, int], max_side: int) -> tuple[np.ndarray, float]:
    """Percentiles painted on a grid ``(h, w)`` covering the slide (overlapping patches averaged)."""
    width, height = size
    scale = max(width, height) / max_side if max(width, height) > max_side else 1.0
    h, w = max(1, int(np.ceil(height / scale))), max(1, int(np.ceil(width / scale)))
    total, count = np.zeros((h, w)), np.zeros((h, w))
    side = max(1, round(att.patch_size_level0 / scale))
    for (x, y), value in zip(att.coords, att.percentiles, strict=True):
        c, r = int(x / scale), int(y / scale)
        total[max(r, 0): r + side, max(c, 0): c + side] += value
        count[max(r, 0): r + side, max(c, 0): c + side] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        grid = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return np.ma.masked_invalid(grid), scale


def draw_attention(ax, att: SlideAttention, size: tuple[int, int] | None = None, thumb: np.ndarray | None = None,
                   cmap: str = "coolwarm", alpha: float = 0.5, max_side: int = 2048,
                   unit: str = "level-0 pixels"):
    """Paint ``att``'s percentiles (diverging ``cmap``, 0..1) on ``ax`` over the slide ``(width, height)``,
    above ``thumb`` when given, with a colour bar as tall as the plot; returns the image."""
    size = size or att.level0_size()
    grid, _ = _score_canvas(att, size, max_side)
    width, height = size
    extent = (0, width, height, 0)
    if thumb is not None:
        ax.imshow(thumb, extent=extent, interpolation="bilinear")
    image = ax.imshow(grid, extent=extent, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest",
                      alpha=alpha if thumb is not None else 1.0)
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_xlabel(f"x ({unit})")
    ax.set_ylabel(f"y ({unit})")
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    bar_ax = make_axes_locatable(ax).append_axes("right", size="4%", pad=0.1)
    ax.figure.colorbar(image, cax=bar_ax).set_label("attention (percentile within slide)")
    return image


def render_heatmap(att: SlideAttention, out_png: str | os.PathLike, wsi: str | os.PathLike | None = None,
                   cmap: str = "coolwarm", alpha: float = 0.5, max_side: int = 2048,
                   dpi: int = 120) -> HeatmapResult:
    """Draw the patch grid coloured by attention percentile (colorbar, level-0 pixel axes) to ``out_png``.

    With ``wsi`` the grid is drawn over the slide's thumbnail; if the slide cannot be read the grid is drawn
    alone, the reason is warned and returned in ``note`` and shown in the title.
    """
    out_png = Path(out_png)
    thumb, note = None, ""
    size = att.level0_size()
    if wsi is not None:
        try:
            thumb, slide_size = read_thumbnail(wsi, max_side)
            size = slide_size or size
        except MSRLPluginError as exc:
            note = f"slide not drawn: {exc}"
            warnings.warn(note, stacklevel=2)
    width, height = size
    fig = Figure(figsize=(8, max(3.0, 8 * height / max(width, 1) * 0.85)), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    draw_attention(ax, att, size, thumb, cmap, alpha, max_side)
    title = f"{att.slide_id}: {att.model or 'model'} attention ({len(att.scores)} patches)"
    ax.set_title(title + ("\n(slide could not be read: patch grid only)" if note else ""), fontsize=10)
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return HeatmapResult(out_png, thumb is not None, note)
