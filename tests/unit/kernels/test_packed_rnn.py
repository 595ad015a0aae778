"""packed_rnn equals nn.LSTM / nn.GRU over the same PackedSequence: outputs, states, gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seq2seq_core.kernels.packed_rnn import packed_rnn

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}

# float64 checks the equations to rounding; float32 runs the time loops' oneDNN products.
TOLERANCES = {
    torch.float64: {"rtol": 1e-10, "atol": 1e-12},
    torch.float32: {"rtol": 1e-4, "atol": 1e-5},
}


def _run(x, lengths, fn):
    """Padded outputs, then h_n (and c_n for an LSTM)."""
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, final = fn(packed)
    padded, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
    return [padded, *final] if isinstance(final, tuple) else [padded, final]


def _outputs_and_gradients(rnn, x, lengths, fn, seed: int):
    rnn.zero_grad()
    x.grad = None
    outputs = _run(x, lengths, fn)
    g = torch.Generator().manual_seed(seed)  # the same random weighting of every output
    loss = sum((t * torch.randn(t.shape, dtype=t.dtype, generator=g)).sum() for t in outputs)
    loss.backward()
    return outputs, [p.grad.clone() for p in rnn.parameters()] + [x.grad.clone()]


def _compare(cell, layers, bidirectional, lengths, sizes, dtype, seed) -> None:
    torch.manual_seed(seed)
    inputs, hidden = sizes
    rnn = CELLS[cell](inputs, hidden, num_layers=layers, batch_first=True,
                      bidirectional=bidirectional).to(dtype)  # fmt: skip
    lengths = torch.tensor(lengths)
    x = torch.randn(len(lengths), int(lengths.max()), inputs, dtype=dtype, requires_grad=True)
    ref_out, ref_grads = _outputs_and_gradients(rnn, x, lengths, rnn, seed)
    out, grads = _outputs_and_gradients(rnn, x, lengths, lambda p: packed_rnn(rnn, p), seed)
    for ours, ref in zip(out + grads, ref_out + ref_grads, strict=True):
        torch.testing.assert_close(ours, ref, **TOLERANCES[dtype])
    short = int(lengths.argmin())
    assert (out[0][short, int(lengths.min()) :] == 0).all()  # padding stays zero


@settings(max_examples=30, deadline=None)
@given(
    cell=st.sampled_from(list(CELLS)),
    layers=st.integers(1, 2),
    bidirectional=st.booleans(),
    lengths=st.lists(st.integers(1, 6), min_size=1, max_size=5),  # unsorted, ties, ones
    sizes=st.tuples(st.integers(1, 5), st.integers(1, 4)),  # input size, hidden size
    seed=st.integers(0, 2**16),
)
def test_float64_outputs_states_and_gradients_equal_torch(
    cell, layers, bidirectional, lengths, sizes, seed
) -> None:
    _compare(cell, layers, bidirectional, lengths, sizes, torch.float64, seed)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("bidirectional", [False, True])
def test_float32_through_onednn_equals_torch(cell: str, bidirectional: bool) -> None:
    _compare(cell, 2, bidirectional, [4, 7, 1, 7, 3], (6, 5), torch.float32, 0)


@pytest.mark.parametrize("cell", list(CELLS))
def test_inference_mode_matches_torch(cell: str) -> None:
    torch.manual_seed(0)
    rnn = CELLS[cell](8, 16, batch_first=True, bidirectional=True).eval()
    x, lengths = torch.randn(3, 9, 8), torch.tensor([9, 2, 5])
    with torch.inference_mode():
        ref = _run(x, lengths, rnn)
        ours = _run(x, lengths, lambda packed: packed_rnn(rnn, packed))
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_refuses_what_it_does_not_implement() -> None:
    x = pack_padded_sequence(torch.zeros(1, 2, 4), torch.tensor([2]), batch_first=True)
    for rnn in (nn.RNN(4, 4), nn.LSTM(4, 4, bias=False), nn.LSTM(4, 4, proj_size=2)):
        with pytest.raises(ValueError, match="packed_rnn needs"):
            packed_rnn(rnn, x)
