"""Bahdanau's additive scores v . tanh(q + k) for every query against every key.

Computes: ``scores[b, t, s] = v . tanh(q[b, t] + k[b, s])`` for q (B, T, A), k (B, S, A),
v (A,) -> (B, T, S), and its gradients for q, k and v.
Torch reference: ``torch.tanh(q.unsqueeze(2) + k.unsqueeze(1)) @ v`` with autograd
(``tests/unit/kernels/test_additive_scores.py``: values and gradients, float64 and float32).

Why: the (B, T, S, A) energy tensor is the largest of the model (~130 MB for a batch of
2,000 target tokens) and autograd would write it, keep it and read it back four times.
Two tricks, both exact up to float rounding:

* tanh(x) = 2 sigmoid(2x) - 1: torch's CPU tanh is a 1-ulp polynomial about 6x slower than
  its sigmoid, and the energy is the largest elementwise job of a decoding step, so
  v . tanh(q + k) is computed as 2 (sigmoid(2 (q + k)) . v) - sum(v) (within 2e-7 of tanh).
* The energy is built a few sentences at a time (``ENERGY_CHUNK`` elements, which stay in
  cache) and, with gradients, rebuilt in backward instead of kept, so that it never makes
  a round trip through memory.

Used: by ``BahdanauAttention`` where ``kernels.select`` chooses it (CPU), under autocast too
(the scores come out in q's dtype, as the reference's would). On CUDA the tricks are
CPU-specific (cache-sized chunks, a Python loop per sentence in backward) and the reference
itself runs instead. With gradients it runs the autograd Function
``AdditiveScores``; without, the chunked forward alone.
"""

from __future__ import annotations

import torch
from torch import Tensor

ENERGY_CHUNK = 1 << 20  # elements (4 MB in fp32): one chunk's energy stays in cache


def additive_scores(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """q (B, T, A), k (B, S, A), v (A,) -> v . tanh(q + k) per query and key, (B, T, S)."""
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return AdditiveScores.apply(q, k, v)
    return chunked_scores(q.unsqueeze(2), k.unsqueeze(1), v)


def _half_energy(q: Tensor, k: Tensor) -> Tensor:
    """sigmoid(2 (q + k)), whose affine map 2 s - 1 is tanh(q + k): a fresh tensor."""
    return torch.add(q * 2.0, k, alpha=2.0).sigmoid_()


def chunked_scores(q: Tensor, k: Tensor, v: Tensor, chunk: int = ENERGY_CHUNK) -> Tensor:
    """q (B, T, 1, A), k (B, 1, S, A), v (A,) -> v . tanh(q + k), (B, T, S); no autograd.

    A few sentences at a time: a beam of 64 sentences x 5 hypotheses x 40 source tokens is a
    26 MB energy tensor, and writing it whole, then reading it back twice from memory, costs
    twice as much as the arithmetic.
    """
    per_row = q.size(1) * k.size(2) * q.size(3)
    rows = max(1, chunk // per_row)
    total = v.sum()
    scores = q.new_empty(q.size(0), q.size(1), k.size(2))
    for start in range(0, q.size(0), rows):
        part = slice(start, start + rows)
        torch.matmul(_half_energy(q[part], k[part]), v, out=scores[part])
    return scores.mul_(2.0).sub_(total)


class AdditiveScores(torch.autograd.Function):
    """``additive_scores`` with gradients: the energy is built a few sentences at a time
    (``ENERGY_CHUNK`` elements) in forward, and rebuilt in backward instead of kept."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        ctx.save_for_backward(q, k, v)
        return chunked_scores(q.unsqueeze(2), k.unsqueeze(1), v)  # (B, T, S)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = ctx.saved_tensors
        grad = grad.contiguous()
        grad_q, grad_k = torch.empty_like(q), torch.empty_like(k)
        grad_v = torch.zeros_like(v)
        v4 = v * 4.0
        # As many sentences as fit a chunk: the input-feeding loop calls this once per
        # target step (T = 1), where one sentence's energy is a few kilobytes and a loop
        # over sentences would spend its time in the per-op overhead of tiny tensors.
        rows = max(1, ENERGY_CHUNK // (q.size(1) * k.size(1) * q.size(2)))
        for start in range(0, q.size(0), rows):
            part = slice(start, start + rows)
            half = _half_energy(q[part].unsqueeze(2), k[part].unsqueeze(1))  # (r, T, S, A): s
            g = grad[part]  # (r, T, S)
            # tanh = 2 s - 1, so sum g tanh = 2 s^T g - sum(g).
            grad_v.addmv_(half.view(-1, half.size(-1)).t(), g.reshape(-1), alpha=2.0)
            grad_v -= g.sum()
            # d score / d (q + k) = (1 - tanh^2) v = 4 s (1 - s) v, times the incoming
            # gradient; in place.
            pre = torch.addcmul(half, half, half, value=-1.0).mul_(g.unsqueeze(-1)).mul_(v4)
            grad_q[part] = pre.sum(dim=2)
            grad_k[part] = pre.sum(dim=1)
        return grad_q, grad_k, grad_v
