"""``F.linear`` for int8 decoding: int8 weights, activations quantized per call.

Computes: ``F.linear(x, weight, bias)`` approximately. The weight is quantized once per
decoding call, symmetric per output channel (scale = max |w| / 127 of its row); at each
call ``x`` is quantized to uint8 with one scale and zero point from its own range (dynamic
quantization), the product runs in int8 with int32 accumulation, and the result is
dequantized to fp32 with the bias added. Torch reference: ``F.linear`` (the error is the
two roundings, tested in ``tests/unit/kernels/test_int8_linear.py``).

Why: a decoding step is a few rows times each weight, bound by reading the weights and by
per-call overhead; int8 weights are a quarter of fp32's bytes and VNNI/AMX multiply int8
natively. The kernels are torch's own (``torch.ops.quantized.linear_dynamic``): fbgemm's
("x86") is fastest for a few rows, oneDNN's (AMX where the CPU has it) for many. Both
packings are made and the row count picks one per call.

Packing is slow (torch reads each channel's scale on the host: many decoding steps' worth), so
``int8_weights`` keeps the packed weights of a parameter across decoding calls, as long as
the parameter lives, together with a copy of the values they were made from: a call whose
parameter no longer equals the copy repacks (the version counter cannot tell: fused AdamW
and ``p.data`` writes leave it alone). The comparison reads the weight once per call
(tens of ms for the default model's decoder): a ``Translator`` over a loaded model, whose
weights never change, keeps its packings across calls and skips it.

Used: by ``PackedWeights`` when ``kernels.select`` is asked for int8 (``decode.precision:
int8``) on a CPU with both engines; inference only.
"""

from __future__ import annotations

import warnings
import weakref

import torch
from torch import Tensor

SMALL_ENGINE, LARGE_ENGINE = "x86", "onednn"
# At and above this many rows oneDNN's kernel is faster than fbgemm's (where the two
# cross on a Xeon with AMX; docs/benchmarks.md).
LARGE_ROWS = 16


def can_use_int8(device: torch.device) -> bool:
    """Both quantized engines exist here (CPU builds of torch)."""
    engines = torch.backends.quantized.supported_engines
    return device.type == "cpu" and SMALL_ENGINE in engines and LARGE_ENGINE in engines


def _prepack(qweight: Tensor, bias: Tensor | None, engine: str) -> object:
    """The engine's packed params; which engine packs is global state, set for the call."""
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        return torch.ops.quantized.linear_prepack(qweight, bias)
    finally:
        torch.backends.quantized.engine = before


class Int8Linear:
    """One weight, quantized and packed for both engines."""

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        w = weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12)  # (out,)
        zero = torch.zeros(w.size(0), dtype=torch.long)
        with warnings.catch_warnings():  # quantized tensors are deprecated as a public API
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch.quantize_per_channel(w, scale.double(), zero, 0, torch.qint8)
        b = None if bias is None else bias.detach().float()
        self.small = _prepack(qweight, b, SMALL_ENGINE)
        self.large = _prepack(qweight, b, LARGE_ENGINE)

    def __call__(self, x: Tensor) -> Tensor:
        """x (..., in) fp32 -> (..., out) fp32."""
        rows = x if x.dim() == 2 else x.reshape(-1, x.size(-1))
        rows = rows.float().contiguous()  # no-ops (no copy, no dispatch) when already so
        if rows.size(0) >= LARGE_ROWS:
            out = _LINEAR_DYNAMIC(rows, self.large, False)
        else:  # fbgemm's kernel keeps activations to 7 bits against int16 overflow
            out = _LINEAR_DYNAMIC(rows, self.small, True)
        return out if x.dim() == 2 else out.view(*x.shape[:-1], out.size(-1))


# The op's one overload, called directly: the overload packet's per-call argument checks
# cost a few microseconds, at every one of a decoding step's five products.
_LINEAR_DYNAMIC = torch.ops.quantized.linear_dynamic.default


# id(parameter) -> (the weight and bias the packing was made from, the packing); an entry
# is dropped when its parameter is freed, so no other tensor can take its id meanwhile.
_CACHE: dict[int, tuple[Tensor, Tensor | None, Int8Linear]] = {}


def int8_weights(weight: Tensor, bias: Tensor | None) -> Int8Linear:
    """The int8 packing of (weight, bias), made once while their values stay the same."""
    entry = _CACHE.get(id(weight))
    if entry is not None:
        w, b, packed = entry
        same_bias = (b is None and bias is None) or (
            b is not None and bias is not None and torch.equal(b, bias)
        )
        if same_bias and w.shape == weight.shape and torch.equal(w, weight):
            return packed
    packed = Int8Linear(weight, bias)
    if entry is None:
        weakref.finalize(weight, _CACHE.pop, id(weight), None)
    copy_b = None if bias is None else bias.detach().clone()
    _CACHE[id(weight)] = (weight.detach().clone(), copy_b, packed)
    return packed
