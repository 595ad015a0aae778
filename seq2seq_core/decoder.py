"""Luong-style recurrent decoder (like Joey NMT's RecurrentDecoder with attention after the RNN).

Per step t: s_t = RNN([y_{t-1}; h~_{t-1} if input feeding], s_{t-1}); with attention
c_t = attend(query=s_t, keys=encoder outputs) and h~_t = tanh(W [s_t; c_t]); logits = W_o h~_t.
Without attention h~_t = s_t and the decoder has no attention parameters at all.

Because the query is the RNN's own output, nothing in the RNN depends on attention unless
input feeding is on: teacher-forced training then runs the RNN as one fused call over the
whole target and attends for all T steps in one batched call (``fused_states``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from seq2seq_core.attention import Attention
from seq2seq_core.encoder import RNN_CLASSES, RNNState


class Memory(NamedTuple):
    """What the decoder attends to, computed once per batch."""

    outputs: Tensor  # (B, S, K) encoder outputs, zero at padding
    proj_keys: Tensor | None  # (B, S, A) attention key projection, None without attention
    mask: Tensor  # (B, S) bool, True at real source tokens
    src_len: Tensor  # (B,) int64, on the model's device


class DecoderState(NamedTuple):
    hidden: RNNState  # (layers, B, H), an (h, c) pair for LSTM
    att_vector: Tensor | None  # (B, H) previous attentional vector, only with input feeding


class RecurrentDecoder(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        emb_size: int,
        hidden_size: int,
        cell: str,
        layers: int,
        dropout: float,
        attention: Attention | None,
        encoder_size: int,
        input_feeding: bool,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        if input_feeding and attention is None:
            raise ValueError("input feeding needs attention")
        self.hidden_size = hidden_size
        self.input_feeding = input_feeding
        self.embedding = nn.Embedding(vocab_size, emb_size, padding_idx=pad_id)
        self.dropout = nn.Dropout(dropout)
        self.rnn = RNN_CLASSES[cell](
            emb_size + (hidden_size if input_feeding else 0),
            hidden_size,
            num_layers=layers,
            batch_first=True,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.attention = attention
        # Registered only with attention, so the plain seq2seq has no attention parameters.
        self.att_vector = (
            nn.Linear(hidden_size + encoder_size, hidden_size) if attention is not None else None
        )
        self.output_layer = nn.Linear(hidden_size, vocab_size)

    def _attentional(self, rnn_out: Tensor, memory: Memory) -> tuple[Tensor, Tensor | None]:
        """rnn_out (B, T, H) -> attentional vectors h~ (B, T, H), probs (B, T, S) or None."""
        if self.attention is None or self.att_vector is None:
            return rnn_out, None
        context, probs = self.attention(rnn_out, memory.proj_keys, memory.outputs, memory.mask)
        vector = torch.tanh(self.att_vector(torch.cat([rnn_out, context], dim=-1)))
        return vector, probs  # (B, T, H), (B, T, S)

    def fused_states(
        self, tgt_in: Tensor, hidden: RNNState, memory: Memory
    ) -> tuple[Tensor, Tensor | None]:
        """Teacher-forced, no input feeding: tgt_in (B, T) -> h~ (B, T, H), probs (B, T, S)."""
        emb = self.dropout(self.embedding(tgt_in))  # (B, T, E)
        rnn_out, _ = self.rnn(emb, hidden)  # (B, T, H): one fused call over all steps
        return self._attentional(rnn_out, memory)

    def logits(self, vectors: Tensor) -> Tensor:
        """Attentional vectors (..., H) -> logits (..., V)."""
        return self.output_layer(self.dropout(vectors))

    def step(
        self, prev_tokens: Tensor, state: DecoderState, memory: Memory
    ) -> tuple[Tensor, DecoderState, Tensor | None]:
        """One step: prev_tokens (B,) -> logits (B, V), next state, probs (B, S) or None."""
        emb = self.dropout(self.embedding(prev_tokens)).unsqueeze(1)  # (B, 1, E)
        if self.input_feeding:
            emb = torch.cat([emb, state.att_vector.unsqueeze(1)], dim=-1)  # (B, 1, E + H)
        rnn_out, hidden = self.rnn(emb, state.hidden)  # (B, 1, H)
        vector, probs = self._attentional(rnn_out, memory)  # (B, 1, H), (B, 1, S)
        logits = self.logits(vector).squeeze(1)  # (B, V)
        att_vector = vector.squeeze(1) if self.input_feeding else None
        return logits, DecoderState(hidden, att_vector), None if probs is None else probs[:, 0]

    def initial_att_vector(self, batch: int, like: Tensor) -> Tensor | None:
        if not self.input_feeding:
            return None
        return like.new_zeros(batch, self.hidden_size)  # (B, H): h~_0 = 0


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(x_i W^T + b, y_i), computed chunk by chunk with the gradients on the way.

    The plain route materialises four (N, V) tensors (logits, log-probs and both their
    gradients; 77 MB each for 2,400 tokens and an 8k vocabulary), which on CPU costs as much
    in memory traffic and page faults as the output matmuls themselves. Here only one
    (chunk, V) block lives at a time: softmax - onehot is the logits' gradient, turned at
    once into the gradients of x, W and b, which backward only rescales. The matmuls run
    in ``dtype`` (bf16 under autocast), the softmax and all sums in fp32.
    """

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
