"""DynamicBatcher with a plain function as the decoder: coalescing, chunking and turns,
deadlines and cancellation, isolation, a thread that survives its hook."""

from __future__ import annotations

import threading
import time

import pytest

from seq2seq_core.decoding.request_batcher import (
    BatcherUnavailableError,
    DeadlineExceededError,
    DynamicBatcher,
    RequestCancelledError,
    size_bucket,
)


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


def test_a_large_request_is_chunked_and_a_newcomer_waits_one_batch_at_most() -> None:
    """A 10-sentence request with batches of 4 goes in chunks of 4, 4, 2; a one-sentence
    request that arrives while the first chunk decodes is in the very next batch, ahead of
    the big request's second chunk."""
    decode = Recorder(delay_s=0.2)
    batcher = DynamicBatcher(decode, max_sentences=4, max_wait_s=0.0)
    big = [f"b{i}" for i in range(10)]
    results: dict[str, object] = {}
    first = threading.Thread(target=lambda: results.update(big=batcher.submit(big)))
    first.start()
    time.sleep(0.05)  # the first chunk is decoding now
    assert batcher.submit(["new"]) == ["NEW"]
    first.join(timeout=10)
    batcher.close()
    assert results["big"] == [s.upper() for s in big]
    assert decode.batches == [big[:4], ["new", *big[4:7]], big[7:]]


def test_requests_take_turns_round_robin() -> None:
    """Two large requests in flight share each batch's room in turns, one chunk each."""
    decode = Recorder(delay_s=0.05)
    batcher = DynamicBatcher(decode, max_sentences=4, max_wait_s=0.2)
    a = [f"a{i}" for i in range(8)]
    b = [f"b{i}" for i in range(8)]
    results = _fire(batcher, [a, b])
    batcher.close()
    assert sorted(map(str, results)) == sorted(map(str, [[s.upper() for s in a],
                                                        [s.upper() for s in b]]))  # fmt: skip
    owners = ["".join(sorted({s[0] for s in batch})) for batch in decode.batches]
    assert len(decode.batches) == 4 and set(owners) == {"a", "b"}
    assert owners[0] != owners[1] and owners[1] != owners[2]  # turns, not one then the other


def test_a_request_past_its_deadline_is_dropped_between_chunks() -> None:
    decode = Recorder(delay_s=0.3)
    batcher = DynamicBatcher(decode, max_sentences=2, max_wait_s=0.0)
    start = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        batcher.submit([f"s{i}" for i in range(20)], deadline=time.monotonic() + 0.4)
    assert time.monotonic() - start < 0.6  # the caller is told at its deadline
    time.sleep(0.7)  # what was decoding finishes; nothing more of the request is taken
    assert len(decode.batches) <= 2
    assert batcher.submit(["after"]) == ["AFTER"]
    batcher.close()
    assert batcher.stats.summary()["dropped_requests"] == 1


def test_a_cancelled_request_is_never_decoded() -> None:
    """A request whose client has gone before its turn is dropped without decoding."""
    decode = Recorder(delay_s=0.3)
    batcher = DynamicBatcher(decode, max_sentences=1, max_wait_s=0.0)
    blocker = threading.Thread(target=batcher.submit, args=(["first"],))
    blocker.start()
    time.sleep(0.05)
    gone = threading.Event()
    gone.set()
    with pytest.raises(RequestCancelledError):
        batcher.submit(["never"], cancelled=gone)
    blocker.join(timeout=10)
    assert batcher.submit(["next"]) == ["NEXT"]
    batcher.close()
    assert ["never"] not in decode.batches


def test_the_decode_thread_survives_a_failing_hook() -> None:
    calls: list[int] = []

    def hook(stats) -> None:
        calls.append(stats.batches)
        raise RuntimeError("log sink is down")

    batcher = DynamicBatcher(Recorder(), max_sentences=8, max_wait_s=0.0, on_batch=hook)
    assert batcher.submit(["a"]) == ["A"]
    assert batcher.submit(["b"]) == ["B"]
    assert batcher.alive and calls == [1, 2]
    batcher.close()
    assert not batcher.alive


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_decode_thread_fails_callers_fast() -> None:
    """A BaseException from a hook does end the thread: waiting and later callers get
    BatcherUnavailableError at once, and `alive` says so."""

    def fatal(stats) -> None:
        raise SystemExit("hook ends the thread")

    decode = Recorder(delay_s=0.2)
    batcher = DynamicBatcher(decode, max_sentences=1, max_wait_s=0.0, on_batch=fatal)
    results = _fire(batcher, [["a"], ["b"]])
    # The first batch's caller had its answer; the other was failed, not left hanging.
    assert sum(r in (["A"], ["B"]) for r in results) == 1
    assert sum(isinstance(r, BatcherUnavailableError) for r in results) == 1
    assert not batcher.alive
    start = time.monotonic()
    with pytest.raises(BatcherUnavailableError):
        batcher.submit(["late"])
    assert time.monotonic() - start < 0.1


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


def test_requests_with_other_settings_are_never_batched_with_the_default() -> None:
    """Requests submitted together with settings None, "b1" and "b3" come back decoded by
    their own settings, and every batch holds one setting only; a request with settings
    needs a ``decode_with``."""
    seen: list[tuple[object, list[str]]] = []

    def default(sentences: list[str]) -> list[str]:
        seen.append((None, list(sentences)))
        return [s.upper() for s in sentences]

    def with_settings(sentences: list[str], settings: object) -> list[str]:
        seen.append((settings, list(sentences)))
        return [f"{s}:{settings}" for s in sentences]

    batcher = DynamicBatcher(default, max_sentences=64, max_wait_s=0.3, decode_with=with_settings)
    settings = [None, "b1", None, "b3", "b1", None]
    results: list[object] = [None] * len(settings)
    barrier = threading.Barrier(len(settings))

    def call(i: int) -> None:
        barrier.wait()
        results[i] = batcher.submit([f"s{i}"], settings=settings[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(settings))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    batcher.close()
    assert results == [["S0"], ["s1:b1"], ["S2"], ["s3:b3"], ["s4:b1"], ["S5"]]
    # One batch per setting (all arrived within the wait), each with only its requests.
    batches = {key: sorted(sentences) for key, sentences in seen}
    assert len(seen) == 3 and batches == {
        None: ["s0", "s2", "s5"],
        "b1": ["s1", "s4"],
        "b3": ["s3"],
    }
    with pytest.raises(ValueError, match="no decode_with"):
        DynamicBatcher(default, max_sentences=4, max_wait_s=0.0).submit(["x"], settings="b1")
