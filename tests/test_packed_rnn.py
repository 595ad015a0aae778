"""packed_rnn equals nn.LSTM / nn.GRU over the same PackedSequence: outputs, states, gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seq2seq_core.packed_rnn import packed_rnn, use_packed_rnn

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


def _run(rnn, x, lengths, fn):
    """Padded outputs, then h_n (and c_n for an LSTM)."""
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, final = fn(packed)
    padded, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
    return [padded, *final] if isinstance(final, tuple) else [padded, final]


# float64 checks the equations to rounding; float32 runs the time loops' oneDNN products.
TOLERANCES = {
    torch.float64: {"rtol": 1e-10, "atol": 1e-12},
    torch.float32: {"rtol": 1e-4, "atol": 1e-5},
}


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_outputs_states_and_gradients_equal_torch(
    cell: str, layers: int, bidirectional: bool, dtype: torch.dtype
) -> None:
    torch.manual_seed(0)
    rnn = CELLS[cell](6, 5, num_layers=layers, batch_first=True, bidirectional=bidirectional)
    rnn = rnn.to(dtype)
    lengths = torch.tensor([4, 7, 1, 7, 3])  # unsorted, with ties and a single-token row
    x = torch.randn(5, 7, 6, dtype=dtype, requires_grad=True)
    results = []
    for fn in (rnn, lambda packed: packed_rnn(rnn, packed)):
        rnn.zero_grad()
        x.grad = None
        outputs = _run(rnn, x, lengths, fn)
        torch.manual_seed(1)  # the same random weighting of every output for both
        loss = sum((t * torch.randn_like(t)).sum() for t in outputs)
        loss.backward()
        grads = [p.grad.clone() for p in rnn.parameters()] + [x.grad.clone()]
        results.append((outputs, grads))
    (ref_out, ref_grads), (out, grads) = results
    for ours, ref in zip(out + grads, ref_out + ref_grads, strict=True):
        torch.testing.assert_close(ours, ref, **TOLERANCES[dtype])
    assert (out[0][2, 1:] == 0).all()  # padding of the one-token row stays zero


@pytest.mark.parametrize("cell", list(CELLS))
def test_inference_mode_and_float32_match_torch(cell: str) -> None:
    torch.manual_seed(0)
    rnn = CELLS[cell](8, 16, batch_first=True, bidirectional=True).eval()
    x, lengths = torch.randn(3, 9, 8), torch.tensor([9, 2, 5])
    with torch.inference_mode():
        ref = _run(rnn, x, lengths, rnn)
        ours = _run(rnn, x, lengths, lambda packed: packed_rnn(rnn, packed))
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_used_only_for_full_precision_cpu_lstm_and_gru() -> None:
    lstm, gru = nn.LSTM(4, 4), nn.GRU(4, 4)
    x = torch.zeros(2, 4)
    assert use_packed_rnn(lstm, x) and use_packed_rnn(gru, x)
    assert not use_packed_rnn(nn.RNN(4, 4), x)
    assert not use_packed_rnn(nn.LSTM(4, 4, bias=False), x)
    assert not use_packed_rnn(lstm, x.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not use_packed_rnn(lstm, x)
