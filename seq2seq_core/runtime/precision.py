"""The one switch between fp32 and bf16 autocast, shared by training and decoding, and the
TF32 switch for fp32 matmuls on CUDA.

bf16 on CUDA: autocast runs the matmuls in bf16; the RNNs run outside autocast with explicit
bf16 casts (``kernels.select``'s ``rnn_dtype``), because torch's autocast wrapper for cuDNN
RNNs casts them to fp16 whatever the autocast dtype. bf16 has fp32's exponent range, so no
GradScaler is needed; fp16 (which would need one) is not offered.

Decoding also takes ``int8``: no autocast, the decoder's weights quantized instead
(``kernels.int8_linear``, chosen by ``Seq2Seq.select_kernels(int8=True)``).
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
DECODE_PRECISIONS = (*PRECISIONS, "int8")


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """bf16 autocast for ``precision == "bf16"`` (weights, optimizer state and softmax
    stay fp32). Worth it where the hardware multiplies bf16 natively (CUDA, AVX512_BF16 or
    AMX on CPU); elsewhere autocast emulates it and is slower than fp32."""
    if precision not in DECODE_PRECISIONS:
        raise ValueError(f"precision: {precision!r} is not one of {', '.join(DECODE_PRECISIONS)}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def set_tf32(device: torch.device, enabled: bool) -> None:
    """TF32 tensor cores for fp32 matmuls and cuDNN on CUDA (Ampere and newer): ~8x the fp32
    matmul rate, a 10-bit mantissa for the products (``train.tf32``). Logged; a no-op on
    CPU."""
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    ampere = torch.cuda.get_device_capability(device) >= (8, 0)
    note = "" if ampere or not enabled else " (no effect before Ampere)"
    log.info("TF32 for fp32 matmuls and cuDNN: %s (train.tf32)%s", "on" if enabled else "off", note)
