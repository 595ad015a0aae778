"""One LSTM/GRU time step from gate pre-activations: torch's cell equations, fused by hand.

Computes: for the LSTM, gates (B, 4H) = x W_ih^T + b_ih + h W_hh^T + b_hh in torch's gate
order i, f, g, o, and c (B, H) -> (h', c'); for the GRU, gi = x W_ih^T + b_ih and
gh = h W_hh^T + b_hh (B, 3H) in the order r, z, n, and h (B, H) -> h'.
Torch reference: ``torch.lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh)`` and
``torch.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh)`` (``tests/kernels/test_cells.py``: values
and gradients in float64, and the packed-weight step against torch's in float32).

Why: the decoder runs one step at a time when decoding. Calling ``nn.LSTM``/``nn.GRU`` for a
single step costs a oneDNN weight reorder per call (~2 ms at batch 1), and torch's cell
functions multiply by the raw (G, in) weights; here the two gate products come from weights
packed once per decoding call (``PackedWeights``) and only the elementwise work is left.

Used: by the decoder's step when ``kernels.select`` made a ``PackedWeights`` (inference
mode on a CPU with oneDNN). Elsewhere (training, CUDA) ``recurrent_cell`` is torch's cell
functions, which autograd knows.
"""

from __future__ import annotations

import torch
from torch import Tensor

from seq2seq_core.kernels.packed_weights import PackedWeights

# w_ih (G, in), w_hh (G, H), b_ih (G,) or (B, G), b_hh (G,): G = 4H (LSTM) or 3H (GRU)
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
    x: Tensor, h: Tensor, c: Tensor | None, weights: CellWeights, packed: PackedWeights | None
) -> tuple[Tensor, Tensor | None]:
    """One LSTM (with c) or GRU (c None) step: x (B, in), h (B, H) -> h', c' (None for GRU)."""
    if packed is None:
        if c is not None:
            return torch.lstm_cell(x, (h, c), *weights)
        return torch.gru_cell(x, h, *weights), None
    w_ih, w_hh, b_ih, b_hh = weights
    gi = packed.linear(x, w_ih, b_ih)  # (B, G)
    gh = packed.linear(h, w_hh, b_hh)  # (B, G)
    if c is not None:
        return lstm_cell(gi + gh, c)
    return gru_cell(gi, gh, h), None
