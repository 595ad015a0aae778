"""additive_scores equals torch.tanh(q + k) @ v: values and gradients, chunked or not."""

from __future__ import annotations

import importlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seq2seq_core.kernels.additive_scores import AdditiveScores, additive_scores, chunked_scores

# the module, not its function of the same name that seq2seq_core.kernels exports
additive_scores_module = importlib.import_module("seq2seq_core.kernels.additive_scores")
SHAPES = st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 5), st.integers(1, 6))


def _qkv(shape, dtype, seed: int, requires_grad: bool = True):
    batch, steps, keys, size = shape
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, steps, size, dtype=dtype, generator=g)
    k = torch.randn(batch, keys, size, dtype=dtype, generator=g)
    v = torch.randn(size, dtype=dtype, generator=g)
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


def _reference(q, k, v):
    return torch.tanh(q.unsqueeze(2) + k.unsqueeze(1)) @ v  # (B, T, S)


@settings(max_examples=40, deadline=None)
@given(shape=SHAPES, seed=st.integers(0, 2**16))
def test_values_and_gradients_equal_the_tanh_formula(shape, seed) -> None:
    q, k, v = _qkv(shape, torch.float64, seed)
    ours, ref = additive_scores(q, k, v), _reference(q, k, v)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    weight = torch.randn_like(ref)
    grads = torch.autograd.grad((ours * weight).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * weight).sum(), (q, k, v))
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(shape=SHAPES, seed=st.integers(0, 2**16), chunk=st.integers(1, 200))
def test_gradients_in_any_chunk_of_sentences_equal_the_tanh_formula(shape, seed, chunk) -> None:
    """Backward rebuilds the energy a chunk of sentences at a time: one, several or all."""
    q, k, v = _qkv(shape, torch.float64, seed)
    ref = _reference(q, k, v)
    weight = torch.randn_like(ref)
    ref_grads = torch.autograd.grad((ref * weight).sum(), (q, k, v))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(additive_scores_module, "ENERGY_CHUNK", chunk)
        grads = torch.autograd.grad((additive_scores(q, k, v) * weight).sum(), (q, k, v))
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_gradcheck() -> None:
    q, k, v = _qkv((3, 4, 5, 6), torch.float64, 0)
    assert torch.autograd.gradcheck(AdditiveScores.apply, (q, k, v))


@settings(max_examples=30, deadline=None)
@given(shape=SHAPES, seed=st.integers(0, 2**16), chunk=st.integers(1, 200))
def test_float32_in_any_chunk_size_equals_the_tanh_formula(shape, seed, chunk) -> None:
    """Without gradients (decoding): the sigmoid form, a few rows at a time."""
    q, k, v = _qkv(shape, torch.float32, seed, requires_grad=False)
    ref, tolerance = _reference(q, k, v), {"atol": 2e-6 * shape[3], "rtol": 0}
    ours = chunked_scores(q.unsqueeze(2), k.unsqueeze(1), v, chunk=chunk)
    torch.testing.assert_close(ours, ref, **tolerance)
    with torch.inference_mode():
        torch.testing.assert_close(additive_scores(q, k, v), ref, **tolerance)
