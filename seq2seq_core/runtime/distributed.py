"""torchrun / DistributedDataParallel support: one process per device, same code path.

`torchrun --nproc-per-node N -m flows.cli train` sets WORLD_SIZE, RANK and LOCAL_RANK;
without them (or with WORLD_SIZE=1) everything here is a no-op and training runs in one
process. NCCL on CUDA, gloo on CPU (which the tests use).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Topology:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def init_distributed(device: torch.device) -> tuple[Topology, torch.device]:
    """Join the process group torchrun describes (once per process); pick this rank's GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Topology(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Topology(dist.get_rank(), dist.get_world_size()), device


def rank_seed(seed: int, rank: int) -> int:
    """Rank ``rank``'s seed for its own draws (dropout masks, teacher-forcing coins): the
    run's seed on rank 0, as in one process, and another on every other rank."""
    return seed + rank


def shutdown() -> None:
    """Leave the process group, if this process joined one (the end of a torchrun job)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group() -> Iterator[None]:
    """The process group ``init_distributed`` joins inside is destroyed when the block
    ends, normally or by an exception."""
    try:
        yield
    finally:
        shutdown()


def accumulating(trainer: torch.nn.Module) -> contextlib.AbstractContextManager:
    """Around the backward of every micro-batch but the last of an accumulation group:
    DDP keeps the gradients local (``no_sync``) and all-reduces once, at the last."""
    no_sync = getattr(trainer, "no_sync", None)
    return no_sync() if no_sync is not None else contextlib.nullcontext()


def shard(batches: list[T], topo: Topology) -> list[T]:
    """Rank r takes batches r, r + W, r + 2W, ... of the shared shuffled order, cut to the
    same count on every rank (all-reduce needs every rank to step together)."""
    if not topo.distributed:
        return batches
    per_rank = len(batches) // topo.world
    return batches[topo.rank :: topo.world][:per_rank]


def max_over_ranks(value: float, topo: Topology, device: torch.device) -> float:
    """The largest ``value`` of any rank, on every rank (e.g. the time spent: one clock for
    the budget check and the budget LR schedules, so that replicas use the same LR)."""
    if not topo.distributed:
        return value
    box = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return float(box.item())


def broadcast(value: T, topo: Topology) -> T:
    """Rank 0's `value` on every rank (validation results, the stop decision)."""
    if not topo.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def topology() -> Topology:
    """The process group this process has joined; ``Topology()`` (rank 0 of 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return Topology(dist.get_rank(), dist.get_world_size())
    return Topology()


def gather(value: T, topo: Topology) -> list[T]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not topo.distributed:
        return [value]
    out: list[T] = [value] * topo.world
    dist.all_gather_object(out, value)
    return out


class ReplicasDivergedError(RuntimeError):
    """The ranks of one DDP job hold different weights; the message lists each digest."""


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer, by name: equal digests mean equal weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(name.encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def replica_digests(model: torch.nn.Module, topo: Topology) -> list[str]:
    """Each rank's ``weights_digest``, in rank order; raises when they differ (a rank
    stepped without the others, or all-reduce was bypassed). A collective: call on all."""
    digests = gather(weights_digest(model), topo)
    if len(set(digests)) > 1:
        listed = ", ".join(f"rank {r}: {d[:12]}" for r, d in enumerate(digests))
        raise ReplicasDivergedError(f"replicas hold different weights after training: {listed}")
    return digests


def wrap(model: torch.nn.Module, topo: Topology, device: torch.device) -> torch.nn.Module:
    if not topo.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)
