"""StepLinears.linear equals F.linear in a time loop: values, and the gradients of every
input, bias and weight, with each weight's gradient made once for all its uses."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from seq2seq_core.config import ModelConfig
from seq2seq_core.kernels import select
from seq2seq_core.kernels.step_linears import StepLinears
from seq2seq_core.model.seq2seq import build_model


def _loop(linear, x0, w_in, w_rec, b_rec, per_row, steps: int) -> torch.Tensor:
    """A recurrence that reads the same weights at every step: one 1-D bias, one per-row
    (B, G) term like the input-feeding decoder's precomputed gates, one 3-D input."""
    h, outs = x0, []
    for t in range(steps):
        gates = linear(h, w_rec, per_row[t])  # (B, G) with a (B, G) "bias"
        h = torch.tanh(linear(gates.unsqueeze(1), w_in, b_rec).squeeze(1))  # (B, 1, H) input
        outs.append(h)
    return torch.stack(outs, dim=1)  # (B, T, H)


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 5),
    hidden=st.integers(1, 9),
    gates=st.integers(1, 9),
    steps=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_loop_values_and_gradients_equal_f_linear(batch, hidden, gates, steps, seed) -> None:
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, dtype=torch.float64, generator=g).requires_grad_()

    leaves = [rand(batch, hidden), rand(hidden, gates), rand(gates, hidden), rand(hidden)]
    per_row = rand(steps, batch, gates)
    leaves.append(per_row)
    x0, w_in, w_rec, b_rec, _ = leaves
    weighting = torch.randn(batch, steps, hidden, dtype=torch.float64, generator=g)
    linears = StepLinears()
    ours = _loop(linears.linear, x0, w_in, w_rec, b_rec, per_row, steps)
    ref = _loop(F.linear, x0, w_in, w_rec, b_rec, per_row, steps)
    assert torch.equal(ours, ref)  # the same addmm/mm calls forward
    assert len(linears) == 2  # one alias per weight, however many steps read it
    grads = torch.autograd.grad((ours * weighting).sum(), leaves)
    ref_grads = torch.autograd.grad((ref * weighting).sum(), leaves)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_float32_weight_gradient_is_one_matmul_within_rounding() -> None:
    """Joey-sized: 30 steps of 64 rows times a 2048 x 512 weight. Only the order of the
    weight gradient's sum differs from autograd's, so float32 agrees to a few ulps."""
    torch.manual_seed(0)
    w = torch.randn(2048, 512, requires_grad=True)
    xs = [torch.randn(64, 512) for _ in range(30)]
    grads_out = [torch.randn(64, 2048) for _ in range(30)]

    def weight_grad(linear) -> torch.Tensor:
        loss = sum((linear(x, w) * g).sum() for x, g in zip(xs, grads_out, strict=True))
        return torch.autograd.grad(loss, w)[0]

    ours, ref = weight_grad(StepLinears().linear), weight_grad(F.linear)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-4)


def test_a_use_that_backward_never_reaches_adds_nothing() -> None:
    w = torch.randn(3, 4, requires_grad=True)
    x_used, x_unused = torch.randn(2, 4), torch.randn(2, 4)
    linears = StepLinears()
    used, _ = linears.linear(x_used, w), linears.linear(x_unused, w)
    (grad,) = torch.autograd.grad(used.sum(), w)
    torch.testing.assert_close(grad, torch.ones(2, 3).t().mm(x_used))


MODES = {
    "training": (contextlib.nullcontext, True),
    "no_grad": (torch.no_grad, False),
    "inference": (torch.inference_mode, False),
    "bf16 autocast": (lambda: torch.autocast("cpu", dtype=torch.bfloat16), False),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_select_takes_it_where_gradients_flow_in_fp32_on_cpu(mode: str) -> None:
    context, expected = MODES[mode]
    with context():
        kernels = select(torch.device("cpu"), torch.float32)
    assert (kernels.step_linears is not None) == expected


def test_input_feeding_training_reads_each_loop_weight_once_per_forward() -> None:
    """Joey's decoder: the fed-back W_ih columns, W_hh, the query layer and the
    attentional-vector layer go through one StepLinears per forward pass."""
    cfg = ModelConfig(cell="lstm", attention="bahdanau", input_feeding=True, emb_size=8,
                      hidden_size=12, tie_embeddings="none", dropout=0.0)  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg, 20, 20).train()
    seen: list[StepLinears] = []
    real_select = model.select_kernels

    def spy():
        kernels = real_select()
        seen.append(kernels.step_linears)
        return kernels

    model.select_kernels = spy  # type: ignore[method-assign]
    src, src_len = torch.randint(4, 20, (2, 5)), torch.tensor([5, 3])
    tgt = torch.randint(4, 20, (2, 6))
    model(src, src_len, tgt, tgt).backward()
    assert len(seen) == 1 and seen[0] is not None and len(seen[0]) == 4
