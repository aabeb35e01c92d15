"""glibc's heap keeps a CPU training step's freed temporaries for the next step instead of unmapping them [D].

A training step allocates and frees tens of activation tensors of 1-16 MB. glibc serves blocks that large with
``mmap`` or trims them off the heap when freed, so the next step's tensors start as fresh pages and every page
faults on first touch: measured at the benchmark tier (fp32, 1 thread, ``benchmarks/README.md``), ~12,000 minor
faults per 10-step fit, and the elementwise ops after each GEMM (dropout, ReLU and their gradients) ran several
times slower than on warm memory. :func:`keep_freed_memory` sets, once per process, glibc's mmap threshold to
32 MB (blocks up to that size come from the heap) and its trim threshold to 512 MB (freed heap memory up to that
much is kept): the same process then reuses warm pages. The cost is that up to ~512 MB of freed memory stays with
the process instead of going back to the system while it runs.

It is process-wide (glibc has no per-thread setting), applied on Linux with glibc only, at the start of the first
CPU fit, logged once; ``MSRL_PLUGIN_KEEP_FREED_MEMORY=0`` in the environment turns it off (glibc's own dynamic
thresholds then stay in force).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import sys

import torch

logger = logging.getLogger("msrl_plugin.heap")

#: glibc's mallopt parameter numbers (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's upper limit for this parameter on 64-bit
TRIM_THRESHOLD = 512 * 2**20
ENV = "MSRL_PLUGIN_KEEP_FREED_MEMORY"


def keep_freed_memory(device: torch.device) -> bool:
    """For a fit on ``device``: on the CPU, apply the thresholds above once per process; True when they are in
    force (this call or an earlier one)."""
    return device.type == "cpu" and _apply()


@functools.cache
def _apply() -> bool:
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        logger.info("glibc heap thresholds left as they are (%s=0)", ENV)
        return False
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if ok:
        logger.info("glibc heap: blocks up to %d MB from the heap, up to %d MB of freed memory kept for reuse "
                    "(fewer page faults per training step; %s=0 turns this off)",
                    MMAP_THRESHOLD >> 20, TRIM_THRESHOLD >> 20, ENV)
    return ok


def _glibc_mallopt():
    """glibc's ``mallopt`` or None (another C library, or not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if not hasattr(libc, "gnu_get_libc_version"):  # musl and others: not glibc's thresholds
            return None
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt
