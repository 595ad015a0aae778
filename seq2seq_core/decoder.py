"""Luong-style recurrent decoder (like Joey NMT's RecurrentDecoder with attention after the RNN).

Per step t: s_t = RNN([y_{t-1}; h~_{t-1} if input feeding], s_{t-1}); with attention
c_t = attend(query=s_t, keys=encoder outputs) and h~_t = tanh(W [s_t; c_t]); logits = W_o h~_t.
Without attention h~_t = s_t and the decoder has no attention parameters at all.

Because the query is the RNN's own output, nothing in the RNN depends on attention unless
input feeding is on: teacher-forced training then runs the RNN as one fused call over the
whole target and attends for all T steps in one batched call (``teacher_forced_states``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seq2seq_core.attention import Attention
from seq2seq_core.encoder import RNN_CLASSES, RNNState
from seq2seq_core.inference_weights import WeightCache, inference_linear


class Memory(NamedTuple):
    """What the decoder attends to, computed once per batch.

    In a single decoding step one memory row may serve several consecutive decoder rows
    (beam search's hypotheses of one sentence): the keys and values are then read once per
    sentence, not once per hypothesis.
    """

    outputs: Tensor  # (B, S, K) encoder outputs, zero at padding
    proj_keys: Tensor | None  # (B, S, A) attention key projection, None without attention
    mask: Tensor  # (B, S) bool, True at real source tokens
    src_len: Tensor  # (B,) int64, on the model's device


class DecoderState(NamedTuple):
    hidden: RNNState  # (layers, B, H), an (h, c) pair for LSTM
    att_vector: Tensor | None  # (B, H) previous attentional vector, only with input feeding


def _top(hidden: RNNState) -> Tensor:
    """The last layer's h (B, H) of a (layers, B, H) state or (h, c) pair."""
    return (hidden[0] if isinstance(hidden, tuple) else hidden)[-1]


def _training_cell(
    x: Tensor, h: Tensor, c: Tensor | None, weights: tuple[Tensor, ...]
) -> tuple[Tensor, Tensor | None]:
    """One LSTM (with c) or GRU step through torch's cell kernels, which autograd knows."""
    if c is not None:
        return torch.lstm_cell(x, (h, c), *weights)
    return torch.gru_cell(x, h, *weights), None


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
        # Decoding-time weight copies (see inference_weights.py); not in the state dict.
        self._weights: WeightCache = {}

    def _attentional(self, rnn_out: Tensor, memory: Memory) -> tuple[Tensor, Tensor | None]:
        """rnn_out (B, T, H) -> attentional vectors h~ (B, T, H), probs (B, T, S) or None."""
        if self.attention is None or self.att_vector is None:
            return rnn_out, None
        rows, sentences = rnn_out.size(0), memory.outputs.size(0)
        query = rnn_out
        if rows != sentences:  # one step for `group` hypotheses per sentence
            if rnn_out.size(1) != 1 or rows % sentences:
                raise ValueError(f"{rows} decoder rows do not group over {sentences} sources")
            query = rnn_out.view(sentences, rows // sentences, -1)  # steps -> hypotheses
        context, probs = self.attention(query, memory.proj_keys, memory.outputs, memory.mask)
        context, probs = (
            context.view(rows, -1, context.size(-1)),
            probs.view(rows, -1, probs.size(-1)),
        )
        combined = torch.cat([rnn_out, context], dim=-1)  # (B, T, H + K)
        vector = torch.tanh(self._linear(self.att_vector, combined))
        return vector, probs  # (B, T, H), (B, T, S)

    def teacher_forced_states(
        self, tgt_in: Tensor, state: DecoderState, memory: Memory
    ) -> tuple[Tensor, Tensor | None]:
        """Gold inputs at every step: tgt_in (B, T) -> h~ (B, T, H), probs (B, T, S) or None.

        Without input feeding the RNN runs as one fused call over the whole target and
        attention is batched over all T steps. With it, the step loop stays, but the
        embeddings' share of the first layer's gates is one matmul for all T, and the
        output layer is left to the caller (one call on real tokens, not T small ones).
        """
        emb = self.dropout(self.embedding(tgt_in))  # (B, T, E)
        if not self.input_feeding:
            rnn_out, _ = self.rnn(emb, state.hidden)  # (B, T, H)
            return self._attentional(rnn_out, memory)
        w_emb, w_feed = self.rnn.weight_ih_l0.split([emb.size(-1), self.hidden_size], dim=1)
        emb_gates = F.linear(emb, w_emb, self.rnn.bias_ih_l0)  # (B, T, G), G = gates x H
        w_feed = w_feed.contiguous()  # (G, H): once, not a strided copy in every step's matmul
        hidden, att_vector = state.hidden, state.att_vector
        vectors = []
        for t in range(tgt_in.size(1)):
            hidden = self._rnn_step(att_vector, hidden, (w_feed, emb_gates[:, t]))
            vector, _ = self._attentional(_top(hidden).unsqueeze(1), memory)  # (B, 1, H)
            att_vector = vector.squeeze(1)
            vectors.append(att_vector)
        return torch.stack(vectors, dim=1), None  # (B, T, H)

    def logits(self, vectors: Tensor) -> Tensor:
        """Attentional vectors (..., H) -> logits (..., V)."""
        return self._linear(self.output_layer, self.dropout(vectors))

    def step(
        self, prev_tokens: Tensor, state: DecoderState, memory: Memory
    ) -> tuple[Tensor, DecoderState, Tensor | None]:
        """One step: prev_tokens (B,) -> logits (B, V), next state, probs (B, S) or None."""
        rnn_in = self.dropout(self.embedding(prev_tokens))  # (B, E)
        if self.input_feeding:
            rnn_in = torch.cat([rnn_in, state.att_vector], dim=-1)  # (B, E + H)
        hidden = self._rnn_step(rnn_in, state.hidden)
        vector, probs = self._attentional(_top(hidden).unsqueeze(1), memory)  # (B, 1, H)
        logits = self.logits(vector.squeeze(1))  # (B, V)
        att_vector = vector.squeeze(1) if self.input_feeding else None
        return logits, DecoderState(hidden, att_vector), None if probs is None else probs[:, 0]

    def _rnn_step(
        self, rnn_in: Tensor, hidden: RNNState, first_layer: tuple[Tensor, Tensor] | None = None
    ) -> RNNState:
        """One time step through all layers on ``self.rnn``'s own parameters, with torch's
        cell kernels in training and packed weights in inference: calling the nn.LSTM
        module for a single step costs a oneDNN weight reorder per call, ~2 ms at batch 1.

        With ``first_layer`` = (w_ih columns for ``rnn_in``, a (B, G) bias holding the
        embeddings' precomputed gate share plus bias_ih) ``rnn_in`` holds only the rest of
        the first layer's input.
        """
        rnn = self.rnn
        is_lstm = isinstance(hidden, tuple)
        cell = self._inference_cell if torch.is_inference_mode_enabled() else _training_cell
        states_h, states_c = [], []
        for layer in range(rnn.num_layers):
            w_ih = getattr(rnn, f"weight_ih_l{layer}")
            b_ih = getattr(rnn, f"bias_ih_l{layer}")
            if layer == 0 and first_layer is not None:
                w_ih, b_ih = first_layer
            w_hh, b_hh = getattr(rnn, f"weight_hh_l{layer}"), getattr(rnn, f"bias_hh_l{layer}")
            c = hidden[1][layer] if is_lstm else None
            h, c = cell(rnn_in, hidden[0][layer] if is_lstm else hidden[layer], c,
                        (w_ih, w_hh, b_ih, b_hh))  # fmt: skip
            states_h.append(h)
            if c is not None:
                states_c.append(c)
            # nn.LSTM's inter-layer dropout, on every layer's output but the last.
            rnn_in = F.dropout(h, rnn.dropout, self.training) if layer + 1 < rnn.num_layers else h
        if is_lstm:
            return torch.stack(states_h), torch.stack(states_c)  # (layers, B, H) each
        return torch.stack(states_h)

    def _inference_cell(
        self, x: Tensor, h: Tensor, c: Tensor | None, weights: tuple[Tensor, ...]
    ) -> tuple[Tensor, Tensor | None]:
        """The LSTM/GRU cell (torch's gate order and equations) over packed weights."""
        w_ih, w_hh, b_ih, b_hh = weights
        gi = inference_linear(x, w_ih, b_ih, self._weights)  # (B, G)
        gh = inference_linear(h, w_hh, b_hh, self._weights)  # (B, G)
        if c is not None:  # LSTM: gates i, f, g, o
            i, f, g, o = (gi + gh).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            return torch.sigmoid(o) * torch.tanh(c), c
        i_r, i_z, i_n = gi.chunk(3, dim=1)  # GRU: gates r, z, n
        h_r, h_z, h_n = gh.chunk(3, dim=1)
        r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return n + z * (h - n), None

    def _linear(self, layer: nn.Linear, x: Tensor) -> Tensor:
        return inference_linear(x, layer.weight, layer.bias, self._weights)

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
