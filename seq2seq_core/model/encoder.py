"""Recurrent encoder: embedding -> (bi)LSTM/GRU over packed sequences (like Joey NMT's
RecurrentEncoder).

A bidirectional encoder uses ``hidden_size // 2`` units per direction, so its outputs and
its final state (forward and backward concatenated per layer) have exactly the decoder's
``hidden_size`` and can start the decoder with no bridge layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seq2seq_core.kernels import REFERENCE, Kernels
from seq2seq_core.kernels.packed_rnn import packed_rnn

# An RNN state: GRU carries h, LSTM carries (h, c); each (layers, B, H).
RNNState = Tensor | tuple[Tensor, Tensor]

RNN_CLASSES: dict[str, type[nn.RNNBase]] = {"gru": nn.GRU, "lstm": nn.LSTM}


@dataclass(frozen=True)
class RNNSpec:
    """What the encoder and the decoder of one model share: the cell, the embedding and
    hidden sizes, the depth, dropout and the padding id (`build_model` makes it once)."""

    cell: str
    emb_size: int
    hidden_size: int
    layers: int
    dropout: float
    pad_id: int = 0

    def __post_init__(self) -> None:
        if self.cell not in RNN_CLASSES:
            raise ValueError(f"cell must be one of {', '.join(RNN_CLASSES)}, got {self.cell!r}")

    def embedding(self, vocab_size: int) -> nn.Embedding:
        return nn.Embedding(vocab_size, self.emb_size, padding_idx=self.pad_id)

    def rnn(self, input_size: int, hidden_size: int, bidirectional: bool = False) -> nn.RNNBase:
        return RNN_CLASSES[self.cell](
            input_size,
            hidden_size,
            num_layers=self.layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=self.dropout if self.layers > 1 else 0.0,  # torch: between layers only
        )


class RecurrentEncoder(nn.Module):
    def __init__(self, vocab_size: int, spec: RNNSpec, bidirectional: bool) -> None:
        super().__init__()
        if bidirectional and spec.hidden_size % 2:
            raise ValueError("a bidirectional encoder needs an even hidden_size")
        self.hidden_size = spec.hidden_size
        self.layers = spec.layers
        self.bidirectional = bidirectional
        self.embedding = spec.embedding(vocab_size)
        self.dropout = nn.Dropout(spec.dropout)
        per_direction = spec.hidden_size // 2 if bidirectional else spec.hidden_size
        self.rnn = spec.rnn(spec.emb_size, per_direction, bidirectional)

    def forward(
        self, src: Tensor, src_len: Tensor, kernels: Kernels = REFERENCE
    ) -> tuple[Tensor, RNNState]:
        """src (B, S) ids, src_len (B,) int64 on CPU (every length >= 1).

        Returns outputs (B, S, H), zero at padded positions, and the final state
        (layers, B, H) (a (h, c) pair for LSTM), in the batch's original order.
        """
        emb = self.dropout(self.embedding(src))  # (B, S, E)
        packed = pack_padded_sequence(emb, src_len.cpu(), batch_first=True, enforce_sorted=False)
        if kernels.packed_rnn:  # the same results as self.rnn's, faster on CPU
            packed_out, final = packed_rnn(self.rnn, packed)
        else:
            packed_out, final = kernels.rnn(self.rnn, packed)
        # total_length keeps S even when the longest sentence is shorter than the padding.
        outputs, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=src.size(1))
        if self.bidirectional:
            if isinstance(final, tuple):
                final = (self._join_directions(final[0]), self._join_directions(final[1]))
            else:
                final = self._join_directions(final)
        return outputs, final  # (B, S, H), (layers, B, H)

    def _join_directions(self, state: Tensor) -> Tensor:
        # torch orders h_n as (layer0 fwd, layer0 bwd, layer1 fwd, ...): (layers * 2, B, H/2)
        _, batch, half = state.shape
        state = state.view(self.layers, 2, batch, half)
        return state.permute(0, 2, 1, 3).reshape(self.layers, batch, 2 * half)  # (layers, B, H)
