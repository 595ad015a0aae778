"""linear_cross_entropy equals F.cross_entropy(F.linear(x, W, b), y, reduction="sum")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from seq2seq_core.kernels.linear_cross_entropy import linear_cross_entropy


@settings(max_examples=40, deadline=None)
@given(
    tokens=st.integers(1, 40),
    hidden=st.integers(1, 8),
    vocab=st.integers(2, 30),
    chunk=st.integers(1, 64),
    smoothing=st.sampled_from([0.0, 0.1, 0.3]),
    seed=st.integers(0, 2**16),
)
def test_loss_and_gradients_equal_torch(tokens, hidden, vocab, chunk, smoothing, seed) -> None:
    torch.manual_seed(seed)
    layer = torch.nn.Linear(hidden, vocab).double()
    x = torch.randn(tokens, hidden, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, vocab, (tokens,))
    params = (x, layer.weight, layer.bias)
    ref = F.cross_entropy(layer(x), y, reduction="sum", label_smoothing=smoothing)
    ref_grads = torch.autograd.grad(3 * ref, params)
    loss = linear_cross_entropy(x, layer, y, chunk=chunk, label_smoothing=smoothing)
    grads = torch.autograd.grad(3 * loss, params)  # backward rescales by the incoming grad
    assert loss.dtype == torch.float32  # softmax and sums in fp32
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_runs_the_matmuls_in_bf16_and_returns_fp32() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 50)
    x, y = torch.randn(37, 16), torch.randint(0, 50, (37,))
    ref = F.cross_entropy(layer(x), y, reduction="sum")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(x, layer, y)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=2e-2, atol=0)


def test_no_gradient_work_without_grad() -> None:
    layer = torch.nn.Linear(4, 9)
    x, y = torch.randn(5, 4), torch.randint(0, 9, (5,))
    with torch.no_grad():
        loss = linear_cross_entropy(x, layer, y)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, F.cross_entropy(layer(x), y, reduction="sum").detach())
