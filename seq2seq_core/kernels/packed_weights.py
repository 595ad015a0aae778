"""``F.linear`` for decoding, from weights packed once per decoding call.

Computes: ``F.linear(x, weight, bias)``, the same product, from a copy of ``weight`` laid
out for oneDNN (``torch.ops.mkldnn._reorder_linear_weight``, what torch.compile's CPU
freezing does) and reused for every step of the call.

Why: a decoding step is a handful of rows times each weight matrix, and at those shapes the
weight's layout decides the speed. ``F.linear`` repacks the whole (out, in) weight on every
call, which for an output layer costs several times the product itself at a beam step's
few rows.

Used: only through a ``PackedWeights`` that ``kernels.select`` makes, which it does under
``torch.inference_mode`` on a CPU with oneDNN, once per forward pass or decoding call. The
object holds the packed copies and is dropped with the call, so a copy never outlives the
parameters it was made from (a ``Translator`` over a model loaded for inference keeps it
across calls: those weights never change): not every change to a parameter shows in its
version counter (fused Adam/AdamW and ``p.data`` writes leave it as it was), and nothing has
to be cleared.
Falls back to ``F.linear`` for anything but parameters (a per-batch weight slice or a
per-step bias is not worth packing). Under autocast the copy is made once in the autocast
dtype instead of autocast casting the whole weight again at every step. With ``int8`` every
2-D parameter is quantized instead (``int8_linear``: int8 decoding). No gradients:
inference mode only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seq2seq_core.kernels.int8_linear import Int8Linear, int8_weights

PACK_ROWS = 64  # the batch size oneDNN tunes the packed layout for; any row count works


def can_pack_weights(device: torch.device) -> bool:
    """oneDNN's linear weight packing exists on this device (CPU builds with mkldnn)."""
    return (
        device.type == "cpu"
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


def pack_weight(weight: Tensor) -> Tensor:
    """A (out, in) weight in oneDNN's blocked layout, for ``packed_linear``."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_ROWS)


def packed_linear(x: Tensor, packed: Tensor, bias: Tensor | None) -> Tensor:
    """x (..., in) times a ``pack_weight`` result, plus bias: (..., out)."""
    rows = x.reshape(-1, x.size(-1)).contiguous()
    out = torch.ops.mkldnn._linear_pointwise(rows, packed, bias, "none", [], "")
    return out.view(*x.shape[:-1], out.size(-1))


class PackedWeights:
    """The packed copies of one decoding call, made on first use of each parameter."""

    def __init__(self, int8: bool = False) -> None:
        # id(weight) -> (weight, dtype, packed weight, bias in that dtype). The entry holds
        # the weight itself, so no other tensor can take its id while this object lives.
        self._packed: dict[int, tuple[Tensor, torch.dtype, Tensor, Tensor | None]] = {}
        self.int8 = int8
        # id(weight) -> (weight, its int8 packing, the bias packed with it)
        self._int8: dict[int, tuple[Tensor, Int8Linear, Tensor | None]] = {}

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """``F.linear(x, weight, bias)``: x (..., in) -> (..., out)."""
        if self.int8:
            entry8 = self._int8.get(id(weight))  # first: the step's hot path
            if entry8 is not None and entry8[2] is bias:
                return entry8[1](x)
        if not self.is_packable(weight, bias):
            return F.linear(x, weight, bias)
        if self.int8:
            return self.int8_packing(weight, bias)(x)
        packed, packed_bias = self.packing(weight, bias)
        return packed_linear(x.to(packed.dtype), packed, packed_bias)

    def is_packable(self, weight: Tensor, bias: Tensor | None) -> bool:
        """Only parameters are packed; ``linear`` runs ``F.linear`` on anything else."""
        return isinstance(weight, nn.Parameter) and (bias is None or isinstance(bias, nn.Parameter))

    def int8_packing(self, weight: Tensor, bias: Tensor | None) -> Int8Linear:
        """The int8 packing of a parameter (and its bias), made on first use."""
        entry8 = self._int8.get(id(weight))
        if entry8 is None or entry8[2] is not bias:
            entry8 = self._int8[id(weight)] = (weight, int8_weights(weight, bias), bias)
        return entry8[1]

    def packing(self, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The oneDNN packing of a parameter in this call's dtype (the autocast one under
        autocast) and its bias in that dtype, made on first use."""
        dtype = weight.dtype
        if torch.is_autocast_enabled("cpu"):
            dtype = torch.get_autocast_dtype("cpu")
        entry = self._packed.get(id(weight))
        if entry is None or entry[1] != dtype:
            packed_bias = None if bias is None else bias.detach().to(dtype)
            entry = (weight, dtype, pack_weight(weight.to(dtype)), packed_bias)
            self._packed[id(weight)] = entry
        return entry[2], entry[3]

    def __len__(self) -> int:
        return len(self._packed) + len(self._int8)
