"""DynamicBatcher with a plain function as the decoder: coalescing, limits, isolation."""

from __future__ import annotations

import threading
import time

import pytest

from seq2seq_core.decoding.request_batcher import DynamicBatcher, size_bucket


class Recorder:
    """Upper-cases sentences, remembers each batch, fails on sentences that say "boom"."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[str]] = []
        self.delay_s = delay_s

    def __call__(self, sentences: list[str]) -> list[str]:
        self.batches.append(list(sentences))
        time.sleep(self.delay_s)
        if any("boom" in s for s in sentences):
            raise ValueError("boom")
        return [s.upper() for s in sentences]


def _fire(batcher: DynamicBatcher, requests: list[list[str]]) -> list[object]:
    results: list[object] = [None] * len(requests)
    barrier = threading.Barrier(len(requests))

    def call(i: int) -> None:
        barrier.wait()
        try:
            results[i] = batcher.submit(requests[i])
        except Exception as exc:  # the test inspects it
            results[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


def test_concurrent_requests_share_a_batch_and_get_their_own_slice() -> None:
    decode = Recorder()
    batcher = DynamicBatcher(decode, max_sentences=64, max_wait_s=0.5)
    requests = [[f"s{i}a", f"s{i}b"] if i % 3 == 0 else [f"s{i}"] for i in range(10)]
    results = _fire(batcher, requests)
    batcher.close()
    assert results == [[s.upper() for s in r] for r in requests]
    assert len(decode.batches) < len(requests)
    summary = batcher.stats.summary()
    assert summary["requests"] == 10 and summary["sentences"] == 14
    assert summary["batches"] == len(decode.batches)


def test_batches_stop_at_max_sentences_and_never_split_a_request() -> None:
    decode = Recorder(delay_s=0.05)
    batcher = DynamicBatcher(decode, max_sentences=4, max_wait_s=0.3)
    requests = [["a", "b", "c"], ["d", "e"], ["f"], ["g", "h", "i", "j", "k", "l"]]
    results = _fire(batcher, requests)
    batcher.close()
    assert results == [[s.upper() for s in r] for r in requests]
    for batch in decode.batches:
        assert len(batch) <= 4 or len(batch) == 6  # the 6-sentence request goes alone
    assert sorted(map(len, decode.batches)).count(6) == 1


def test_a_failing_request_fails_alone() -> None:
    decode = Recorder()
    batcher = DynamicBatcher(decode, max_sentences=64, max_wait_s=0.3)
    results = _fire(batcher, [["x"], ["boom"], ["y"]])
    batcher.close()
    assert results[0] == ["X"] and results[2] == ["Y"]
    assert isinstance(results[1], ValueError)


def test_a_lone_request_waits_no_longer_than_max_wait() -> None:
    batcher = DynamicBatcher(Recorder(), max_sentences=64, max_wait_s=0.05)
    start = time.monotonic()
    assert batcher.submit(["a"]) == ["A"]
    assert time.monotonic() - start < 1.0
    assert batcher.submit([]) == []
    batcher.close()
    with pytest.raises(RuntimeError):
        batcher.submit(["late"])


def test_size_buckets_are_powers_of_two() -> None:
    assert [size_bucket(n) for n in (1, 2, 3, 4, 7, 8, 16, 64)] == [
        "1", "2-3", "2-3", "4-7", "4-7", "8-15", "16-31", "64-127",
    ]  # fmt: skip
