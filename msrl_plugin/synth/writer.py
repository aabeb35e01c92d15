"""Put a :class:`SynthCohort` on disk exactly as TRIDENT and CLAM would have (``shared/formats.md`` §1.2-1.4, §2.4).

Layout under ``out_dir``::

    20x_256px_0px_overlap/patches/<slide>_patches.h5          coords, TRIDENT attributes
    20x_256px_0px_overlap/features_<encoder>/<slide>.h5        features float32 (N, D), then coords
    clinical.csv      case_id, slide_id, survival_months, censorship (1 = censored) | label, site
    genomics.csv      case_id + feature columns (missing-genomics cases have no row)
    splits/splits_<k>.csv   CLAM's ragged ``,train,val,test`` of case_ids; the held-out fold is both
                            ``val`` and ``test`` (no separate validation set: tune inside ``train``)
    truth.csv         case_id, eta, eta_wsi (teacher outcome only)
    cohort_config.json      the knobs, the seed and the oracle scores

Every file is written atomically.
"""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from ..atomic import atomic_path, write_csv, write_json
from .parts import PATCH_LEVEL0, SynthCohort

COORDS_DIR = "20x_256px_0px_overlap"


def _create(h5: h5py.File, key: str, array: np.ndarray, attrs: dict) -> None:
    """One root dataset the way ``trident.IO.save_h5`` makes it: chunks (1, ...), maxshape (None, ...)."""
    dset = h5.create_dataset(key, data=array, chunks=(1,) + array.shape[1:], maxshape=(None,) + array.shape[1:])
    for name, value in attrs.items():
        dset.attrs[name] = value


def _coords_attrs(slide: str, savetodir: str, width: int, height: int) -> dict:
    # types as the batch CLI writes them: patch_size_level0 and target_magnification are floats
    return {
        "patch_size": np.int64(256), "patch_size_level0": np.float64(float(PATCH_LEVEL0)),
        "level0_magnification": np.int64(40), "target_magnification": np.float64(20.0),
        "overlap": np.int64(0), "name": slide, "savetodir": savetodir,
        "level0_width": np.int64(width), "level0_height": np.int64(height),
    }


def write_cohort(synth: SynthCohort, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``synth`` under ``out_dir``; return the paths written (keys below)."""
    out = Path(out_dir).resolve()
    cdir = out / COORDS_DIR
    patches_dir = cdir / "patches"
    features_dir = cdir / f"features_{synth.config.encoder_name}"
    for slide, (features, coords) in synth.bags.items():
        width, height = synth.slide_dims.get(slide, (int(coords[:, 0].max()) + 2 * PATCH_LEVEL0,
                                                     int(coords[:, 1].max()) + 2 * PATCH_LEVEL0))
        cattrs = _coords_attrs(slide, str(cdir), width, height)
        with atomic_path(patches_dir / f"{slide}_patches.h5", suffix=".h5") as tmp, h5py.File(tmp, "w") as h5:
            _create(h5, "coords", coords, cattrs)
        with atomic_path(features_dir / f"{slide}.h5", suffix=".h5") as tmp, h5py.File(tmp, "w") as h5:
            _create(h5, "features", features.astype(np.float32, copy=False),
                    {"name": slide, "savetodir": str(features_dir), "encoder": synth.config.encoder_name})
            _create(h5, "coords", coords, cattrs)

    paths = {"job_dir": out, "coords_dir": cdir, "patches_dir": patches_dir, "features_dir": features_dir,
             "clinical": out / "clinical.csv", "genomics": out / "genomics.csv",
             "splits_dir": out / "splits", "config": out / "cohort_config.json"}
    write_csv(paths["clinical"], synth.cases)
    write_csv(paths["genomics"], synth.genomics, index=True)
    for k, (train, test) in enumerate(synth.folds):
        split = pd.concat([pd.Series(train, name="train", dtype=object),
                           pd.Series(test, name="val", dtype=object),
                           pd.Series(test, name="test", dtype=object)], axis=1)
        write_csv(paths["splits_dir"] / f"splits_{k}.csv", split, index=True)
    truth = synth.truth
    if truth.eta is not None:
        paths["truth"] = out / "truth.csv"
        write_csv(paths["truth"], pd.DataFrame({"eta": truth.eta, "eta_wsi": truth.eta_wsi}), index=True)
    write_json(paths["config"], {
        "generator": "msrl_plugin.synth", "seed": synth.seed, "config": synth.config.to_dict(),
        "n_cases": len(synth.cases), "n_folds": len(synth.folds),
        "splits": "case_ids; the held-out fold is written as both val and test",
        "oracle_cindex": truth.oracle_cindex, "wsi_oracle_cindex": truth.wsi_oracle_cindex,
    })
    return paths
