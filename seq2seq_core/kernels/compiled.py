"""torch.compile (inductor, C++ on CPU) for the input-feeding decoder's training step.

Computes: whatever the function it wraps computes; inductor fuses the step's elementwise
work (the cell's gates, the attention's energy, softmax and the attentional vector's tanh)
into a few C++ loops, forward and backward, around the same matmuls.
Torch reference: the same function run eagerly (``tests/unit/model/test_compiled_step.py``:
loss and gradients within float32 rounding, stated there).

Why: with input feeding the decoder cannot be batched over time; each of T steps is some
twenty small ops forward and as many backward, whose dispatch and memory passes cost about
as much as the step's matmuls at Joey's sizes (docs/benchmarks.md, "Training near the
limit"). Compiling costs once per process (tens of seconds on two cores, counted against
the training budget), so it is a choice (``train.compile``), off by default.

Used: by the decoder's teacher-forced loop where ``kernels.select`` sets ``compiled_loop``
(``train.compile`` on, CPU, float32, no autocast, gradients on). Without a C++ compiler
inductor cannot build its kernels: the step then runs eagerly, said once in the log.
"""

from __future__ import annotations

import functools
import logging
import shutil
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)


@functools.cache
def can_compile() -> bool:
    """Whether inductor can build C++ kernels here: a C++ compiler on PATH. Logged once
    when not."""
    if any(shutil.which(name) for name in ("g++", "c++", "clang++")):
        return True
    log.warning("train.compile: no C++ compiler on PATH (g++, c++, clang++): eager steps")
    return False


def compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` compiled once for any batch and source length (dynamic shapes), or ``fn``
    itself where inductor cannot build kernels. Compiles lazily, on the first call."""
    if not can_compile():
        return fn
    return torch.compile(fn, dynamic=True)
