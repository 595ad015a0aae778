"""Summed cross-entropy of a linear layer's output, chunk by chunk, gradients on the way.

Computes: ``sum_i CE(x_i W^T + b, y_i)`` against targets smoothed towards uniform by
``label_smoothing``, for x (N, H), W (V, H), b (V,), y (N,) -> an fp32 scalar, and its
gradients for x, W and b.
Torch reference: ``F.cross_entropy(F.linear(x, W, b), y, reduction="sum",
label_smoothing=eps)`` (``tests/unit/kernels/test_linear_cross_entropy.py``).

Why: the plain route materialises four (N, V) tensors (logits, log-probs and both their
gradients; 77 MB each for 2,400 tokens and an 8k vocabulary), which on CPU costs as much in
memory traffic and page faults as the output matmuls themselves. Here only one (chunk, V)
block lives at a time: softmax - onehot is the logits' gradient, turned at once into the
gradients of x, W and b, which backward only rescales.

Used: for the teacher-forced training and validation loss (``Seq2Seq.forward`` with
teacher forcing 1), on every device. Under autocast the matmuls run in its dtype (bf16),
the softmax and all sums in fp32. The gradients are computed in forward whenever backward
may run, so a loss that is never differentiated should be computed under ``no_grad``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class _LinearCrossEntropy(torch.autograd.Function):
    """``linear_cross_entropy``; the matmuls run in ``dtype``, softmax and sums in fp32."""

    @staticmethod
    def forward(
        ctx, x, weight, bias, target, chunk: int, need_grad: bool, dtype: torch.dtype, eps: float
    ):
        grad_x = torch.empty_like(x)  # (N, H)
        grad_w = torch.zeros_like(weight)  # (V, H), fp32 like the parameter
        grad_b = torch.zeros_like(bias)  # (V,)
        w, b = weight.to(dtype), bias.to(dtype)
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        for start in range(0, x.size(0), chunk):
            xc, yc = x[start : start + chunk].to(dtype), target[start : start + chunk]
            logits = torch.addmm(b, xc, w.t()).float()  # (C, V)
            gold = logits.gather(1, yc.unsqueeze(1)).squeeze(1)  # (C,)
            mean_logit = logits.mean(dim=1) if eps else None  # before the in-place softmax
            peak = logits.amax(dim=1, keepdim=True)  # (C, 1)
            probs = logits.sub_(peak).exp_()  # unnormalised softmax, in place: one pass each
            norm = probs.sum(dim=1)  # (C,)
            lse = peak.squeeze(1) + norm.log()  # (C,) logsumexp
            total += (lse - gold).sum() * (1.0 - eps)
            if mean_logit is not None:  # the uniform part of the smoothed target
                total += (lse - mean_logit).sum() * eps
            if not need_grad:
                continue
            probs.div_(norm.unsqueeze(1))
            probs[torch.arange(yc.numel(), device=yc.device), yc] -= 1.0 - eps  # d loss/d logits
            if eps:
                probs -= eps / probs.size(1)
            grad_b += probs.sum(dim=0)
            probs_c = probs.to(dtype)
            grad_x[start : start + chunk] = torch.mm(probs_c, w)
            if dtype == grad_w.dtype:
                grad_w.addmm_(probs_c.t(), xc)
            else:
                grad_w += torch.mm(probs_c.t(), xc)
        ctx.save_for_backward(grad_x, grad_w, grad_b)
        return total

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        grad_x, grad_w, grad_b = ctx.saved_tensors
        g = grad_out.float()
        return (grad_x * g).to(grad_x.dtype), grad_w * g, grad_b * g, None, None, None, None, None


def linear_cross_entropy(
    x: Tensor, layer: nn.Linear, target: Tensor, chunk: int = 512, label_smoothing: float = 0.0
) -> Tensor:
    """Summed cross-entropy of ``layer(x)``: x (N, H), target (N,) -> fp32 scalar.

    Memory O(chunk * V) instead of O(N * V). Under autocast the matmuls run in its dtype.
    """
    # Inside Function.forward grad mode is always off, so ask here whether backward will run.
    need_grad = torch.is_grad_enabled() and (x.requires_grad or layer.weight.requires_grad)
    dtype = layer.weight.dtype
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
    with torch.autocast(x.device.type, enabled=False):
        return _LinearCrossEntropy.apply(
            x, layer.weight, layer.bias, target, chunk, need_grad, dtype, label_smoothing
        )
