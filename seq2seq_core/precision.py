"""The one switch between fp32 and bf16 autocast, shared by training and decoding.

Decoding also takes ``int8``: no autocast, the decoder's weights quantized instead
(``kernels.int8_linear``, chosen by ``Seq2Seq.select_kernels(int8=True)``)."""

from __future__ import annotations

import torch

PRECISIONS = ("fp32", "bf16")
DECODE_PRECISIONS = (*PRECISIONS, "int8")


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """bf16 autocast for ``precision == "bf16"`` (weights, optimizer state and softmax
    stay fp32). Worth it where the hardware multiplies bf16 natively (CUDA, AVX512_BF16 or
    AMX on CPU); elsewhere autocast emulates it and is slower than fp32."""
    if precision not in DECODE_PRECISIONS:
        raise ValueError(f"precision: {precision!r} is not one of {', '.join(DECODE_PRECISIONS)}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
