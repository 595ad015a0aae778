"""LSTM/GRU over packed sequences, with a hand-written backward: torch's results, faster on CPU.

Computes: ``rnn(packed)`` for an ``nn.LSTM``/``nn.GRU`` with biases and no projections,
batch-first or not, any number of layers, uni- or bidirectional: the same outputs (a
PackedSequence), the same final state (in the batch's original order) and the same
gradients for the inputs and every weight; dropout between layers as torch applies it.
Torch reference: ``torch.nn.LSTM`` / ``torch.nn.GRU`` called on the same PackedSequence
(``tests/unit/kernels/test_packed_rnn.py`` compares them in float64 and float32).

Why: on CPU, ``nn.LSTM`` and ``nn.GRU`` over a PackedSequence leave oneDNN's fused kernel for
a step-by-step loop that multiplies each step's inputs by W_ih separately and records a dozen
autograd nodes per step; for the Joey-sized BiLSTM encoder that is slower than even the
fused kernel on the same tokens padded, which in turn computes (and differentiates) the
padding. Here the input projection of every token and direction is one matmul; only
``h @ W_hh`` and the cell's elementwise work stay in the time loop, which runs over the
shrinking prefix of rows still active at each step (packed order: longest first), and the
backward pass is written out by hand: one matmul and a few elementwise ops per step, with the
weight gradient of W_hh as a single matmul over all steps afterwards.

Used: by the encoder when ``kernels.select`` says so: on CPU, float32/float64, outside
autocast, where gradients flow (training). Without gradients (validation, decoding) torch's
own packed loop has no autograd nodes to record and runs in C++: faster than this one.
Falls back to torch's module on CUDA (cuDNN has its own fused kernels) and under autocast
(torch's module keeps its own dtype handling).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from seq2seq_core.kernels.packed_weights import can_pack_weights, pack_weight, packed_linear


class _LSTMDirection(torch.autograd.Function):
    """One direction of one layer: gate pre-activations from the inputs -> every h and
    the final (h, c) of each sequence, in packed (time-major, longest-first) row order."""

    @staticmethod
    def forward(ctx, x_gates: Tensor, w_hh: Tensor, sizes: list[int], reverse: bool):
        # x_gates (N, 4H): x W_ih^T + b_ih + b_hh per packed row; sizes[t]: rows active at t
        hidden = w_hh.size(1)
        offsets = _offsets(sizes)
        gates = torch.empty_like(x_gates)  # (N, 4H) activations i, f, g, o
        cells = x_gates.new_empty(x_gates.size(0), hidden)  # (N, H) c_t
        cells_tanh = torch.empty_like(cells)  # (N, H) tanh(c_t)
        out = torch.empty_like(cells)  # (N, H) h_t
        h = x_gates.new_zeros(sizes[0], hidden)  # (B, H) running state; rows that are done
        c = torch.zeros_like(h)  # keep their final value, rows not yet started stay zero
        times_w_hh_t = _times_transposed(w_hh)  # h -> h W_hh^T
        for t in _time_order(len(sizes), reverse):
            rows = slice(offsets[t], offsets[t] + sizes[t])
            n = sizes[t]
            g = torch.add(x_gates[rows], times_w_hh_t(h[:n]), out=gates[rows])
            g[:, : 2 * hidden].sigmoid_()  # i, f
            g[:, 2 * hidden : 3 * hidden].tanh_()  # g
            g[:, 3 * hidden :].sigmoid_()  # o
            c_t = torch.mul(g[:, hidden : 2 * hidden], c[:n], out=cells[rows])
            c_t.addcmul_(g[:, :hidden], g[:, 2 * hidden : 3 * hidden])
            tanh_c = torch.tanh(c_t, out=cells_tanh[rows])
            h_t = torch.mul(g[:, 3 * hidden :], tanh_c, out=out[rows])
            h[:n] = h_t
            c[:n] = c_t
        ctx.save_for_backward(w_hh, gates, cells, cells_tanh, out)
        ctx.sizes, ctx.reverse = sizes, reverse
        return out, h, c

    @staticmethod
    def backward(ctx, grad_out: Tensor, grad_h: Tensor, grad_c: Tensor):
        w_hh, gates, cells, cells_tanh, out = ctx.saved_tensors
        sizes, reverse = ctx.sizes, ctx.reverse
        hidden = w_hh.size(1)
        offsets = _offsets(sizes)
        h_prev = _previous_rows(out, sizes, offsets, reverse)  # (N, H) h_{t-1}, 0 at starts
        c_prev = _previous_rows(cells, sizes, offsets, reverse)  # (N, H) c_{t-1}
        i, f, g, o = gates.split(hidden, dim=1)
        # Everything but the two recurrences is elementwise over all steps: do it once.
        dc_dh = o * (1 - cells_tanh * cells_tanh)  # d c_t / d h_t through h = o tanh(c)
        ifg_per_dc = torch.stack(  # d pre-activation of i, f, g per unit d c_t
            [g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g * g)], dim=1
        )  # (N, 3, H)
        o_per_dh = cells_tanh * o * (1 - o)  # d pre-activation of o per unit d h_t
        grad_gates = torch.empty_like(gates)  # (N, 4H) d loss / d pre-activations
        dh = grad_h.clone()  # (B, H) carried d h from the step after (final-state grads first)
        dc = grad_c.clone()
        grad_out = grad_out.contiguous()
        times_w_hh = _times_transposed(w_hh.t().contiguous())  # d gates -> d gates W_hh
        for t in _time_order(len(sizes), not reverse):
            rows = slice(offsets[t], offsets[t] + sizes[t])
            n = sizes[t]
            dh_t, dc_t = dh[:n], dc[:n]
            dh_t += grad_out[rows]
            dc_t.addcmul_(dh_t, dc_dh[rows])
            dg = grad_gates[rows]
            torch.mul(
                dc_t.unsqueeze(1), ifg_per_dc[rows], out=dg[:, : 3 * hidden].view(n, 3, hidden)
            )
            torch.mul(dh_t, o_per_dh[rows], out=dg[:, 3 * hidden :])
            dh_t.copy_(times_w_hh(dg))  # to h_{t-1}
            dc_t.mul_(f[rows])  # to c_{t-1}
        grad_w_hh = grad_gates.t() @ h_prev if ctx.needs_input_grad[1] else None
        return grad_gates, grad_w_hh, None, None


class _GRUDirection(torch.autograd.Function):
    """One GRU direction of one layer, as ``_LSTMDirection``. x_gates holds
    x W_ih^T + b_ih + (b_hr, b_hz, 0): b_hn sits inside r * (W_hn h + b_hn) in torch's GRU."""

    @staticmethod
    def forward(ctx, x_gates: Tensor, w_hh: Tensor, b_hn: Tensor, sizes: list[int], reverse: bool):
        hidden = w_hh.size(1)
        offsets = _offsets(sizes)
        rz = x_gates.new_empty(x_gates.size(0), 2 * hidden)  # (N, 2H) r, z
        hn = x_gates.new_empty(x_gates.size(0), hidden)  # (N, H) W_hn h + b_hn
        candidate = torch.empty_like(hn)  # (N, H) n
        out = torch.empty_like(hn)  # (N, H) h_t
        h = x_gates.new_zeros(sizes[0], hidden)  # (B, H) running state, as for the LSTM
        times_w_hh_t = _times_transposed(w_hh)
        for t in _time_order(len(sizes), reverse):
            rows = slice(offsets[t], offsets[t] + sizes[t])
            n = sizes[t]
            h_w = times_w_hh_t(h[:n])  # (n, 3H)
            gates = torch.add(x_gates[rows, : 2 * hidden], h_w[:, : 2 * hidden], out=rz[rows])
            gates.sigmoid_()
            hn_t = torch.add(h_w[:, 2 * hidden :], b_hn, out=hn[rows])
            n_t = torch.addcmul(x_gates[rows, 2 * hidden :], gates[:, :hidden], hn_t,
                                out=candidate[rows]).tanh_()  # fmt: skip
            h_t = torch.sub(h[:n], n_t, out=out[rows])  # h' = n + z (h - n)
            h_t.mul_(gates[:, hidden:]).add_(n_t)
            h[:n] = h_t
        ctx.save_for_backward(w_hh, rz, hn, candidate, out)
        ctx.sizes, ctx.reverse = sizes, reverse
        return out, h

    @staticmethod
    def backward(ctx, grad_out: Tensor, grad_h: Tensor):
        w_hh, rz, hn, candidate, out = ctx.saved_tensors
        sizes, reverse = ctx.sizes, ctx.reverse
        hidden = w_hh.size(1)
        offsets = _offsets(sizes)
        h_prev = _previous_rows(out, sizes, offsets, reverse)  # (N, H)
        r, z = rz.split(hidden, dim=1)
        n_pre_per_dh = (1 - z) * (1 - candidate * candidate)  # d pre-activation of n / d h'
        z_pre_per_dh = (h_prev - candidate) * z * (1 - z)
        r_pre_per_n_pre = hn * r * (1 - r)
        grad_hw = out.new_empty(out.size(0), 3 * hidden)  # (N, 3H) d (h W_hh^T + b_hh)
        grad_n_pre = torch.empty_like(out)  # (N, H) d pre-activation of n
        dh = grad_h.clone()
        grad_out = grad_out.contiguous()
        times_w_hh = _times_transposed(w_hh.t().contiguous())
        for t in _time_order(len(sizes), not reverse):
            rows = slice(offsets[t], offsets[t] + sizes[t])
            n = sizes[t]
            dh_t = dh[:n]
            dh_t += grad_out[rows]
            g = grad_hw[rows]
            torch.mul(dh_t, z_pre_per_dh[rows], out=g[:, hidden : 2 * hidden])
            dn = torch.mul(dh_t, n_pre_per_dh[rows], out=grad_n_pre[rows])
            torch.mul(dn, r_pre_per_n_pre[rows], out=g[:, :hidden])
            torch.mul(dn, r[rows], out=g[:, 2 * hidden :])
            dh_t.mul_(z[rows]).add_(times_w_hh(g))  # to h_{t-1}: directly and through W_hh
        grad_x_gates = torch.cat([grad_hw[:, : 2 * hidden], grad_n_pre], dim=1)
        grad_w_hh = grad_hw.t() @ h_prev if ctx.needs_input_grad[1] else None
        grad_b_hn = grad_hw[:, 2 * hidden :].sum(dim=0) if ctx.needs_input_grad[2] else None
        return grad_x_gates, grad_w_hh, grad_b_hn, None, None


def _times_transposed(weight: Tensor) -> Callable[[Tensor], Tensor]:
    """x -> x @ weight.T for the time loop. A few rows per step times the same matrix
    is where oneDNN's layout matters: packed once per call, the step's product beats
    ``torch.mm``, which repacks every call. oneDNN has no float64."""
    if weight.dtype != torch.float32 or not can_pack_weights(weight.device):
        return lambda x: x @ weight.t()
    packed = pack_weight(weight)
    return lambda x: packed_linear(x, packed, None)


def _offsets(sizes: list[int]) -> list[int]:
    offsets = [0]
    for size in sizes[:-1]:
        offsets.append(offsets[-1] + size)
    return offsets


def _time_order(steps: int, reverse: bool) -> range:
    return range(steps - 1, -1, -1) if reverse else range(steps)


def _previous_rows(values: Tensor, sizes: list[int], offsets: list[int], reverse: bool) -> Tensor:
    """Per packed row, the same sequence's value one step earlier in processing order
    (zero where the sequence starts)."""
    previous = torch.zeros_like(values)
    for before, t in itertools.pairwise(_time_order(len(sizes), reverse)):
        n = min(sizes[t], sizes[before])
        previous[offsets[t] : offsets[t] + n] = values[offsets[before] : offsets[before] + n]
    return previous


def packed_rnn(
    rnn: nn.LSTM | nn.GRU, packed: PackedSequence
) -> tuple[PackedSequence, Tensor | tuple[Tensor, Tensor]]:  # GRU: h; LSTM: (h, c)
    """``rnn(packed)`` for a batch-first or time-first ``nn.LSTM``/``nn.GRU`` with biases
    and no projections: the same outputs and final state (in the batch's original order),
    the same gradients for the inputs and every weight; dropout between layers as torch
    applies it."""
    if not isinstance(rnn, nn.LSTM | nn.GRU) or not rnn.bias or getattr(rnn, "proj_size", 0):
        raise ValueError("packed_rnn needs an nn.LSTM or nn.GRU with biases and no projection")
    is_lstm = isinstance(rnn, nn.LSTM)
    sizes = packed.batch_sizes.tolist()
    suffixes = ["", "_reverse"][: 2 if rnn.bidirectional else 1]
    layer_in = packed.data  # (N, E)
    finals_h, finals_c = [], []
    for layer in range(rnn.num_layers):
        params = [_direction_params(rnn, f"l{layer}{suffix}", is_lstm) for suffix in suffixes]
        w_ih = torch.cat([w for w, _, _, _ in params])
        bias = torch.cat([b for _, b, _, _ in params])
        # Every direction's input projection for every token in one matmul: (N, dirs * G)
        x_gates = torch.addmm(bias, layer_in, w_ih.t()).chunk(len(suffixes), dim=1)
        outs = []
        for direction, (_, _, w_hh, b_hn) in enumerate(params):
            reverse = direction == 1
            if is_lstm:
                out, h, c = _LSTMDirection.apply(x_gates[direction], w_hh, sizes, reverse)
                finals_c.append(c)
            else:
                out, h = _GRUDirection.apply(x_gates[direction], w_hh, b_hn, sizes, reverse)
            outs.append(out)
            finals_h.append(h)
        layer_in = torch.cat(outs, dim=1) if len(outs) == 2 else outs[0]  # (N, dirs * H)
        if layer + 1 < rnn.num_layers:
            layer_in = nn.functional.dropout(layer_in, rnn.dropout, rnn.training)
    order = packed.unsorted_indices
    finals = [torch.stack(finals_h)] + ([torch.stack(finals_c)] if is_lstm else [])
    if order is not None:  # (layers * dirs, B, H), back from longest-first order
        finals = [state.index_select(1, order) for state in finals]
    output = PackedSequence(layer_in, packed.batch_sizes, packed.sorted_indices, order)
    return output, (finals[0], finals[1]) if is_lstm else finals[0]


def _direction_params(
    rnn: nn.RNNBase, name: str, is_lstm: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """W_ih, the bias folded into the input projection, W_hh, and the GRU's b_hn."""
    w_ih, w_hh = getattr(rnn, f"weight_ih_{name}"), getattr(rnn, f"weight_hh_{name}")
    b_ih, b_hh = getattr(rnn, f"bias_ih_{name}"), getattr(rnn, f"bias_hh_{name}")
    if is_lstm:
        return w_ih, b_ih + b_hh, w_hh, None
    hidden = w_hh.size(1)
    b_rz, b_hn = b_hh.split([2 * hidden, hidden])
    return w_ih, b_ih + torch.cat([b_rz, torch.zeros_like(b_hn)]), w_hh, b_hn
