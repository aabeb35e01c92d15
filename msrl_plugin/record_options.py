"""Flags of the provenance and training-log features, shared by the commands that write results:
``--hash-contents``, ``--allow-changed-inputs`` (:mod:`msrl_plugin.provenance`) and ``--log-data``
(CLAM's ``--log_data``; :mod:`msrl_plugin.training_log`)."""
from __future__ import annotations

import click

from .errors import MSRLPluginError
from .provenance import ALLOW_FLAG


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
    from .distributed import is_distributed
    from .training_log import summary_writer_class

    if devices > 1 or is_distributed():
        raise MSRLPluginError("--log-data is not available with several training processes (--devices, torchrun)",
                              fix="train with one device to log the curves, or drop --log-data")
    summary_writer_class()
