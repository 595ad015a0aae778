"""The output length limit that greedy decoding and beam search share: written once, so
the two strategies stop a sentence at the same length and beam size 1 equals greedy."""

from __future__ import annotations

from collections.abc import Sequence


def output_limits(
    sources: Sequence[Sequence[int]], max_len_ratio: float, max_len_extra: int
) -> list[int]:
    """Per source: at most ``int(max_len_ratio * len(src) + max_len_extra)`` output tokens
    (``decode.max_len_ratio``, ``decode.max_len_extra``), and at least one, so that even an
    empty source gets a step in which it may say ``</s>``."""
    return [max(1, int(max_len_ratio * len(src) + max_len_extra)) for src in sources]
