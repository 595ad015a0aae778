"""The model's CPU fast paths, and ``select``: the one place that decides which to take.

Each kernel computes exactly what a torch reference computes (up to float rounding) and is
tested against it, values and gradients, in ``tests/kernels/``:

| module | computes | torch reference |
| --- | --- | --- |
| ``packed_rnn`` | LSTM/GRU over a PackedSequence | ``nn.LSTM`` / ``nn.GRU`` on it |
| ``cells`` | one LSTM/GRU step | ``torch.lstm_cell`` / ``torch.gru_cell`` |
| ``additive_scores`` | v . tanh(q + k) per query and key | ``torch.tanh(q + k) @ v`` |
| ``linear_cross_entropy`` | summed CE of a linear layer | ``F.cross_entropy(F.linear(...))`` |
| ``packed_weights`` | ``F.linear`` from weights packed per call | ``F.linear`` |
| ``int8_linear`` | ``F.linear`` from int8 weights (int8 decoding) | ``F.linear``, approximately |

``additive_scores`` and ``linear_cross_entropy`` run on every device; the other three depend
on the device, dtype, autocast and inference mode of the call, and ``select`` decides them
once per forward pass or decoding call. Nothing here imports the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seq2seq_core.kernels.cells import CellWeights, recurrent_cell
from seq2seq_core.kernels.int8_linear import can_use_int8
from seq2seq_core.kernels.packed_weights import PackedWeights, can_pack_weights


@dataclass(frozen=True)
class Kernels:
    """The fast paths of one forward pass or one decoding call, made by ``select``.

    Holds that call's packed weights, if any: created at the start of the call, passed down
    to every module, dropped at its end, so a packed copy never outlives the call.
    """

    packed_rnn: bool  # the encoder's RNN through kernels.packed_rnn, not torch's module
    weights: PackedWeights | None = None  # linears and cells from packed weights (decoding)

    def linear(self, x: Tensor, layer: nn.Linear) -> Tensor:
        """``layer(x)``: x (..., in) -> (..., out)."""
        if self.weights is None:
            return F.linear(x, layer.weight, layer.bias)
        return self.weights.linear(x, layer.weight, layer.bias)

    def cell(
        self, x: Tensor, h: Tensor, c: Tensor | None, weights: CellWeights
    ) -> tuple[Tensor, Tensor | None]:
        """One LSTM (c given) or GRU step: x (B, in), h (B, H) -> h', c' (None for GRU)."""
        return recurrent_cell(x, h, c, weights, self.weights)


# torch's modules and functions only: what each fast path must equal.
REFERENCE = Kernels(packed_rnn=False)


def select(device: torch.device, dtype: torch.dtype, int8: bool = False) -> Kernels:
    """The fast paths for a model with parameters of this device and dtype, under the
    autocast and inference mode in force now: call it inside the call's contexts.

    packed_rnn: CPU, float32/float64, no autocast (cuDNN is faster on CUDA; under autocast
    torch's module keeps its own dtype handling). Packed weights and the fused cell: under
    inference mode on a CPU with oneDNN, float32 parameters; never where gradients flow.
    ``int8`` (int8 decoding): those packed weights are int8 (``int8_linear``); a ValueError
    where torch has no int8 kernels for the device.
    """
    cpu = device.type == "cpu"
    packed_rnn = cpu and dtype in (torch.float32, torch.float64)
    packed_rnn = packed_rnn and not torch.is_autocast_enabled("cpu")
    decoding = torch.is_inference_mode_enabled() and dtype == torch.float32
    if int8 and not (decoding and can_use_int8(device)):
        raise ValueError(f"int8 decoding needs float32 parameters on a CPU, not {device} {dtype}")
    weights = PackedWeights(int8) if decoding and can_pack_weights(device) else None
    return Kernels(packed_rnn=packed_rnn, weights=weights)
