"""Counts the calls that make the host wait for the device.

On a GPU each of these blocks the Python thread until the queued kernels finish, so a
training step or beam step that makes one per sentence crawls. On a CPU they are free,
which is why a counter is the only way to keep them out from a CPU-only CI.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

SYNCING_METHODS = frozenset(
    {
        "item",
        "tolist",
        "__bool__",
        "__int__",
        "__float__",
        "__index__",
        "cpu",
        "nonzero",
        "numpy",
        "masked_select",
    }
)


def _is_boolean_mask_index(func: Any, args: tuple) -> bool:
    """x[mask] needs the mask's count on the host before it can size the result."""
    if getattr(func, "__name__", "") not in ("__getitem__", "__setitem__") or len(args) < 2:
        return False
    index = args[1] if isinstance(args[1], tuple) else (args[1],)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index)


class HostSyncCounter(TorchFunctionMode):
    """Counts host syncs by name while active; `total` is what budgets are checked against."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name in SYNCING_METHODS:
            self.counts[name] += 1
        elif _is_boolean_mask_index(func, args):
            self.counts["boolean_mask_index"] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())
