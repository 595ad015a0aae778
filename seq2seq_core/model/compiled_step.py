"""``RecurrentDecoder.step`` as one C++ call per step (``kernels/decode_step.cpp``).

The C++ step calls the same ATen ops as the eager step, in the same order, on the same
packed weights of the decoding call, so logits, states and hence tokens are bitwise the
eager ones, in fp32, under bf16 autocast and with int8 weights alike. What it saves is the
Python around the ops: the per-call argument parsing, the NamedTuples and the ``Kernels``
indirection of some fifty small ops a step, which at batch 1 cost as much as the ops.

``compile_step`` binds a decoder to one decoding call's ``Kernels`` (call it inside the
call's autocast and inference mode, after ``select_kernels``): the packings it reads are
those of the call's precision. It returns None where the eager step must run: no packed
weights (training, CUDA, a CPU without oneDNN), or no extension (no compiler, a failed
build: ``kernels.step_extension`` logs why, once).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from seq2seq_core.kernels import Kernels, step_extension
from seq2seq_core.kernels.additive_scores import ENERGY_CHUNK
from seq2seq_core.kernels.packed_weights import PackedWeights
from seq2seq_core.model.attention import BahdanauAttention, LuongAttention
from seq2seq_core.model.decoder import DecoderState, Memory, RecurrentDecoder
from seq2seq_core.special_tokens import BOS_ID, EOS_ID


class CompiledStep:
    """A drop-in for ``Seq2Seq.decode_step`` bound to one call's kernels, plus the whole
    greedy loop of a batch in one call."""

    def __init__(self, native: Any, lstm: bool) -> None:
        self._native = native  # the extension's DecodeStep
        self._lstm = lstm

    def __call__(
        self, tokens: Tensor, state: DecoderState, memory: Memory
    ) -> tuple[Tensor, DecoderState, Tensor | None]:
        """tokens (B,) -> logits (B, V), next state, attention probs (B, S) or None."""
        h, c = state.hidden if self._lstm else (state.hidden, None)
        logits, h, c, att, probs = self._native.step(
            tokens, h, c, state.att_vector, memory.outputs, memory.proj_keys, memory.mask
        )
        return logits, DecoderState((h, c) if self._lstm else h, att), probs

    def greedy(
        self,
        state: DecoderState,
        memory: Memory,
        limits: Tensor,
        first_limit: int,
        max_limit: int,
        drop_finished_at: int,
    ) -> tuple[Tensor, Tensor | None]:
        """Argmax decoding of a batch from its initial state until every row emitted
        ``</s>`` or reached its limit (limits (B,) int64): tokens (B, T_out), probs
        (B, T_out, S) or None; rows past their end hold what eager's hold
        (``greedy._eager_steps``: finished rows are dropped once they are 1/drop_finished_at
        of the rows still computed)."""
        h, c = state.hidden if self._lstm else (state.hidden, None)
        return self._native.greedy(
            h, c, state.att_vector, memory.outputs, memory.proj_keys, memory.mask,
            limits, first_limit, max_limit, BOS_ID, EOS_ID, drop_finished_at,
        )  # fmt: skip


def compile_step(decoder: RecurrentDecoder, kernels: Kernels) -> CompiledStep | None:
    """The compiled step of ``decoder`` for this call's kernels, or None (eager)."""
    weights = kernels.weights
    if weights is None or kernels.rnn_dtype is not None or not kernels.chunked_scores:
        return None
    known_attention = decoder.attention is None or isinstance(
        decoder.attention, BahdanauAttention | LuongAttention
    )
    if decoder.training or not known_attention:
        return None
    native = step_extension.load()
    if native is None:
        return None

    def linear(layer_weight: Tensor, bias: Tensor | None) -> Any:
        return _native_linear(native, weights, layer_weight, bias)

    rnn = decoder.rnn
    layers = range(rnn.num_layers)
    ih = [linear(getattr(rnn, f"weight_ih_l{i}"), getattr(rnn, f"bias_ih_l{i}")) for i in layers]
    hh = [linear(getattr(rnn, f"weight_hh_l{i}"), getattr(rnn, f"bias_hh_l{i}")) for i in layers]
    attention, query, energy, combine = "none", None, None, None
    if isinstance(decoder.attention, BahdanauAttention):
        attention = "bahdanau"
        query = linear(decoder.attention.query_layer.weight, None)
        energy = decoder.attention.energy_layer.weight
    elif isinstance(decoder.attention, LuongAttention):
        attention = "luong"
    if decoder.att_vector is not None:
        combine = linear(decoder.att_vector.weight, decoder.att_vector.bias)
    output = linear(decoder.output_layer.weight, decoder.output_layer.bias)
    lstm = isinstance(rnn, nn.LSTM)
    step = native.DecodeStep(
        decoder.embedding.weight, lstm, decoder.input_feeding, attention,
        ih, hh, query, energy, combine, output, ENERGY_CHUNK,
    )  # fmt: skip
    return CompiledStep(step, lstm)


def _native_linear(native: Any, weights: PackedWeights, weight: Tensor, bias: Tensor | None) -> Any:
    """The extension's Linear for one layer, as ``PackedWeights.linear`` would run it."""
    if not weights.is_packable(weight, bias):
        return native.Linear("plain", weight, bias, None, None)
    if weights.int8:
        packing = weights.int8_packing(weight, bias)
        return native.Linear("int8", None, None, packing.small, packing.large)
    packed, packed_bias = weights.packing(weight, bias)
    return native.Linear("packed", packed, packed_bias, None, None)
