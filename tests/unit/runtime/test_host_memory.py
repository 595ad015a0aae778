"""Freed activations are reused without faulting their pages in again.

Each measurement runs in a fresh interpreter: after other tests have started threads,
glibc may have moved this process's main thread to a secondary arena, whose 64 MB heaps
come and go with their blocks, and a training process does not look like that.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from seq2seq_core.runtime.host_memory import retain_freed_host_memory

BLOCK_FLOATS = 10 << 20  # 40 MB: above the 32 MB ceiling of glibc's own adaptive threshold
PAGES_PER_BLOCK = BLOCK_FLOATS * 4 // 4096
BLOCKS = 10

MEASURE = f"""
import resource, sys, torch
from seq2seq_core.runtime.host_memory import retain_freed_host_memory
if sys.argv[1] == "retain":
    assert retain_freed_host_memory()
def blocks(count):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(count):
        torch.empty({BLOCK_FLOATS}).fill_(1.0)  # allocate, touch every page, free
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
blocks({BLOCKS})  # warm-up: the heap grows until freed blocks fit the next request
print(blocks({BLOCKS}))
"""


def _minor_faults(mode: str) -> int:
    run = subprocess.run(
        [sys.executable, "-c", MEASURE, mode], capture_output=True, text=True, check=True
    )
    return int(run.stdout.strip())


def test_freed_blocks_are_reused_without_page_faults() -> None:
    if not retain_freed_host_memory():
        pytest.skip("the C library is not glibc: its allocator is left alone")
    # Handed back to the OS, each block faults all its 10,240 pages in again.
    assert _minor_faults("default") >= BLOCKS * PAGES_PER_BLOCK * 0.9
    assert _minor_faults("retain") < PAGES_PER_BLOCK
