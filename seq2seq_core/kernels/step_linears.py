"""Linears inside a time loop, each weight's gradient one matmul over all the loop's steps.

Computes: ``F.linear(x_t, W, b)`` for every use t of a weight W within one forward pass,
the same values (the same ``addmm``/``mm`` calls), and in backward the same gradients for
every x_t and b, and for W the sum over uses ``cat(g_t)^T @ cat(x_t)``: one
(out, sum B_t) x (sum B_t, in) matmul when the weight's last use is differentiated.
Torch reference: ``F.linear`` per use with autograd (``tests/unit/kernels/test_step_linears.py``:
values and gradients, float64 and float32; only the order of W's sum differs).

Why: the input-feeding decoder multiplies by the same weights (the fed-back columns of
W_ih, W_hh, the attention's query layer, the attentional-vector layer) at each of T steps.
Autograd differentiates each use apart: per step and weight a (out, B) x (B, in) matmul
with K = B (about 64 rows, where a CPU's GEMM runs far below its peak) and an add into the
(out, in) gradient (4 MB for Joey's W_hh, read and written once per step). Here W's
gradient waits for the loop's backward to finish and then is one matmul with K = all rows.

Used: by ``kernels.select`` where the encoder's ``packed_rnn`` is: on CPU, float32/float64,
outside autocast, where gradients flow (training). Decoding never records a graph.
"""

from __future__ import annotations

import torch
from torch import Tensor


class _Uses:
    """One weight's uses in one forward pass: each use's input, and once its backward ran,
    the gradient of its output (None for a use that backward never reached)."""

    def __init__(self) -> None:
        self.inputs: list[Tensor] = []  # (B_t, in) each
        self.grads: list[Tensor | None] = []  # (B_t, out) each


class _WeightAlias(torch.autograd.Function):
    """The weight itself, as the loop's linears read it. Its backward runs after every
    use's (autograd waits for all consumers), and turns their stashed inputs and output
    gradients into W's gradient: one matmul."""

    @staticmethod
    def forward(ctx, weight: Tensor, uses: _Uses) -> Tensor:
        ctx.uses = uses
        ctx.set_materialize_grads(False)
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, _unused: Tensor | None) -> tuple[Tensor | None, None]:
        uses = ctx.uses
        pairs = [(x, g) for x, g in zip(uses.inputs, uses.grads, strict=True) if g is not None]
        if not pairs:
            return None, None
        inputs = torch.cat([x for x, _ in pairs])  # (N, in)
        grads = torch.cat([g for _, g in pairs])  # (N, out)
        return grads.t().mm(inputs), None  # (out, in)


class _StepLinear(torch.autograd.Function):
    """x (..., in) -> x W^T + b; the bias (out,) or a per-row (rows, out) term. Returns no
    gradient for W (``_WeightAlias`` makes it) but stashes what it needs."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, uses: _Uses) -> Tensor:
        rows = x.reshape(-1, x.size(-1))  # (R, in): ATen's linear folds leading dims too
        out = rows.mm(weight.t()) if bias is None else torch.addmm(bias, rows, weight.t())
        ctx.save_for_backward(weight)
        ctx.use, ctx.uses = len(uses.inputs), uses
        ctx.bias_shape = None if bias is None else bias.shape
        ctx.x_shape = x.shape
        uses.inputs.append(rows)
        uses.grads.append(None)
        return out.view(*x.shape[:-1], out.size(-1))

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, Tensor | None, None]:
        (weight,) = ctx.saved_tensors
        grad = grad.reshape(-1, grad.size(-1))  # (R, out)
        ctx.uses.grads[ctx.use] = grad
        grad_x = grad.mm(weight).view(ctx.x_shape) if ctx.needs_input_grad[0] else None
        grad_b = None
        if ctx.bias_shape is not None and ctx.needs_input_grad[2]:
            grad_b = grad.sum_to_size(ctx.bias_shape)
        return grad_x, None, grad_b, None


class StepLinears:
    """The linears of one forward pass: ``linear`` is ``F.linear``; a weight's gradient is
    one matmul over all its uses here. Made per forward pass (``kernels.select``), dropped
    with its graph."""

    def __init__(self) -> None:
        self._aliases: dict[int, tuple[Tensor, Tensor, _Uses]] = {}

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """``F.linear(x, weight, bias)``: x (..., in) -> (..., out); bias (out,) or (R, out)
        for R rows of x."""
        alias, uses = self._alias(weight)
        return _StepLinear.apply(x, alias, bias, uses)

    def __len__(self) -> int:
        """How many weights were read so far (tests)."""
        return len(self._aliases)

    def _alias(self, weight: Tensor) -> tuple[Tensor, _Uses]:
        kept = self._aliases.get(id(weight))
        if kept is None or kept[0] is not weight:  # `is`: an id may be reused once freed
            uses = _Uses()
            kept = (weight, _WeightAlias.apply(weight, uses), uses)
            self._aliases[id(weight)] = kept
        return kept[1], kept[2]
