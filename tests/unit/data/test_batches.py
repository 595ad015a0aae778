from __future__ import annotations

import pytest
import torch

from seq2seq_core.data.batches import (
    EncodedPairs,
    collate,
    encode_pairs,
    epoch_batches,
    fixed_batches,
    token_batches,
)
from seq2seq_core.special_tokens import BOS_ID, EOS_ID, PAD_ID
from tests.support import (
    PAIRS,
    CharTokenizer,
)


def _pairs(n: int, seed: int = 0) -> EncodedPairs:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, 30, (n, 2), generator=g).tolist()
    src = [list(range(4, 4 + s)) for s, _ in lens]
    tgt = [list(range(5, 5 + t)) for _, t in lens]
    return EncodedPairs(src, tgt, skipped_long=0, skipped_empty=0)


def test_collate_builds_shifted_padded_targets() -> None:
    batch = collate([[4, 5, 6], [7]], [[8, 9], [10, 11, 12]], [1, 0])
    assert batch.src.tolist() == [[7, PAD_ID, PAD_ID], [4, 5, 6]]
    assert batch.src_len.tolist() == [1, 3]
    assert batch.tgt_in.tolist() == [[BOS_ID, 10, 11, 12], [BOS_ID, 8, 9, PAD_ID]]
    assert batch.tgt_out.tolist() == [[10, 11, 12, EOS_ID], [8, 9, EOS_ID, PAD_ID]]
    assert batch.ntokens == 7
    assert batch.indices == [1, 0]


def test_encode_pairs_skips_and_counts_long_and_empty() -> None:
    pairs = [("ab", "cd"), ("abcdef", "a"), ("a", "abcdef"), ("", "a"), ("abc", "abc")]
    data = encode_pairs(CharTokenizer(), pairs, max_len=5)
    assert data.src == [[4, 5], [4, 5, 6]]
    assert (data.skipped_long, data.skipped_empty) == (2, 1)


def test_batches_respect_token_budget_and_cover_every_pair_once() -> None:
    data = _pairs(300)
    batches = token_batches(data, batch_tokens=120, generator=torch.Generator().manual_seed(1))
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(300))
    for b in batches:
        longest = max(max(len(data.src[i]), len(data.tgt[i]) + 1) for i in b)
        assert len(b) * longest <= 120 or len(b) == 1


def test_epoch_batches_depend_only_on_seed_and_epoch() -> None:
    data = _pairs(200)
    a = [b.indices for b in epoch_batches(data, 100, seed=3, epoch=1)]
    b = [b.indices for b in epoch_batches(data, 100, seed=3, epoch=1)]
    c = [b.indices for b in epoch_batches(data, 100, seed=3, epoch=2)]
    assert a == b
    assert a != c


def test_batches_group_similar_lengths() -> None:
    data = _pairs(400)
    batches = fixed_batches(data, 200)
    real = sum(b.ntokens for b in batches)
    padded = sum(b.tgt_out.numel() for b in batches)
    assert real / padded > 0.9  # length-sorted: almost no target padding


def test_background_feed_gives_the_same_batches_and_stops_cleanly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CUDA route (a collating thread, pinned memory), run on the CPU: the batches of
    the main-thread route, in order; an early close ends the thread; errors reach the
    caller."""
    from seq2seq_core.data import batches as batching
    from seq2seq_core.data.batches import encode_pairs, epoch_order, feed

    data = encode_pairs(CharTokenizer(), PAIRS * 4, 100)
    order = epoch_order(data, 40, seed=3, epoch=1)
    cpu = torch.device("cpu")
    plain = list(feed(data, order, cpu))
    monkeypatch.setattr(batching, "collates_in_background", lambda device: True)
    monkeypatch.setattr(batching.Batch, "pin_memory", lambda self: self)  # no CUDA here
    background = feed(data, order, cpu)
    assert isinstance(background, batching._BackgroundFeed)
    got = list(background)
    assert [b.indices for b in got] == [b.indices for b in plain]
    for a, b in zip(got, plain, strict=True):
        assert torch.equal(a.tgt_out, b.tgt_out) and torch.equal(a.real, b.real)
    early = feed(data, order, cpu)
    next(early)
    early.close()
    assert not early.thread.is_alive()
    broken = feed(data, [*order[:1], [10_000]], cpu)  # no such pair
    next(broken)
    with pytest.raises(IndexError):
        next(broken)


def test_real_positions_are_the_mask_of_real_tokens() -> None:
    from seq2seq_core.data.batches import collate, encode_pairs
    from seq2seq_core.special_tokens import PAD_ID

    data = encode_pairs(CharTokenizer(), PAIRS, 100)
    batch = collate(data.src, data.tgt, [0, 3, 5, 1])
    mask = (batch.tgt_out != PAD_ID).reshape(-1)
    assert torch.equal(batch.real, mask.nonzero().squeeze(1))
    assert batch.real.numel() == batch.ntokens
