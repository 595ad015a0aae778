"""One LSTM/GRU time step from gate pre-activations: torch's cell equations, fused by hand.

Computes: for the LSTM, gates (B, 4H) = x W_ih^T + b_ih + h W_hh^T + b_hh in torch's gate
order i, f, g, o, and c (B, H) -> (h', c'); for the GRU, gi = x W_ih^T + b_ih and
gh = h W_hh^T + b_hh (B, 3H) in the order r, z, n, and h (B, H) -> h'.
Torch reference: ``torch.lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh)`` and
``torch.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh)`` (``tests/unit/kernels/test_cells.py``: values
and gradients in float64, and the packed-weight step against torch's in float32).

Why: the decoder runs one step at a time when decoding. Calling ``nn.LSTM``/``nn.GRU`` for a
single step costs a oneDNN weight reorder per call (more than the step at batch 1), and torch's cell
functions multiply by the raw (G, in) weights; here the two gate products come from weights
packed once per decoding call (``PackedWeights``) and only the elementwise work is left.

Used: by the decoder's step when ``kernels.select`` made a ``PackedWeights`` (inference
mode on a CPU with oneDNN). Elsewhere (training, CUDA) ``recurrent_cell`` is torch's cell
functions, which autograd knows.

Precomputed input gates (``input_gates``, (B, G)): with input feeding the decoder computes
the embeddings' share of the first layer's gates (plus b_ih) for all T steps in one matmul,
so only the fed-back attentional vector is multiplied per step. That (B, G) term never goes
to torch's cells as ``b_ih``: their CUDA kernels (``_thnn_fused_lstm_cell`` and
``_thnn_fused_gru_cell``, which ``torch.lstm_cell``/``gru_cell`` call on CUDA, see
aten/src/ATen/native/RNN.cpp ``LSTMCell``) require 1-D biases of b_hh's size
(aten/src/ATen/native/cuda/RNN.cu ``checkSizes``). On CPU the gates are summed here exactly
as ATen's CPU cell does it (``linear_hh(hx).add_(linear_ih(input))``); on CUDA
(``fused=True``) both products go to torch's fused kernel with the biases folded in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from seq2seq_core.kernels.packed_weights import PackedWeights
from seq2seq_core.kernels.step_linears import StepLinears

# w_ih (G, in), w_hh (G, H), b_ih (G,), b_hh (G,): G = 4H (LSTM) or 3H (GRU)
CellWeights = tuple[Tensor, Tensor, Tensor, Tensor]


def lstm_cell(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """gates (B, 4H) pre-activations i, f, g, o; c (B, H) -> h' (B, H), c' (B, H)."""
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def gru_cell(gi: Tensor, gh: Tensor, h: Tensor) -> Tensor:
    """gi, gh (B, 3H) input and hidden products (r, z, n); h (B, H) -> h' (B, H)."""
    i_r, i_z, i_n = gi.chunk(3, dim=1)
    h_r, h_z, h_n = gh.chunk(3, dim=1)
    r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)  # b_hn sits inside r * (W_hn h + b_hn), as in torch
    return n + z * (h - n)


def recurrent_cell(
    x: Tensor,
    h: Tensor,
    c: Tensor | None,
    weights: CellWeights,
    packed: PackedWeights | None,
    input_gates: Tensor | None = None,
    fused: bool = False,
    dtype: torch.dtype | None = None,
    step_linears: StepLinears | None = None,
) -> tuple[Tensor, Tensor | None]:
    """One LSTM (with c) or GRU (c None) step: x (B, in), h (B, H) -> h', c' (None for GRU).

    ``input_gates`` (B, G): a precomputed share of the input gates that replaces b_ih (which
    it includes). ``fused``: torch's fused CUDA cell kernels for that case. ``dtype``: run the
    step outside autocast with every tensor cast to it (CUDA bf16, see ``kernels.select``).
    ``step_linears``: the two gate products of the ``input_gates`` case through it (training
    on CPU: one W gradient per loop, ``kernels.step_linears``).
    """
    if dtype is not None:
        cast = [None if t is None else t.to(dtype) for t in (x, h, c, input_gates, *weights)]
        with torch.autocast(x.device.type, enabled=False):
            w = (cast[4], cast[5], cast[6], cast[7])
            return recurrent_cell(cast[0], cast[1], cast[2], w, packed, cast[3], fused)  # type: ignore[arg-type]
    w_ih, w_hh, b_ih, b_hh = weights
    if packed is None:
        if input_gates is not None:
            return _cell_from_input_gates(x, h, c, weights, input_gates, fused, step_linears)
        if c is not None:
            return torch.lstm_cell(x, (h, c), *weights)
        return torch.gru_cell(x, h, *weights), None
    gi = packed.linear(x, w_ih, b_ih if input_gates is None else input_gates)  # (B, G)
    gh = packed.linear(h, w_hh, b_hh)  # (B, G)
    if c is not None:
        return lstm_cell(gi + gh, c)
    return gru_cell(gi, gh, h), None


def _cell_from_input_gates(
    x: Tensor,
    h: Tensor,
    c: Tensor | None,
    weights: CellWeights,
    input_gates: Tensor,
    fused: bool,
    step_linears: StepLinears | None = None,
) -> tuple[Tensor, Tensor | None]:
    """The step with gi = input_gates + x W_ih^T (input_gates (B, G) holds b_ih)."""
    w_ih, w_hh, _, b_hh = weights
    linear = F.linear if step_linears is None else step_linears.linear  # the same values
    gi = linear(x, w_ih, input_gates)  # addmm(input_gates, x, w_ih^T), as ATen's linear_ih
    gh = linear(h, w_hh, b_hh)  # (B, G)
    if fused:  # biases folded into the gates: the kernel gets none (a 1-D pair or nothing)
        if c is not None:
            hy, cy, _ = fused_lstm_cell(gi, gh, c)
            return hy, cy
        return fused_gru_cell(gi, gh, h)[0], None
    if c is not None:
        return lstm_cell(gh + gi, c)
    return _gru_cell_as_aten(gi, gh, h), None


def _gru_cell_as_aten(gi: Tensor, gh: Tensor, h: Tensor) -> Tensor:
    """``gru_cell``'s equations in ATen's CPU order and in place (RNN.cpp ``GRUCell``), so
    that the result is bitwise torch.gru_cell's; gh is overwritten."""
    i_r, i_z, i_n = gi.unsafe_chunk(3, 1)
    h_r, h_z, h_n = gh.unsafe_chunk(3, 1)
    r = h_r.add_(i_r).sigmoid_()
    z = h_z.add_(i_z).sigmoid_()
    n = i_n.add(h_n.mul_(r)).tanh_()
    return (h - n).mul_(z).add_(n)


def fused_lstm_cell(gi: Tensor, gh: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """torch's fused LSTM cell kernel (CUDA only), no biases: h', c', workspace."""
    return torch.ops.aten._thnn_fused_lstm_cell(gi, gh, c)


def fused_gru_cell(gi: Tensor, gh: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """torch's fused GRU cell kernel (CUDA only), no biases: h', workspace."""
    return torch.ops.aten._thnn_fused_gru_cell(gi, gh, h)
