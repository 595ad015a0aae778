"""torchrun / DistributedDataParallel support: one process per device, same code path.

`torchrun --nproc-per-node N -m flows.cli train` sets WORLD_SIZE, RANK and LOCAL_RANK;
without them (or with WORLD_SIZE=1) everything here is a no-op and training runs in one
process. NCCL on CUDA, gloo on CPU (which the tests use).

No peer's bytes are unpickled: ranks exchange tensors, and structured values travel as
JSON in a uint8 tensor (its length first, bounded by ``MAX_MESSAGE_BYTES``), decoded with
``json.loads`` and checked by the receiver. torch's ``*_object`` collectives would run
``pickle.loads`` on whatever another rank sent, so a peer that joined could run code on
every rank; ``tests/unit/runtime/test_collectives_scan.py`` keeps them out.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

# One message's bound: validation metrics are ~250 bytes, a CPU RNG state ~5 KB. A length
# above it (or below 0) is refused on every rank before any buffer is allocated.
MAX_MESSAGE_BYTES = 1 << 20
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


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


def topology() -> Topology:
    """The process group this process has joined; ``Topology()`` (rank 0 of 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return Topology(dist.get_rank(), dist.get_world_size())
    return Topology()


class MessageError(ValueError):
    """A rank sent a message that is too long, not UTF-8 JSON, or not of the expected shape."""


def _wire_device() -> torch.device:
    """Where a collective's tensors must live: NCCL moves CUDA tensors only, gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _check_lengths(lengths: list[int], max_bytes: int) -> None:
    """Every rank sees every length, so every rank refuses alike (none waits forever)."""
    for rank, n in enumerate(lengths):
        if not 0 <= n <= max_bytes:
            raise MessageError(f"rank {rank} sent a message of {n} bytes (limit {max_bytes})")


def _as_tensor(data: bytes, size: int, device: torch.device) -> torch.Tensor:
    """``data`` zero-padded to ``size`` bytes, as a uint8 tensor on ``device``."""
    box = torch.zeros(size, dtype=torch.uint8)
    if data:
        box[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return box.to(device)


def all_gather_bytes(
    data: bytes, topo: Topology, max_bytes: int = MAX_MESSAGE_BYTES
) -> list[bytes]:
    """Every rank's ``data``, in rank order, on every rank: the lengths first (int64), then
    the bytes padded to the longest. Raises ``MessageError`` on every rank when any length is
    out of bounds. A collective: call on all ranks."""
    if not topo.distributed:
        _check_lengths([len(data)], max_bytes)
        return [bytes(data)]
    device = _wire_device()
    length = torch.tensor([len(data)], dtype=torch.int64, device=device)
    lengths_t = [torch.zeros_like(length) for _ in range(topo.world)]
    dist.all_gather(lengths_t, length)
    lengths = [int(n.item()) for n in lengths_t]
    _check_lengths(lengths, max_bytes)
    width = max(lengths)
    if width == 0:
        return [b""] * topo.world
    boxes = [torch.empty(width, dtype=torch.uint8, device=device) for _ in range(topo.world)]
    dist.all_gather(boxes, _as_tensor(data, width, device))
    return [box[:n].cpu().numpy().tobytes() for box, n in zip(boxes, lengths, strict=True)]


def broadcast_bytes(
    data: bytes | None, topo: Topology, max_bytes: int = MAX_MESSAGE_BYTES
) -> bytes:
    """Rank 0's ``data`` on every rank (others pass anything, e.g. None): its length first,
    then the bytes. Raises ``MessageError`` on every rank when the length is out of bounds."""
    if not topo.distributed:
        data = data or b""
        _check_lengths([len(data)], max_bytes)
        return bytes(data)
    device = _wire_device()
    mine = (data or b"") if topo.is_main else b""
    length = torch.tensor([len(mine)], dtype=torch.int64, device=device)
    dist.broadcast(length, src=0)
    n = int(length.item())
    _check_lengths([n], max_bytes)
    if n == 0:
        return b""
    box = _as_tensor(mine, n, device)
    dist.broadcast(box, src=0)
    return box.cpu().numpy().tobytes()


def encode_json(value: Any) -> bytes:
    """``value`` as UTF-8 JSON (NaN and inf kept: a diverged loss must still travel)."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode("utf-8")


def decode_json(data: bytes) -> Any:
    """The JSON value in ``data``; ``MessageError`` for anything else (bad UTF-8, bad JSON,
    nesting deep enough to exhaust the parser). Never executes anything."""
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise MessageError(f"not a JSON message ({type(exc).__name__})") from None


def broadcast_json(value: Any, topo: Topology, max_bytes: int = MAX_MESSAGE_BYTES) -> Any:
    """Rank 0's ``value`` (anything ``json.dumps`` takes) on every rank, rank 0 included,
    as decoded JSON: every rank holds the same value. Single process: ``value`` itself."""
    if not topo.distributed:
        return value
    payload = encode_json(value) if topo.is_main else None
    return decode_json(broadcast_bytes(payload, topo, max_bytes))


def all_gather_json(value: Any, topo: Topology, max_bytes: int = MAX_MESSAGE_BYTES) -> list[Any]:
    """Every rank's ``value`` as decoded JSON, in rank order, on every rank."""
    if not topo.distributed:
        return [value]
    return [decode_json(b) for b in all_gather_bytes(encode_json(value), topo, max_bytes)]


def all_gather_uint8(
    tensors: Mapping[str, torch.Tensor], topo: Topology
) -> list[dict[str, torch.Tensor]]:
    """Every rank's named uint8 tensors (e.g. RNG states), in rank order, on every rank, as
    CPU tensors. Every rank names the same keys (the same device type); a rank whose tensor
    differs in length from this rank's is refused on every rank (an RNG state has one size)."""
    if not topo.distributed:
        return [dict(tensors)]
    out: list[dict[str, torch.Tensor]] = [{} for _ in range(topo.world)]
    for key in sorted(tensors):
        mine = tensors[key].detach().cpu().contiguous().reshape(-1)
        if mine.dtype != torch.uint8:
            raise TypeError(f"{key}: all_gather_uint8 takes uint8 tensors, not {mine.dtype}")
        for rank, data in enumerate(all_gather_bytes(mine.numpy().tobytes(), topo)):
            if len(data) != mine.numel():
                raise MessageError(
                    f"rank {rank} sent {key!r} of {len(data)} bytes, expected {mine.numel()}"
                )
            out[rank][key] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return out


def float_dict(value: Any) -> dict[str, float]:
    """``value`` if it is a JSON object of numbers (e.g. validation metrics), with floats."""
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
        for k, v in value.items()
    ):
        raise MessageError(f"expected an object of numbers, got {type(value).__name__}")
    return {k: float(v) for k, v in value.items()}


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
    digests = all_gather_json(weights_digest(model), topo)
    if not all(isinstance(d, str) and _SHA256_HEX.fullmatch(d) for d in digests):
        raise MessageError("a rank sent something other than a sha256 hex digest")
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
