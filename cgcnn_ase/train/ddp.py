"""Data-parallel training with PyTorch DistributedDataParallel, launched by ``torchrun``.

:func:`cgcnn_ase.train.trainer.train_from_config` calls these helpers; it runs data-parallel
when the launcher sets ``WORLD_SIZE`` > 1 and otherwise exactly as before::

    torchrun --nproc_per_node=4 --no-python cgcnn-ase train configs/formation_energy.yaml

What a run with W processes does:

* one process group over all processes: ``gloo`` on CPU, ``nccl`` on CUDA (each process
  uses GPU ``LOCAL_RANK``);
* rank 0 builds the graph cache first while the others wait, then they read it;
* every process draws the same shuffled order from the shared seed, so the global
  batches are those of a single-process run with the same ``batch_size``; each global
  batch is split rank-strided (rank r takes crystals r, r+W, ...), each process's loss
  is weighted by its share of the batch, and DDP's gradient average then equals the
  gradient of the mean loss over the whole global batch. Batch-norm statistics are
  per process (plain DDP, no SyncBatchNorm), so a W-process run equals a single process
  that runs each global batch as W such sub-batches and sums their gradients. A last
  batch of fewer than 2W crystals joins the previous one (so that every process gets at
  least two crystals);
* per-step loss and error sums are all-reduced, so every process logs the same epoch
  metrics; validation is split across processes and gathered; stopping decisions
  (patience, time limit) are rank 0's, broadcast to all;
* batch-norm running statistics are rank 0's (DDP broadcasts them before each forward
  and :func:`sync_buffers` after each epoch), so all processes hold identical models;
* only rank 0 writes ``checkpoint_last.pt``, ``metrics.csv`` and the model folder.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch

from cgcnn_ase.models.registry import resolve_device
from cgcnn_ase.errors import DistributedSetupError

__all__ = [
    "DistributedRun",
    "agree",
    "barrier",
    "check_same",
    "gather_rows",
    "main_first",
    "seed_rank",
    "shard",
    "start",
    "step_totals",
    "sync_buffers",
    "world_size_from_env",
    "wrap",
]

#: Default process-group timeout: long, because ranks > 0 wait while rank 0 builds the graph cache.
DEFAULT_TIMEOUT_S = 6 * 3600.0


@dataclass(frozen=True)
class DistributedRun:
    """This process's place in a data-parallel run.

    Attributes:
        rank: global rank, 0 .. world_size - 1.
        world_size: number of processes.
        local_rank: rank on this node (the GPU index on CUDA).
        device: this process's torch device.
        owns_group: whether :func:`start` created the process group (and :meth:`close` ends it).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files."""
        return self.rank == 0

    def close(self) -> None:
        """Destroy the process group if this run created it."""
        import torch.distributed as dist

        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def world_size_from_env() -> int:
    """``$WORLD_SIZE`` as set by ``torchrun`` (1 when unset)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise DistributedSetupError(f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}") from None


def _device(setting: str, local_rank: int) -> torch.device:
    """One device per process: ``cuda:LOCAL_RANK`` for ``auto`` (with CUDA) and any ``cuda`` setting."""
    device = resolve_device(setting)
    if device.type == "cuda":
        return torch.device("cuda", local_rank)
    return device


def start(device: str = "auto", *, timeout_s: float = DEFAULT_TIMEOUT_S) -> DistributedRun | None:
    """Join the data-parallel run described by the launcher's environment.

    Returns ``None`` (train in one process) when ``WORLD_SIZE`` is unset or 1. Otherwise
    initialises the default process group from ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/
    ``MASTER_PORT`` (``env://``), unless one exists already (then it is used as is).

    Args:
        device: the training config's device setting (``auto``, ``cpu``, ``cuda``, ...).
        timeout_s: process-group timeout, s.
    """
    world = world_size_from_env()
    if world <= 1:
        return None
    import torch.distributed as dist

    if not dist.is_available():
        raise DistributedSetupError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    where = _device(device, local_rank)
    if where.type == "cuda":
        torch.cuda.set_device(where)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if where.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))
    if dist.get_world_size() != world or dist.get_rank() != rank:
        raise DistributedSetupError(
            f"the process group (rank {dist.get_rank()} of {dist.get_world_size()}) does not match "
            f"RANK={rank}, WORLD_SIZE={world}"
        )
    return DistributedRun(rank=rank, world_size=world, local_rank=local_rank, device=where, owns_group=owns)


# -- collective helpers: each accepts ``None`` (single process) and then does nothing -------------


def barrier(run: DistributedRun | None) -> None:
    """Wait for every process."""
    if run is not None:
        import torch.distributed as dist

        dist.barrier()


@contextlib.contextmanager
def main_first(run: DistributedRun | None) -> Iterator[None]:
    """Run the block on rank 0 first, then on the others (e.g. build a cache, then read it).

    Rank 0 releases the others even when its block raises, so that they meet the same
    error themselves instead of waiting for the timeout.
    """
    if run is not None and not run.is_main:
        barrier(run)
    try:
        yield
    finally:
        if run is not None and run.is_main:
            barrier(run)


def check_same(run: DistributedRun | None, **values: int) -> None:
    """Raise on every process unless each named value is the same on all of them (e.g. the
    epoch a resumed run starts from: differing values mean that the work folder, or the graph
    cache, is not on storage that every process sees)."""
    if run is None:
        return
    import torch.distributed as dist

    gathered: list[Any] = [None] * run.world_size
    dist.all_gather_object(gathered, values)
    differing = sorted(k for k in values if len({g[k] for g in gathered}) > 1)
    if differing:
        detail = "; ".join(f"{k}: {[g[k] for g in gathered]}" for k in differing)
        raise DistributedSetupError(
            f"the processes disagree ({detail}, by rank); put work_dir, the output and cache_dir on storage "
            "that every process sees"
        )


def wrap(network: torch.nn.Module, run: DistributedRun | None) -> torch.nn.Module:
    """``network`` in DistributedDataParallel (parameters broadcast from rank 0), or as is."""
    if run is None:
        return network
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [run.device.index] if run.device.type == "cuda" else None
    return DistributedDataParallel(network, device_ids=device_ids)


def seed_rank(run: DistributedRun | None, seed: int, epoch: int) -> None:
    """Give ranks > 0 their own dropout random stream (rank 0 keeps the single-process one)."""
    if run is not None and run.rank > 0:
        torch.manual_seed(seed * 1_000_003 + run.rank * 7919 + epoch)


def shard(chunk: np.ndarray, run: DistributedRun) -> tuple[np.ndarray, float]:
    """This rank's crystals of a global batch (rank-strided) and its loss weight.

    The weight ``W * n_local / n_global`` makes DDP's gradient average equal the gradient
    of the mean loss over the global batch even when the shares differ by one crystal.
    """
    local = chunk[run.rank :: run.world_size]
    return local, run.world_size * len(local) / len(chunk)


def step_totals(run: DistributedRun, loss_value: float, err_sum: float, n: int) -> tuple[float, float, int]:
    """All-reduce one step's statistics: (mean loss over the global batch, error sum, crystals)."""
    import torch.distributed as dist

    totals = torch.tensor([loss_value * n, err_sum, float(n)], dtype=torch.float64, device=_collective_device(run))
    dist.all_reduce(totals)
    loss_sum, err, count = totals.tolist()
    return loss_sum / count, err, round(count)


def agree(flag: bool, run: DistributedRun | None) -> bool:
    """Rank 0's value of ``flag`` on every process (for stop decisions that use the clock)."""
    if run is None:
        return flag
    import torch.distributed as dist

    value = torch.tensor([1 if flag else 0], dtype=torch.int64, device=_collective_device(run))
    dist.broadcast(value, src=0)
    return bool(value.item())


def sync_buffers(network: torch.nn.Module, run: DistributedRun | None) -> None:
    """Copy rank 0's buffers (batch-norm running statistics) to every process."""
    if run is None:
        return
    import torch.distributed as dist

    for buffer in network.buffers():
        dist.broadcast(buffer.data, src=0)


def gather_rows(
    predict: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], indices: np.ndarray, run: DistributedRun
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``predict`` on this rank's strided share of ``indices`` and gather every rank's rows
    back into the order of ``indices`` (for validation: each process predicts 1/W of the set).

    ``predict`` returns two arrays with one row per index (as :func:`cgcnn_ase.train.steps.predict_store`).
    """
    import torch.distributed as dist

    indices = np.asarray(indices)
    mine = predict(indices[run.rank :: run.world_size])
    parts: list[Any] = [None] * run.world_size
    dist.all_gather_object(parts, mine)
    n = len(indices)
    out = []
    for column in range(2):
        pieces = [np.asarray(part[column]) for part in parts]
        shaped = [p for p in pieces if len(p)]
        if not shaped:
            out.append(np.zeros(0))
            continue
        full = np.empty((n, *shaped[0].shape[1:]), dtype=shaped[0].dtype)
        for rank, piece in enumerate(pieces):
            if len(piece):
                full[rank :: run.world_size] = piece
        out.append(full)
    return out[0], out[1]


def _collective_device(run: DistributedRun) -> torch.device:
    """NCCL collectives need CUDA tensors; gloo takes CPU tensors."""
    return run.device if run.device.type == "cuda" else torch.device("cpu")
