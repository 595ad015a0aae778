"""The one switch between fp32 and bf16 autocast, shared by training and decoding."""

from __future__ import annotations

import torch

PRECISIONS = ("fp32", "bf16")


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """bf16 autocast for ``precision == "bf16"`` (weights, optimizer state and softmax
    stay fp32). Worth it where the hardware multiplies bf16 natively (CUDA, AVX512_BF16 or
    AMX on CPU); elsewhere autocast emulates it and is slower than fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
