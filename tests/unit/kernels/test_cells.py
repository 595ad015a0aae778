"""The fused LSTM/GRU cell equals torch.lstm_cell / torch.gru_cell: values and gradients."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seq2seq_core.config import ModelConfig
from seq2seq_core.decoding.greedy import greedy_decode
from seq2seq_core.kernels.cells import gru_cell, lstm_cell, recurrent_cell
from seq2seq_core.kernels.packed_weights import PackedWeights
from seq2seq_core.model.seq2seq import build_model

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


V = 30


def _cfg(cell: str, feed: bool, layers: int = 2) -> ModelConfig:
    return ModelConfig(
        cell=cell,
        attention="bahdanau",
        bidirectional=True,
        input_feeding=feed,
        emb_size=8,
        hidden_size=12,
        layers=layers,
        dropout=0.1,
        tie_embeddings="none",
    )


def _batch() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    src_len = torch.tensor([7, 3, 5])
    src = torch.randint(4, V, (3, 7), generator=g)
    src[torch.arange(7) >= src_len.unsqueeze(1)] = 0
    tgt_in = torch.randint(4, V, (3, 6), generator=g)
    tgt_out = torch.randint(4, V, (3, 6), generator=g)
    return src, src_len, tgt_in, tgt_out


# --- 1. the cell contract -------------------------------------------------------------------


class CellSpy:
    """Wraps torch's cell functions: records each call's biases, then calls the real one."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, torch.Size, torch.Size]] = []
        for name in ("lstm_cell", "gru_cell"):
            real = getattr(torch, name)
            monkeypatch.setattr(torch, name, self._wrap(name, real))

    def _wrap(self, name, real):
        def spy(x, hidden, w_ih, w_hh, b_ih=None, b_hh=None):
            self.calls.append((name, b_ih.shape, b_hh.shape))
            return real(x, hidden, w_ih, w_hh, b_ih, b_hh)

        return spy


@pytest.mark.parametrize(("cell", "feed"), list(itertools.product(("lstm", "gru"), (False, True))))
def test_rnn_cells_get_one_dimensional_biases_of_b_hh_shape(
    cell: str, feed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch's CUDA cells (``_thnn_fused_*_cell``) take 1-D biases of b_hh's size only
    (aten/src/ATen/native/cuda/RNN.cu, checkSizes): a (B, G) b_ih crashes there."""
    spy = CellSpy(monkeypatch)
    torch.manual_seed(0)
    model = build_model(_cfg(cell, feed), V, V).train()
    src, src_len, tgt_in, tgt_out = _batch()
    model(src, src_len, tgt_in, tgt_out).backward()  # teacher-forced training
    model(src, src_len, tgt_in, tgt_out, teacher_forcing=0.5).backward()  # step by step
    greedy_decode(model, [[5, 6, 7], [8, 9]], batch_size=2, max_len_ratio=1.0, max_len_extra=3)
    assert spy.calls
    for name, b_ih, b_hh in spy.calls:
        assert len(b_ih) == 1 and b_ih == b_hh, f"{name}: b_ih {tuple(b_ih)}, b_hh {tuple(b_hh)}"


# --- 1./7. the CUDA branch of the cells, run on CPU -----------------------------------------


def _checked(gi: torch.Tensor, gh: torch.Tensor, state: torch.Tensor, factor: int) -> None:
    # aten/src/ATen/native/cuda/RNN.cu checkSizes, for a call without biases
    assert gi.dim() == 2 and gi.shape == gh.shape
    assert state.dim() == 2 and state.numel() == gi.size(0) * gi.size(1) // factor


def _cpu_fused_lstm(gi, gh, c):
    _checked(gi, gh, c, 4)
    i, f, g, o = (gi + gh).chunk(4, dim=1)
    cy = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(cy), cy, gi.new_empty(0)


def _cpu_fused_gru(gi, gh, h):
    _checked(gi, gh, h, 3)
    i_r, i_z, i_n = gi.chunk(3, 1)
    h_r, h_z, h_n = gh.chunk(3, 1)
    r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return n + z * (h - n), gi.new_empty(0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cuda_kernels_compute_what_the_cpu_ones_do(
    cell: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CUDA's choice (plain attention, fused cells fed precomputed gates) gives the CPU's
    loss and gradients; torch's fused kernels are stood in for by their equations."""
    from seq2seq_core.kernels import Kernels, cells

    monkeypatch.setattr(cells, "fused_lstm_cell", _cpu_fused_lstm)
    monkeypatch.setattr(cells, "fused_gru_cell", _cpu_fused_gru)
    cfg = dataclasses.replace(_cfg(cell, True), dropout=0.0)
    src, src_len, tgt_in, tgt_out = _batch()
    results = []
    for kernels in (None, Kernels(packed_rnn=False, chunked_scores=False, fused_cells=True)):
        torch.manual_seed(0)
        model = build_model(cfg, V, V).double().train()
        if kernels is not None:
            monkeypatch.setattr(model, "select_kernels", lambda k=kernels: k)
        loss = model(src, src_len, tgt_in, tgt_out)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (cpu_loss, cpu_grads), (cuda_loss, cuda_grads) = results
    torch.testing.assert_close(cuda_loss, cpu_loss)
    for a, b in zip(cuda_grads, cpu_grads, strict=True):
        torch.testing.assert_close(a, b)


# --- 2. bf16 really bf16 --------------------------------------------------------------------


@pytest.mark.parametrize(("cell", "feed"), [("lstm", True), ("gru", False), ("gru", True)])
def test_rnns_run_in_the_autocast_dtype_and_cat_mixes_none(
    cell: str, feed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CUDA's bf16 choice (``rnn_dtype``), on CPU: every RNN output and every tensor the
    decoder concatenates is bf16; nothing is promoted to fp32 by a mixed cat."""
    from seq2seq_core.kernels import Kernels

    kernels = Kernels(packed_rnn=False, chunked_scores=False, rnn_dtype=torch.bfloat16)
    torch.manual_seed(0)
    model = build_model(_cfg(cell, feed), V, V).train()
    monkeypatch.setattr(model, "select_kernels", lambda: kernels)
    rnn_dtypes: list[torch.dtype] = []
    for rnn in (model.encoder.rnn, model.decoder.rnn):
        rnn.register_forward_hook(
            lambda m, i, out: rnn_dtypes.append(
                out[0].data.dtype if hasattr(out[0], "batch_sizes") else out[0].dtype
            )
        )
    cat_dtypes: list[set[torch.dtype]] = []
    real_cat = torch.cat

    def cat(tensors, *args, **kwargs):
        cat_dtypes.append({t.dtype for t in tensors if t.is_floating_point()})
        return real_cat(tensors, *args, **kwargs)

    src, src_len, tgt_in, tgt_out = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        monkeypatch.setattr(torch, "cat", cat)
        memory, state = model.encode(src, src_len, kernels)
        vectors = model.decoder.teacher_forced(tgt_in, state, memory, kernels)
        logits, _, _ = model.decode_step(tgt_in[:, 0], state, memory, kernels)
        monkeypatch.setattr(torch, "cat", real_cat)
    assert rnn_dtypes and set(rnn_dtypes) == {torch.bfloat16}
    assert vectors.dtype == torch.bfloat16 and logits.dtype == torch.bfloat16
    assert cat_dtypes and all(len(d) <= 1 for d in cat_dtypes), cat_dtypes
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(src, src_len, tgt_in, tgt_out)
    loss.backward()  # fp32 gradients through the casts
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())
