"""Multi-process data-parallel training with torch.distributed (gloo on CPU, nccl on GPU).

Every rank builds the same mini-batches (same seed, same generator), computes its contiguous share of each
batch and all-reduces the gradients, so the update equals the single-process one up to float summation
order. MSRL's buffer stays identical on every rank: the target features of all shares are gathered in rank
order (MoCo style, no gradient) before the FIFO update. Predictions are gathered and de-duplicated before
any metric is computed; only rank 0 writes files.
"""
from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .errors import MSRLPluginError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def my_share(n: int) -> torch.Tensor:
    """Positions ``0..n-1`` this rank computes: contiguous chunks, so rank order = batch order."""
    return torch.tensor_split(torch.arange(n), world_size())[rank()]


def all_reduce_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum gradients over ranks (each rank's loss is pre-weighted by its share of the batch)."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a ``(n_r, ...)`` tensor from every rank in rank order (n_r may differ)."""
    sizes = [None] * world_size()
    dist.all_gather_object(sizes, (t.shape[0], tuple(t.shape[1:])))
    width = max(s[0] for s in sizes)
    padded = torch.zeros((width, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[: s[0]] for p, s in zip(parts, sizes)])


def all_true(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on every rank (so all ranks take the same branch)."""
    return all(gather_objects(bool(flag)))


def gather_objects(obj: Any) -> list[Any]:
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(local_rank: int, world: int, port: int, backend: str, fn: Callable, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(backend, rank=local_rank, world_size=world)
    try:
        if backend == "nccl":
            torch.cuda.set_device(local_rank % torch.cuda.device_count())
        fn(*args)
    finally:
        dist.destroy_process_group()


def launch(n_procs: int, fn: Callable, *args: Any, device: str = "cpu") -> None:
    """Run ``fn(*args)`` in ``n_procs`` processes on this machine (``fn`` must be importable, not a lambda)."""
    if n_procs < 1:
        raise MSRLPluginError(f"--devices must be >= 1, got {n_procs}")
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl" and torch.cuda.device_count() < n_procs:
        raise MSRLPluginError(f"--devices {n_procs} needs {n_procs} GPUs, found {torch.cuda.device_count()}")
    mp.spawn(_worker, args=(n_procs, _free_port(), backend, fn, args), nprocs=n_procs, join=True)


def init_from_torchrun() -> bool:
    """Join the process group torchrun set up (``RANK``/``WORLD_SIZE`` in the environment); False if none."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) < 2:
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return True
