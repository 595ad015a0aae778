"""The fused LSTM/GRU cell equals torch.lstm_cell / torch.gru_cell: values and gradients."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seq2seq_core.kernels.cells import gru_cell, lstm_cell, recurrent_cell
from seq2seq_core.kernels.packed_weights import PackedWeights

GATES = {"lstm": 4, "gru": 3}


def _inputs(cell: str, batch: int, inputs: int, hidden: int, dtype, seed: int):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, dtype=dtype, generator=g).requires_grad_()

    gates = GATES[cell] * hidden
    weights = (rand(gates, inputs), rand(gates, hidden), rand(gates), rand(gates))
    return rand(batch, inputs), rand(batch, hidden), rand(batch, hidden), weights


@settings(max_examples=40, deadline=None)
@given(
    cell=st.sampled_from(list(GATES)),
    batch=st.integers(1, 5),
    inputs=st.integers(1, 6),
    hidden=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_cell_equations_and_gradients_equal_torch(cell, batch, inputs, hidden, seed) -> None:
    x, h, c, (w_ih, w_hh, b_ih, b_hh) = _inputs(cell, batch, inputs, hidden, torch.float64, seed)
    leaves = [x, h, w_ih, w_hh, b_ih, b_hh]
    gi, gh = x @ w_ih.t() + b_ih, h @ w_hh.t() + b_hh
    if cell == "lstm":
        ours = lstm_cell(gi + gh, c)
        ref = torch.lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh)
        leaves.append(c)
    else:
        ours = (gru_cell(gi, gh, h),)
        ref = (torch.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh),)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    weight = [torch.randn_like(t) for t in ours]  # the same random weighting for both
    grads = torch.autograd.grad(sum((t * w).sum() for t, w in zip(ours, weight, strict=True)),
                                leaves)  # fmt: skip
    ref_grads = torch.autograd.grad(sum((t * w).sum() for t, w in zip(ref, weight, strict=True)),
                                    leaves)  # fmt: skip
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(
    cell=st.sampled_from(list(GATES)),
    batch=st.integers(1, 6),
    hidden=st.integers(1, 24),
    seed=st.integers(0, 2**16),
)
def test_step_over_packed_weights_equals_torch(cell, batch, hidden, seed) -> None:
    """The decoding path: gate products from packed float32 parameters, then the fused
    equations, against torch's cell on the raw weights."""
    x, h, c, weights = _inputs(cell, batch, 7, hidden, torch.float32, seed)
    weights = tuple(torch.nn.Parameter(w.detach()) for w in weights)
    c = c if cell == "lstm" else None
    with torch.inference_mode():
        ours = recurrent_cell(x, h, c, weights, PackedWeights())
        ref = recurrent_cell(x, h, c, weights, None)  # torch.lstm_cell / torch.gru_cell
    for a, b in zip(ours, ref, strict=True):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
