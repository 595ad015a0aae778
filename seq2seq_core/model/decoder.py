"""Luong-style recurrent decoder (like Joey NMT's RecurrentDecoder with attention after the RNN).

Per step t: s_t = RNN([y_{t-1}; h~_{t-1} if input feeding], s_{t-1}); with attention
c_t = attend(query=s_t, keys=encoder outputs) and h~_t = tanh(W [s_t; c_t]); logits = W_o h~_t.
Without attention h~_t = s_t and the decoder has no attention parameters at all.

Because the query is the RNN's own output, nothing in the RNN depends on attention unless
input feeding is on: teacher-forced training then runs the RNN as one call over the whole
target and attends for all T steps in one batched call (``teacher_forced``).

Every method takes the call's ``Kernels`` (``seq2seq_core.kernels.select``): when decoding
on CPU its linears and cells read weights packed once per call.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seq2seq_core.kernels import REFERENCE, TRACEABLE, Kernels
from seq2seq_core.kernels.compiled import compiled
from seq2seq_core.model.attention import Attention
from seq2seq_core.model.encoder import RNNSpec, RNNState


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


def select_state(state: DecoderState, index: Tensor) -> DecoderState:
    """The decoder rows ``index`` (int64) of ``state``: beam search's reordering of
    hypotheses, and the dropping of finished rows in beam and greedy search."""
    hidden = state.hidden
    if isinstance(hidden, tuple):
        hidden = tuple(h.index_select(1, index) for h in hidden)
    else:
        hidden = hidden.index_select(1, index)
    att = state.att_vector.index_select(0, index) if state.att_vector is not None else None
    return DecoderState(hidden, att)


def select_memory(memory: Memory, index: Tensor) -> Memory:
    """The source rows ``index`` (int64) of ``memory``."""
    keys = memory.proj_keys.index_select(0, index) if memory.proj_keys is not None else None
    return Memory(
        memory.outputs.index_select(0, index),
        keys,
        memory.mask.index_select(0, index),
        memory.src_len.index_select(0, index),
    )


class RecurrentDecoder(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        spec: RNNSpec,
        attention: Attention | None,
        encoder_size: int,
        input_feeding: bool,
    ) -> None:
        super().__init__()
        if input_feeding and attention is None:
            raise ValueError("input feeding needs attention")
        hidden_size = spec.hidden_size
        self.hidden_size = hidden_size
        self.input_feeding = input_feeding
        self.embedding = spec.embedding(vocab_size)
        self.dropout = nn.Dropout(spec.dropout)
        self.rnn = spec.rnn(spec.emb_size + (hidden_size if input_feeding else 0), hidden_size)
        self.attention = attention
        # Registered only with attention, so the plain seq2seq has no attention parameters.
        self.att_vector = (
            nn.Linear(hidden_size + encoder_size, hidden_size) if attention is not None else None
        )
        self.output_layer = nn.Linear(hidden_size, vocab_size)

    def initial_att_vector(self, batch: int, like: Tensor) -> Tensor | None:
        if not self.input_feeding:
            return None
        return like.new_zeros(batch, self.hidden_size)  # (B, H): h~_0 = 0

    def step(
        self, prev_tokens: Tensor, state: DecoderState, memory: Memory, kernels: Kernels = REFERENCE
    ) -> tuple[Tensor, DecoderState, Tensor | None]:
        """One step: prev_tokens (B,) -> logits (B, V), next state, probs (B, S) or None."""
        rnn_in = self._dropout(self.embedding(prev_tokens))  # (B, E)
        if self.input_feeding:
            att_vector = state.att_vector
            if kernels.rnn_dtype is not None:  # one dtype, not a cat promoted to fp32
                rnn_in, att_vector = rnn_in.to(kernels.rnn_dtype), att_vector.to(kernels.rnn_dtype)
            rnn_in = torch.cat([rnn_in, att_vector], dim=-1)  # (B, E + H)
        hidden = self._rnn_step(rnn_in, state.hidden, kernels)
        vector, probs = self._attentional(_top(hidden).unsqueeze(1), memory, kernels)  # (B, 1, H)
        logits = self.logits(vector.squeeze(1), kernels)  # (B, V)
        att_vector = vector.squeeze(1) if self.input_feeding else None
        return logits, DecoderState(hidden, att_vector), None if probs is None else probs[:, 0]

    def teacher_forced(
        self, tgt_in: Tensor, state: DecoderState, memory: Memory, kernels: Kernels = REFERENCE
    ) -> Tensor:
        """Gold inputs at every step: tgt_in (B, T) -> attentional vectors h~ (B, T, H).

        Without input feeding the RNN runs as one call over the whole target and attention
        is batched over all T steps. With it, the step loop stays, but the embeddings' share
        of the first layer's gates is one matmul for all T. The output layer is left to the
        caller (the loss runs it once on real tokens only, not on T x B rows).
        """
        emb = self.dropout(self.embedding(tgt_in))  # (B, T, E)
        if not self.input_feeding:
            rnn_out, _ = kernels.rnn(self.rnn, emb, state.hidden)  # (B, T, H)
            return self._attentional(rnn_out, memory, kernels)[0]
        w_emb, w_feed = self.rnn.weight_ih_l0.split([emb.size(-1), self.hidden_size], dim=1)
        emb_gates = F.linear(emb, w_emb, self.rnn.bias_ih_l0)  # (B, T, G), G = gates x H
        w_feed = w_feed.contiguous()  # (G, H): once, not a strided copy in every step's matmul
        hidden, att_vector = state.hidden, state.att_vector
        step = functools.partial(_feed_step, self, kernels=kernels)
        if kernels.compiled_loop:  # train.compile: one compiled function, plain torch ops
            step = functools.partial(_compiled_feed_step(), self)
        vectors = []
        for t in range(tgt_in.size(1)):
            hidden, att_vector = step(att_vector, hidden, emb_gates[:, t], w_feed, memory)
            vectors.append(att_vector)  # (B, H)
        return torch.stack(vectors, dim=1)  # (B, T, H)

    def logits(self, vectors: Tensor, kernels: Kernels = REFERENCE) -> Tensor:
        """Attentional vectors (..., H) -> logits (..., V)."""
        return kernels.linear(self._dropout(vectors), self.output_layer)

    def _dropout(self, x: Tensor) -> Tensor:
        """``self.dropout(x)``; in eval mode ``x`` itself without the module call, which
        costs more than the rest of a decoding step's bookkeeping at batch 1."""
        return self.dropout(x) if self.training else x

    def _attentional(
        self, rnn_out: Tensor, memory: Memory, kernels: Kernels
    ) -> tuple[Tensor, Tensor | None]:
        """rnn_out (B, T, H) -> attentional vectors h~ (B, T, H), probs (B, T, S) or None."""
        if self.attention is None or self.att_vector is None:
            return rnn_out, None
        rows, sentences = rnn_out.size(0), memory.outputs.size(0)
        query = rnn_out
        if rows != sentences:  # one step for `group` hypotheses per sentence
            if rnn_out.size(1) != 1 or rows % sentences:
                raise ValueError(f"{rows} decoder rows do not group over {sentences} sources")
            query = rnn_out.view(sentences, rows // sentences, -1)  # steps -> hypotheses
        context, probs = self.attention(
            query, memory.proj_keys, memory.outputs, memory.mask, kernels
        )
        context = context.view(rows, -1, context.size(-1))  # (B, T, K)
        probs = probs.view(rows, -1, probs.size(-1))  # (B, T, S)
        if kernels.rnn_dtype is not None:  # cuDNN's own dtype, not a cat promoted to fp32
            context = context.to(rnn_out.dtype)
        combined = torch.cat([rnn_out, context], dim=-1)  # (B, T, H + K)
        return torch.tanh(kernels.linear(combined, self.att_vector)), probs

    def _rnn_step(
        self,
        rnn_in: Tensor,
        hidden: RNNState,
        kernels: Kernels,
        first_layer: tuple[Tensor, Tensor] | None = None,
    ) -> RNNState:
        """One time step through all layers on ``self.rnn``'s own parameters, one cell call
        per layer: calling the nn.LSTM module for a single step costs a oneDNN weight
        reorder per call, more than the step's own work at small batches.

        With ``first_layer`` = (w_ih columns for ``rnn_in``, the (B, G) precomputed input
        gates: the embeddings' share plus bias_ih) ``rnn_in`` holds only the rest of the
        first layer's input. The (B, G) term goes to the cell as ``input_gates``, never as
        b_ih: torch's CUDA cells take 1-D biases only (``kernels.cells``).
        """
        rnn, is_lstm = self.rnn, isinstance(hidden, tuple)
        states_h, states_c = [], []
        for layer in range(rnn.num_layers):
            w_ih, b_ih = getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"bias_ih_l{layer}")
            input_gates = None
            if layer == 0 and first_layer is not None:
                w_ih, input_gates = first_layer
            w_hh, b_hh = getattr(rnn, f"weight_hh_l{layer}"), getattr(rnn, f"bias_hh_l{layer}")
            h = hidden[0][layer] if is_lstm else hidden[layer]  # (B, H)
            c = hidden[1][layer] if is_lstm else None
            h, c = kernels.cell(rnn_in, h, c, (w_ih, w_hh, b_ih, b_hh), input_gates)
            states_h.append(h)
            if c is not None:
                states_c.append(c)
            # nn.LSTM's inter-layer dropout, on every layer's output but the last.
            rnn_in = F.dropout(h, rnn.dropout, self.training) if layer + 1 < rnn.num_layers else h
        if is_lstm:
            return torch.stack(states_h), torch.stack(states_c)  # (layers, B, H) each
        return torch.stack(states_h)


def _feed_step(
    decoder: RecurrentDecoder,
    att_vector: Tensor,
    hidden: RNNState,
    emb_gates: Tensor,
    w_feed: Tensor,
    memory: Memory,
    kernels: Kernels = TRACEABLE,
) -> tuple[RNNState, Tensor]:
    """One teacher-forced input-feeding step: h~_{t-1} (B, H), the state, the embeddings'
    share of the first layer's gates (B, G) and the fed-back columns of W_ih (G, H) ->
    the next state and h~_t (B, H). A function of its arguments alone, so that
    torch.compile can take it whole (``_compiled_feed_step``)."""
    hidden = decoder._rnn_step(att_vector, hidden, kernels, (w_feed, emb_gates))
    vector, _ = decoder._attentional(_top(hidden).unsqueeze(1), memory, kernels)
    return hidden, vector.squeeze(1)


@functools.cache
def _compiled_feed_step():
    """``_feed_step`` on plain torch ops, compiled once per process (lazily: the first
    training step with ``train.compile`` pays for it)."""
    return compiled(_feed_step)
