"""The output length limit that greedy decoding and beam search share: written once, so
the two strategies stop a sentence at the same length and beam size 1 equals greedy."""

from __future__ import annotations

from collections.abc import Sequence


def output_limits(
    sources: Sequence[Sequence[int]],
    max_len_ratio: float,
    max_len_extra: int,
    max_output_tokens: int | None = None,
) -> list[int]:
    """Per source: at most ``int(max_len_ratio * len(src) + max_len_extra)`` output tokens
    (``decode.max_len_ratio``, ``decode.max_len_extra``), no more than ``max_output_tokens``
    when given (a served request's ``max_length``), and at least one, so that even an
    empty source gets a step in which it may say ``</s>``."""
    cap = max_output_tokens if max_output_tokens is not None else float("inf")
    return [max(1, int(min(cap, max_len_ratio * len(src) + max_len_extra))) for src in sources]


def longest_output(max_input_tokens: int, max_len_ratio: float, max_len_extra: int) -> int:
    """The most output tokens any accepted input can get: the limit of a source of
    ``decode.max_input_tokens`` tokens (the ceiling of a served request's ``max_length``)."""
    return output_limits([range(max_input_tokens)], max_len_ratio, max_len_extra)[0]
