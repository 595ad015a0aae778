"""What the benches measure about the machine itself: the fp32 matmul peak that FLOP/s
fractions are taken against, and whether bf16 runs natively."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch


def matmul_peak_gflops(
    seconds: float = 1.5, size: int = 2048, clock: Callable[[], float] = time.perf_counter
) -> float:
    """fp32 ``torch.mm`` of two size x size matrices, repeated for `seconds` of ``clock``,
    at the current thread count (set it first). ``time.process_time`` with one thread: the
    peak of the CPU time this process got, steady on a machine others share."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    n, start = 0, clock()
    while clock() - start < seconds:
        torch.mm(a, b)
        n += 1
    return 2 * size**3 * n / (clock() - start) / 1e9


def cpu_has_bf16() -> bool:
    """Native bf16 matmuls on this CPU (Linux flags). Elsewhere autocast emulates bf16 and a
    bf16 line would measure the emulation, so benches report it as skipped."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))
