"""Flags of the provenance and training-log features, shared by the commands that write results:
``--hash-contents``, ``--allow-changed-inputs`` (:mod:`msrl_plugin.provenance`) and ``--log-data``
(CLAM's ``--log_data``; :mod:`msrl_plugin.training_log`), and each command's provenance record from its flags."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import MSRLPluginError
from ..provenance import ALLOW_FLAG, FILE_NAME


def hash_contents_option(fn):
    return click.option("--hash-contents", "--hash_contents", "hash_contents", is_flag=True,
                        help="Fingerprint the inputs by a SHA-256 of every bag file too (reads every byte once), "
                             "not only by their names, sizes and modification times.")(fn)


def allow_changed_option(fn):
    return click.option(ALLOW_FLAG, "allow_changed_inputs", is_flag=True,
                        help="Write into an output that holds results of other inputs (other bags or tables, "
                             "as its provenance.json records them); refused without this flag.")(fn)


def provenance_options(fn):
    return hash_contents_option(allow_changed_option(fn))


def log_data_option(fn):
    return click.option("--log-data", "--log_data", "log_data", is_flag=True,
                        help="Write per-epoch training scalars (each loss term, learning rate, validation metric; "
                             "MSRL's stage-1 losses and retrieval) for TensorBoard, as CLAM's --log_data does "
                             "(needs the tensorboard extra).")(fn)


def check_log_data(log_data: bool, devices: int = 1) -> None:
    """Before any work: ``--log-data`` needs tensorboard, and one training process."""
    if not log_data:
        return
    from ..distributed import is_distributed
    from ..training_log import summary_writer_class

    if devices > 1 or is_distributed():
        raise MSRLPluginError("--log-data is not available with several training processes (--devices, torchrun)",
                              fix="train with one device to log the curves, or drop --log-data")
    summary_writer_class()


# -- each command's record, from its flags -----------------------------------------------------------
def run_tables(kw: dict[str, Any]) -> dict[str, Any]:
    """The tables a train/compare run reads: clinical, genomics and a --pretrained stage-1 file."""
    tables = {"clinical": kw["clinical"], "genomics": kw["genomics"]}
    if kw.get("pretrained") is not None:
        tables["pretrained"] = kw["pretrained"]
    return tables


def results_record(command: str, kw: dict[str, Any], cohort, sink, models: dict[str, dict[str, Any]]):
    """The run's provenance record for a results folder (its inputs checked against the folder's), attached
    to ``sink`` with the ``--log-data`` choice."""
    from ..aggregators.base import resolve_device
    from ..provenance import start_record
    from ..registry import create_aggregator

    record = start_record(command, sink.provenance_path(), cohort, str(resolve_device(kw["device"])),
                          features=kw["features"], tables=run_tables(kw),
                          hash_contents=kw["hash_contents"], allow_changed=kw["allow_changed_inputs"],
                          holds_results=sink.holds_results(), resume=sink.holds_results(),
                          where="--results-dir or --exp-code",
                          models={m: create_aggregator(m, **p) for m, p in models.items()},
                          settings={"log_data": kw.get("log_data", False)})
    sink.run_record, sink.log_data = record, bool(kw.get("log_data"))
    return record


def prediction_record(kw: dict[str, Any], cohort, model, recorded: Path):
    """predict's provenance: this run, and the checkpoint's own record (how the model was trained)."""
    from ..provenance import checkpoint_provenance, start_record

    record = start_record("predict", recorded, cohort, str(model._device()), features=kw["features"],
                          tables={"clinical": kw["clinical"], "genomics": kw["genomics"]},
                          hash_contents=kw["hash_contents"], allow_changed=kw["allow_changed_inputs"],
                          holds_results=kw["out"].exists(), where="--out")
    record.precision[model.name] = {"used": "fp32", "note": "prediction always runs in float32"}
    record.extra["checkpoint"] = checkpoint_provenance(model, kw["model_path"])
    return record


def compare_record(kw: dict[str, Any], cohort, models: list[str], params: dict[str, dict[str, Any]]):
    """compare's provenance record; refused when --out holds results of other inputs."""
    from ..aggregators.base import resolve_device
    from ..evaluation.variants import variant_of
    from ..provenance import start_record
    from ..registry import create_aggregator

    bases = list(dict.fromkeys((variant_of(m) or (m,))[0] for m in models))
    record = start_record("compare", kw["out"] / FILE_NAME, cohort, str(resolve_device(kw["device"])),
                          features=kw["features"], tables=run_tables(kw),
                          hash_contents=kw["hash_contents"], allow_changed=kw["allow_changed_inputs"],
                          holds_results=(kw["out"] / "per_fold.csv").exists(), where="--out",
                          models={b: create_aggregator(b, **params.get(b, {})) for b in bases},
                          settings={"log_data": kw["log_data"], "allow_pool_overlap": kw["allow_pool_overlap"]})
    return record  # written with the results, at the end (a comparison writes nothing before)


def pretrain_record(kw: dict[str, Any], cohort, model, recorded: Path, entries):
    """pretrain's provenance, beside its checkpoint (stage 1 always trains in float32): every pool cohort's
    tables (and the manifest) fingerprinted."""
    from ..provenance import start_record

    tables = {"pool": kw["pool"]} if kw["pool"] is not None else {}
    for entry in entries:
        prefix = "" if kw["pool"] is None else f"{entry.name}."
        tables.update({f"{prefix}clinical": entry.clinical, f"{prefix}genomics": entry.genomics})
    record = start_record("pretrain", recorded, cohort, str(model._device()), features=kw["features"],
                          tables=tables, hash_contents=kw["hash_contents"], allow_changed=kw["allow_changed_inputs"],
                          holds_results=kw["out"].exists(), where="--out",
                          settings={"log_data": kw["log_data"], "score_holdout": kw["score_holdout"]})
    record.precision[model.name] = {"requested": getattr(model, "precision", None), "used": "fp32",
                                    "note": "stage 1 always trains in float32"}
    return record
