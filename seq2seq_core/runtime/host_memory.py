"""Keep freed host memory in the process for the next step instead of returning it.

A training step frees and re-allocates the same multi-megabyte activations every step.
glibc serves blocks above its mmap threshold with fresh mappings and trims the top of its
heap back to the OS, so every step page-faults (and zero-fills) its activations anew, a
cost paid on every step for nothing (docs/benchmarks.md has the measured share). Raising both
thresholds keeps the blocks in the heap for reuse, as jemalloc and tcmalloc (which
PyTorch's CPU performance guide recommends preloading) do by design. The price is a
resident size that stays at its peak for the life of the process: right for a training
or decoding process, which returns to that peak every step.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the heap
_TRIM_THRESHOLD = 2**31 - 1  # (a C int) never trim the heap top back to the OS


def retain_freed_host_memory() -> bool:
    """Ask glibc to reuse freed blocks; True if it took effect, False off glibc (macOS,
    Windows, musl), where the platform's allocator is left as it is."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # no libc to load, or one without mallopt (musl)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )
