"""Toolkit commands: ``encode-slides`` (TRIDENT slide features from a trained model) and ``heatmap``.

Imported by :mod:`msrl_plugin.cli` so the commands join the ``msrl-plugin`` group.
"""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import BadInputError
from .common import echo
from .config import with_config
from .options import with_threads

DEVICE = click.Choice(["auto", "cpu", "cuda"])
WSI_SUFFIXES = (".svs", ".tif", ".tiff", ".ome.tif", ".ome.tiff", ".ndpi", ".png", ".jpg", ".jpeg")


def _device(device: str) -> str:
    from ..aggregators.base import resolve_device

    return str(resolve_device(device))


@click.command("encode-slides")
@click.option("--job-dir", "--job_dir", "--features", "--data_root_dir", "--data-root-dir", "job_dir", required=True,
              type=click.Path(path_type=Path),
              help="TRIDENT job dir (or one <mag>x_<ps>px_<ov>px_overlap/ folder of it).")
@click.option("--patch-encoder", "--patch_encoder", "patch_encoder",
              help="Patch encoder whose features_<enc>/ to read (needed when there are several).")
@click.option("--model-path", "--ckpt_path", "model_path", required=True, type=click.Path(path_type=Path),
              help="A trained ABMIL/MSRL checkpoint (s_<k>_checkpoint.pt from train).")
@click.option("--name", default=None,
              help="Slide encoder name: writes slide_features_<name>/ (default <model>-<patch encoder>, "
                   "like TRIDENT's mean-uni_v1).")
@click.option("--mag", type=float, help="TRIDENT magnification (picks <mag>x_... in a job dir).")
@click.option("--patch-size", "--patch_size", "patch_size", type=int, help="TRIDENT patch size.")
@click.option("--overlap", type=int, help="TRIDENT overlap.")
@click.option("--skip-errors", "--skip_errors", "skip_errors", is_flag=True,
              help="Log unreadable patch-feature files and go on (TRIDENT's --skip_errors).")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@with_config
@with_threads
def encode_slides(job_dir, patch_encoder, model_path, name, mag, patch_size, overlap, skip_errors, device):
    """Write TRIDENT slide features (slide_features_<name>/<slide>.h5) from a trained model.

    Files match TRIDENT's own slide-feature files; TRIDENT's .lock protocol lets several runs share a job
    and a re-run skips the slides already done.
    """
    from ..adapters.trident_slides import encode_slides as run
    from ..adapters.trident_slides import find_patch_features
    from ..aggregators.base import Aggregator
    from ..slide_encoder import SlideEncoder

    dev = _device(device)
    features = find_patch_features(job_dir, patch_encoder, mag, patch_size, overlap)
    model = Aggregator.load(model_path, device="cpu")
    name = name or f"{model.name}-{features.patch_encoder}"
    encoder = SlideEncoder.from_aggregator(model, name)
    echo(f"{len(features.files)} slides in {features.coords_dir / ('features_' + features.patch_encoder)}; "
         f"{encoder.embedding_dim}-d {model.name} embeddings")
    config = {"job_dir": str(job_dir), "coords_dir": features.coords_dir.name, "patch_encoder":
              features.patch_encoder, "slide_encoder": name, "model_path": str(model_path), "device": dev}
    report = run(features, encoder, device=dev, skip_errors=skip_errors, config=config)
    for slide, error in report.errors.items():
        click.echo(f"error: {slide}: {error}", err=True)
    click.echo(report.summary())


def _find_wsi(wsi: Path | None, slide: str) -> Path | None:
    """``--wsi`` as a slide file, or a folder holding ``<slide>.<ext>``."""
    if wsi is None or not wsi.is_dir():
        return wsi
    for suffix in WSI_SUFFIXES:
        candidate = wsi / f"{slide}{suffix}"
        if candidate.is_file():
            return candidate
    return None


@click.command()
@click.option("--model-path", "--ckpt_path", "model_path", required=True, type=click.Path(path_type=Path),
              help="A trained attention model (abmil, msrl, ...) checkpoint.")
@click.option("--features", "--data_root_dir", "--data-root-dir", "features", required=True,
              type=click.Path(path_type=Path),
              help="TRIDENT job dir or features_<enc>/, CLAM feature dir, or a folder of bags.")
@click.option("--slide", "slides", required=True, multiple=True, help="Slide id (file stem); repeatable.")
@click.option("--wsi", type=click.Path(path_type=Path),
              help="The slide file (.svs/.tif via tifffile, or a .png/.jpg thumbnail), or a folder of "
                   "slides.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("heatmaps"), show_default=True)
@click.option("--patch-encoder", "--patch_encoder", "patch_encoder")
@click.option("--mag", type=float)
@click.option("--patch-size", "--patch_size", "patch_size", type=int)
@click.option("--overlap", type=int)
@click.option("--patch-size-level0", "patch_size_level0", type=int,
              help="Box side in level-0 px when the bags lack the patch_size_level0 attribute.")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@with_config
@with_threads
def heatmap(model_path, features, slides, wsi, out, patch_encoder, mag, patch_size, overlap,
            patch_size_level0, device):
    """Export per-patch attention (h5 + CSV) and draw a PNG heatmap per slide."""
    from ..adapters.bags import read_bag, read_bag_attrs
    from ..adapters.layouts import find_bags
    from ..aggregators.base import Aggregator
    from ..heatmap import export_attention, render_heatmap, slide_attention

    model = Aggregator.load(model_path, device=_device(device))
    index = find_bags(features, patch_encoder, mag, patch_size, overlap)
    for slide in slides:
        bag_file = index.files.get(slide)
        if bag_file is None:
            raise BadInputError(f"no bag for slide {slide!r} (found {len(index.files)} bags)",
                                index.folder or index.root,
                                "Pass --slide as a bag file name without extension")
        bag = read_bag(bag_file.path, bag_file.fmt)
        if bag.coords is None:
            raise BadInputError("this bag has no coords, so no heatmap can be placed", bag_file.path,
                                "Use h5 bags from TRIDENT or CLAM (they store coords)")
        att = slide_attention(model, bag.features, bag.coords, slide, patch_size_level0,
                              read_bag_attrs(bag_file.path))
        files = export_attention(att, out)
        slide_file = _find_wsi(wsi, slide)
        if wsi is not None and slide_file is None:
            echo(f"{slide}: no slide file named {slide}.<ext> in {wsi}; drawing the patch grid only")
        result = render_heatmap(att, out / f"{slide}_heatmap.png", slide_file)
        where = "over the slide" if result.overlay else "patch grid only"
        if result.note:
            click.echo(f"warning: {result.note}", err=True)
        click.echo(f"{slide}: {files['h5']}, {files['csv']}, {result.png} ({where})")
