"""The host CPU a training process runs on: how many torch threads to use, and its allocator.

Process-wide choices live here, out of the training loop: ``prepare_host`` sets torch's
intra-op threads (on CPU) and asks glibc to keep freed activations (``host_memory``).
"""

from __future__ import annotations

import logging
import os
import time

import torch

from seq2seq_core.runtime.host_memory import retain_freed_host_memory

log = logging.getLogger(__name__)
# How long ``train.threads: 0`` watches the cores. A workflow run's own services (the
# Prefect API server, MLflow's system-metrics thread) work in bursts as a stage hands over
# to the next, and one burst must not decide a whole run's threads: 2 threads train the
# default model ~1.7x faster than 1 on an idle 2-core machine. The choice is logged, so a
# night that trained slowly says whether it had one thread.
IDLE_SAMPLE_S = 1.0


def prepare_host(device: torch.device, threads: int) -> None:
    """Once per training process: torch threads (CPU only) and glibc's freed-memory reuse."""
    if device.type == "cpu":
        idle = idle_cores(IDLE_SAMPLE_S) if threads <= 0 else None
        torch.set_num_threads(pick_threads(threads, idle))
        why = f"train.threads: {threads}"
        if threads <= 0:
            seen = "unknown" if idle is None else f"{idle:.1f}"
            why += f"; idle cores over {IDLE_SAMPLE_S:g} s: {seen} of {usable_cores()} usable"
        log.info("torch threads: %d (%s)", torch.get_num_threads(), why)
    retain_freed_host_memory()


def pick_threads(requested: int, idle: float | None = None) -> int:
    """Torch intra-op threads: ``requested`` if > 0, else the ``idle`` cores (>= 1; one
    where the idle share is unknown).

    Measured on the 2-core Zen 4 VM (bi-GRU 256, Luong attention, vocab 8k, 3000-token
    batches, synthetic Bible-like lengths), in target tokens/s: idle machine, 1 thread
    ~3,300, 2 threads ~5,400; with one core kept busy by another process, 1 thread ~3,300,
    2 threads ~1,700 (OpenMP threads wait on each other when one shares its core). So
    "one thread per core" is right only for idle cores: ``prepare_host`` samples /proc/stat
    for ``IDLE_SAMPLE_S`` (``idle``: cores' worth of idle CPU) and this uses the cores that
    were idle, rounded to the nearest whole core, at most the cores this process may use.
    """
    if requested > 0:
        return requested
    if idle is None:
        return 1
    return max(1, min(usable_cores(), int(idle + 0.5)))


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def idle_cores(seconds: float) -> float | None:
    """How many cores' worth of CPU time was idle during ``seconds`` (Linux), else None."""
    try:
        idle0, total0 = _cpu_ticks()
        time.sleep(seconds)
        idle1, total1 = _cpu_ticks()
    except (OSError, ValueError, IndexError):
        return None
    ticks = total1 - total0
    return (idle1 - idle0) / ticks * (os.cpu_count() or 1) if ticks > 0 else None


def _cpu_ticks() -> tuple[int, int]:
    """(idle + iowait, all but guest) ticks since boot, from the first line of /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return values[3] + values[4], sum(values[:8])
