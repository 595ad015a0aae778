"""The encoder-decoder and ``build_model``, the one place a ``ModelConfig`` becomes modules.

``attention: none`` with ``context: last`` is the plain seq2seq of Sutskever et al. (2014):
the encoder's final state (h, and c for LSTM) is the decoder's initial state, directly.
``context: mean`` starts every decoder layer from the encoder outputs mean-pooled over the
real (unpadded) source length instead (LSTM c0 = 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seq2seq_core.config import ModelConfig
from seq2seq_core.kernels import REFERENCE, Kernels, select
from seq2seq_core.kernels.linear_cross_entropy import linear_cross_entropy
from seq2seq_core.kernels.packed_weights import PackedWeights
from seq2seq_core.model.attention import Attention, BahdanauAttention, LuongAttention
from seq2seq_core.model.decoder import DecoderState, Memory, RecurrentDecoder
from seq2seq_core.model.encoder import RecurrentEncoder, RNNSpec, RNNState
from seq2seq_core.special_tokens import PAD_ID


class Seq2Seq(nn.Module):
    def __init__(self, encoder: RecurrentEncoder, decoder: RecurrentDecoder, context: str) -> None:
        super().__init__()
        if context not in ("last", "mean"):
            raise ValueError(f"context must be 'last' or 'mean', got {context!r}")
        self.encoder = encoder
        self.decoder = decoder
        self.context = context
        # train.compile: the input-feeding loop's step through torch.compile in training (a
        # choice of the run, not of the model: no checkpoint carries it).
        self.compile_training = False

    def forward(
        self,
        src: Tensor,
        src_len: Tensor,
        tgt_in: Tensor,
        tgt_out: Tensor,
        teacher_forcing: float = 1.0,
        label_smoothing: float = 0.0,
        real: Tensor | None = None,
    ) -> Tensor:
        """The training objective: cross-entropy summed over the real (non-pad) tokens of
        tgt_out (B, T), against targets smoothed towards uniform by ``label_smoothing``
        (Szegedy et al. 2016); an fp32 scalar. src (B, S), src_len (B,) on CPU,
        tgt_in (B, T) = BOS + y. It is ``forward`` so that DistributedDataParallel, which
        hooks ``forward``, sees the training computation.

        Equal to ``F.cross_entropy(self.logits(src, src_len, tgt_in, teacher_forcing),
        tgt_out, ignore_index=PAD_ID, reduction="sum")``; with teacher forcing 1.0 the output
        layer runs once, on real tokens only, and never materialises the (B, T, V) logits.
        ``real`` (N,), on the model's device: the positions of those tokens in
        ``tgt_out.reshape(-1)``, counted on the host (``Batch.real``); without it the mask
        ``tgt_out != PAD_ID`` picks them, which makes the host wait for the device to count.
        """
        kernels = self.select_kernels()
        memory, state = self.encode(src, src_len, kernels)
        if teacher_forcing < 1.0:
            logits = self.forward_stepwise(tgt_in, state, memory, teacher_forcing, kernels)
            return F.cross_entropy(
                logits.reshape(-1, logits.size(-1)),
                tgt_out.reshape(-1),
                ignore_index=PAD_ID,
                reduction="sum",
                label_smoothing=label_smoothing,
            )
        vectors = self.decoder.teacher_forced(tgt_in, state, memory, kernels)  # (B, T, H)
        if real is None:
            mask = tgt_out != PAD_ID  # (B, T)
            vectors, gold = vectors[mask], tgt_out[mask]  # (N, H), (N,): N real tokens
        else:  # the same rows, in the same order, at a size known without the device
            vectors = vectors.reshape(-1, vectors.size(-1)).index_select(0, real)  # (N, H)
            gold = tgt_out.reshape(-1).index_select(0, real)  # (N,)
        x = self.decoder.dropout(vectors)
        return linear_cross_entropy(
            x, self.decoder.output_layer, gold, label_smoothing=label_smoothing
        )

    def logits(
        self, src: Tensor, src_len: Tensor, tgt_in: Tensor, teacher_forcing: float = 1.0
    ) -> Tensor:
        """src (B, S), src_len (B,) on CPU, tgt_in (B, T) = BOS + y -> logits (B, T, V).

        With teacher_forcing < 1, one coin per step (torch's global RNG, shared by the whole
        batch, as in the seed) decides whether the next input is the gold token or the
        model's own argmax.
        """
        kernels = self.select_kernels()
        memory, state = self.encode(src, src_len, kernels)
        if teacher_forcing >= 1.0:
            vectors = self.decoder.teacher_forced(tgt_in, state, memory, kernels)  # (B, T, H)
            return self.decoder.logits(vectors, kernels)
        return self.forward_stepwise(tgt_in, state, memory, teacher_forcing, kernels)

    def select_kernels(self, int8: bool = False, kept: PackedWeights | None = None) -> Kernels:
        """The fast paths for one call on this model (``kernels.select``), under the autocast
        and inference mode in force now: a decoding call makes it once, inside them.
        ``int8``: the decoder's linears and cells from int8 weights (int8 decoding).
        ``kept``: packed weights kept across calls, for weights that never change."""
        weight = self.encoder.embedding.weight
        return select(weight.device, weight.dtype, int8, kept, self.compile_training)

    def encode(
        self, src: Tensor, src_len: Tensor, kernels: Kernels = REFERENCE
    ) -> tuple[Memory, DecoderState]:
        """src (B, S), src_len (B,) -> attention memory and the decoder's initial state."""
        outputs, final = self.encoder(src, src_len, kernels)  # (B, S, H), (layers, B, H)
        lengths = src_len.to(src.device)
        mask = torch.arange(src.size(1), device=src.device) < lengths.unsqueeze(1)  # (B, S)
        attention = self.decoder.attention
        proj_keys = attention.project_keys(outputs) if attention is not None else None
        memory = Memory(outputs, proj_keys, mask, lengths)
        hidden = self._initial_hidden(outputs, final, lengths)
        return memory, DecoderState(hidden, self.decoder.initial_att_vector(src.size(0), outputs))

    def _initial_hidden(self, outputs: Tensor, final: RNNState, lengths: Tensor) -> RNNState:
        if self.context == "last":
            return final
        # Padded outputs are zero, so the sum over S is the sum over the real tokens.
        mean = outputs.sum(dim=1) / lengths.unsqueeze(1).to(outputs.dtype)  # (B, H)
        layers = self.decoder.rnn.num_layers
        h0 = mean.unsqueeze(0).expand(layers, -1, -1).contiguous()  # (layers, B, H)
        return (h0, torch.zeros_like(h0)) if isinstance(final, tuple) else h0

    def decode_step(
        self, prev_tokens: Tensor, state: DecoderState, memory: Memory, kernels: Kernels = REFERENCE
    ) -> tuple[Tensor, DecoderState, Tensor | None]:
        """prev_tokens (B,) -> logits (B, V), next state, attention probs (B, S) or None."""
        return self.decoder.step(prev_tokens, state, memory, kernels)

    def forward_stepwise(
        self,
        tgt_in: Tensor,
        state: DecoderState,
        memory: Memory,
        teacher_forcing: float,
        kernels: Kernels = REFERENCE,
    ) -> Tensor:
        """One ``decode_step`` per target position, each input the gold token or (with
        probability 1 - teacher_forcing) the previous argmax: tgt_in (B, T) -> (B, T, V)."""
        steps = []
        tokens = tgt_in[:, 0]  # (B,) BOS
        for t in range(tgt_in.size(1)):
            logits, state, _ = self.decoder.step(tokens, state, memory, kernels)  # (B, V)
            steps.append(logits)
            if t + 1 < tgt_in.size(1):
                gold = teacher_forcing >= 1.0 or bool(torch.rand(()) < teacher_forcing)
                tokens = tgt_in[:, t + 1] if gold else logits.argmax(dim=-1)
        return torch.stack(steps, dim=1)  # (B, T, V)


def build_model(cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int) -> Seq2Seq:
    spec = RNNSpec(cfg.cell, cfg.emb_size, cfg.hidden_size, cfg.layers, cfg.dropout, PAD_ID)
    encoder = RecurrentEncoder(src_vocab_size, spec, bidirectional=cfg.bidirectional)
    attention: Attention | None = None
    if cfg.attention == "bahdanau":
        attention = BahdanauAttention(cfg.hidden_size, cfg.hidden_size, cfg.hidden_size)
    elif cfg.attention == "luong":
        attention = LuongAttention(cfg.hidden_size, cfg.hidden_size, cfg.luong_score)
    elif cfg.attention != "none":
        raise ValueError(f"model.attention: {cfg.attention!r} is not one of none, bahdanau, luong")
    decoder = RecurrentDecoder(
        tgt_vocab_size,
        spec,
        attention=attention,
        encoder_size=cfg.hidden_size,
        input_feeding=cfg.input_feeding,
    )
    _tie_embeddings(cfg, encoder, decoder, src_vocab_size, tgt_vocab_size)
    return Seq2Seq(encoder, decoder, context=cfg.context)


def _tie_embeddings(
    cfg: ModelConfig,
    encoder: RecurrentEncoder,
    decoder: RecurrentDecoder,
    src_vocab_size: int,
    tgt_vocab_size: int,
) -> None:
    """Share weights (Press & Wolf 2017): the decoder's input embedding is its output
    projection; with `all`, also the encoder's embedding (one joint vocabulary)."""
    if cfg.tie_embeddings == "none":
        return
    if cfg.emb_size != cfg.hidden_size:
        raise ValueError(
            f"model.tie_embeddings: {cfg.tie_embeddings} needs model.emb_size == "
            f"model.hidden_size (the output layer's input), got {cfg.emb_size} and "
            f"{cfg.hidden_size}"
        )
    decoder.output_layer.weight = decoder.embedding.weight
    if cfg.tie_embeddings == "all":
        if src_vocab_size != tgt_vocab_size:
            raise ValueError(
                "model.tie_embeddings: all needs a joint vocabulary (vocab.joint: true), got "
                f"source {src_vocab_size} and target {tgt_vocab_size} types"
            )
        encoder.embedding.weight = decoder.embedding.weight
