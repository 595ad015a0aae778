"""Attention over encoder outputs, batched over any number of decoder steps.

Both classes split the work the same way (like Joey NMT's ``attention.py``): ``project_keys``
runs once per batch on the encoder outputs, ``forward`` scores T queries at once (T = 1 when
decoding step by step, T = the whole target in teacher-forced training). Padded source
positions get a score of -inf, so their weight is exactly 0 and the real positions' weights
sum to 1.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seq2seq_core.kernels import REFERENCE, Kernels


class Attention(nn.Module):
    """Scores T queries against every source position and averages the values by the
    softmax of the scores; a subclass says how a query and a key score."""

    def project_keys(self, keys: Tensor) -> Tensor:
        """Encoder outputs (B, S, K) -> what ``scores`` reads, once per batch."""
        raise NotImplementedError

    def scores(self, query: Tensor, proj_keys: Tensor, kernels: Kernels) -> Tensor:
        """query (B, T, Q), proj_keys (B, S, .) -> scores (B, T, S)."""
        raise NotImplementedError

    def forward(
        self,
        query: Tensor,
        proj_keys: Tensor,
        values: Tensor,
        mask: Tensor,
        kernels: Kernels = REFERENCE,
    ) -> tuple[Tensor, Tensor]:
        """query (B, T, Q), values (B, S, K), mask (B, S) True at real tokens ->
        context (B, T, K), probs (B, T, S)."""
        scores = self.scores(query, proj_keys, kernels)  # (B, T, S)
        scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        probs = torch.softmax(scores, dim=-1)  # (B, T, S)
        return torch.bmm(probs, values), probs  # (B, T, K), (B, T, S)


class BahdanauAttention(Attention):
    """Additive (MLP) score v^T tanh(W_q q + W_k k) (Bahdanau et al., 2015)."""

    def __init__(self, query_size: int, key_size: int, attention_size: int) -> None:
        super().__init__()
        self.key_layer = nn.Linear(key_size, attention_size, bias=False)
        self.query_layer = nn.Linear(query_size, attention_size, bias=False)
        self.energy_layer = nn.Linear(attention_size, 1, bias=False)

    def project_keys(self, keys: Tensor) -> Tensor:
        return self.key_layer(keys)  # (B, S, K) -> (B, S, A)

    def scores(self, query: Tensor, proj_keys: Tensor, kernels: Kernels) -> Tensor:
        q = kernels.linear(query, self.query_layer)  # (B, T, A)
        v = self.energy_layer.weight.squeeze(0)  # (A,)
        # Under autocast q and the keys come out of bf16 matmuls: v joins them.
        keys, v = proj_keys.to(q.dtype), v.to(q.dtype)
        return kernels.additive_scores(q, keys, v)  # (B, T, S): v . tanh(q + k) per query, key


class LuongAttention(Attention):
    """Multiplicative score (Luong et al., 2015, section 3.1): "general" q^T W k, or "dot"
    q^T k (no parameters; keys and queries must have the same size)."""

    def __init__(self, query_size: int, key_size: int, score: str = "general") -> None:
        super().__init__()
        if score not in ("general", "dot"):
            raise ValueError(f"Luong score must be 'general' or 'dot', got {score!r}")
        if score == "dot" and query_size != key_size:
            raise ValueError(f"dot score needs equal sizes, got query {query_size}, key {key_size}")
        self.score = score
        self.key_layer = nn.Linear(key_size, query_size, bias=False) if score == "general" else None

    def project_keys(self, keys: Tensor) -> Tensor:
        if self.key_layer is None:
            return keys  # dot: the keys as they are
        return self.key_layer(keys)  # (B, S, K) -> (B, S, Q): W k once per batch

    def scores(self, query: Tensor, proj_keys: Tensor, kernels: Kernels) -> Tensor:
        return torch.bmm(query, proj_keys.transpose(1, 2))  # (B, T, S)
