"""Linear layers for decoding: the same products, with weights prepared once per decode.

A decoding step is almost nothing but a handful of rows times each weight matrix, and at
those shapes the layout of the weight decides the speed. On CPU, ``F.linear`` repacks the
whole (out, in) weight for oneDNN on every call: an 8000 x 512 output layer takes 2.1 ms
for 5 rows (one beam-5 step) against 0.26 ms from a weight packed once with
``torch.ops.mkldnn._reorder_linear_weight`` (what torch.compile's CPU freezing does), and
6.0 ms against 2.9 ms for 64 rows. ``inference_linear`` keeps such packed copies, made on
first use, and uses them only under ``torch.inference_mode``: training never sees them.
Where oneDNN is missing (or on CUDA), and for anything but parameters, it is ``F.linear``.

A copy lives for one decoding call: every entry point (greedy, beam, validation loss)
starts with ``clear_inference_weights``, since not every change to a parameter shows in
its version counter (fused Adam/AdamW kernels and ``p.data`` writes leave it as it was).
Packing again costs ~5 ms per call for a 13M-parameter model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# id(weight) -> ((data_ptr, version, dtype), packed weight, bias in the compute dtype)
WeightCache = dict[int, tuple[tuple, Tensor, Tensor | None]]

PACK_ROWS = 64  # the batch size oneDNN tunes the packed layout for; any row count works


def clear_inference_weights(model: nn.Module) -> None:
    """Forget every packed copy held by ``model``'s modules: the parameters may have changed."""
    for module in model.modules():
        cache = getattr(module, "_weights", None)
        if isinstance(cache, dict):
            cache.clear()


def can_pack_weights(x: Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


def inference_linear(x: Tensor, weight: Tensor, bias: Tensor | None, cache: WeightCache) -> Tensor:
    """``F.linear(x, weight, bias)``; in inference mode on CPU from a packed weight.

    Under autocast the packed copy is made once in the autocast dtype, instead of autocast
    casting the whole weight again at every step.
    """
    if not (
        torch.is_inference_mode_enabled()
        and can_pack_weights(x)
        # Only long-lived parameters are cached: a temporary (a slice made per batch, a
        # per-step bias) could share a freed tensor's address and hit a stale entry.
        and isinstance(weight, nn.Parameter)
        and (bias is None or isinstance(bias, nn.Parameter))
    ):
        return F.linear(x, weight, bias)
    dtype = weight.dtype
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
    # Inference tensors (a model loaded under inference mode) keep no version counter.
    version = -1 if weight.is_inference() else weight._version
    key = (weight.data_ptr(), version, dtype, None if bias is None else bias.data_ptr())
    cached = cache.get(id(weight))
    if cached is None or cached[0] != key:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(dtype), PACK_ROWS)
        cached = (key, packed, None if bias is None else bias.detach().to(dtype))
        cache[id(weight)] = cached
    _, packed, packed_bias = cached
    rows = x.reshape(-1, x.size(-1)).to(dtype).contiguous()
    out = torch.ops.mkldnn._linear_pointwise(rows, packed, packed_bias, "none", [], "")
    return out.view(*x.shape[:-1], out.size(-1))
