"""Dynamic batching: concurrent translate calls share one decoding batch, fairly.

A server answers each request in a thread of its own; decoding those requests one by one
leaves most of batch decoding's throughput unused (beam 5 decodes ~8x more sentences per
second in batches of 64 than one at a time on CPU). ``DynamicBatcher.submit`` enqueues a
request's sentences and waits for them; one decoding thread takes the oldest request,
waits at most ``max_wait_s`` from that request's arrival for more (a queue that filled
while the previous batch decoded goes at once), decodes up to ``max_sentences`` sentences
in one call and hands each request its slice.

One client must not stall the others, so a request larger than ``max_sentences`` is
decoded in chunks, and each batch serves requests that have had nothing yet first (in
arrival order), then those part-way through, round-robin: a newcomer waits for at most the
batch being decoded when it arrived.

Requests may carry decode ``settings`` of their own (a served request's beam size, n-best,
length cap): a batch holds requests of one setting only, decoded by ``decode_with(sentences,
settings)``; requests without settings (the default, the fast path) go to ``decode``. Each
batch is for the settings of the request that has waited longest for its turn (a newcomer
since it arrived, a request part-way through since its last chunk), so no setting starves
another, and a newcomer of another setting waits for at most one more batch.

Between chunks, and before its first, a request whose deadline has passed or whose caller
has gone (its ``cancelled`` event is set) is dropped with an error to its caller, so
nobody decodes for a client that no longer listens.

The decoding thread is the server's only worker: an error in the ``on_batch`` hook or in
its own bookkeeping is logged and it carries on. If it ends anyway (``close``, or a
``BaseException`` such as ``SystemExit`` from a hook), ``alive`` turns false, queued and
waiting callers get ``BatcherUnavailableError`` at once and later ``submit`` calls fail
fast, so a health check can say so instead of requests hanging.

``BatchStats`` counts batches and their sizes, so an operator (and the serving tests) can
see whether coalescing happens: ``summary()`` gives totals and a power-of-two histogram of
sentences per batch.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

DecodeFn = Callable[[list[str]], list[Any]]
# Decodes a batch of requests that share one (hashable, non-None) decode setting.
DecodeWithFn = Callable[[list[str], Hashable], list[Any]]
log = logging.getLogger(__name__)
# `_pending`'s default: count the requests of every setting.
ANY_SETTINGS = object()
# How often a waiting caller looks at its deadline, its cancel event and the thread.
POLL_S = 0.05
# A failing hook is logged at most this often (with the count of failures since).
HOOK_LOG_EVERY_S = 60.0


class BatcherUnavailableError(RuntimeError):
    """The decoding thread is not running: nothing queued will ever be decoded."""


class RequestDroppedError(RuntimeError):
    """A request left the queue undecoded (its deadline passed or its caller went)."""


class DeadlineExceededError(RequestDroppedError, TimeoutError):
    """The request's deadline passed before all of its sentences were decoded."""


class RequestCancelledError(RequestDroppedError):
    """The request's caller signalled that it no longer wants the answer."""


@dataclass(eq=False)
class _Request:
    sentences: list[str]
    deadline: float | None  # time.monotonic() seconds
    cancelled: threading.Event | None
    settings: Hashable | None = None  # None: the batcher's default decode
    future: futures.Future = field(default_factory=futures.Future)
    arrived: float = field(default_factory=time.monotonic)
    results: list[Any] = field(default_factory=list)
    taken: int = 0  # sentences handed to a batch so far
    abandoned: bool = False  # the caller stopped waiting (set by submit's thread)
    waiting_since: float = -1.0  # arrival, then the time its last chunk was taken

    def __post_init__(self) -> None:
        if self.waiting_since < 0:
            self.waiting_since = self.arrived

    def drop_reason(self, now: float) -> Exception | None:
        if self.future.done():  # failed in an earlier chunk
            return RequestDroppedError("the request already failed")
        if self.abandoned or (self.cancelled is not None and self.cancelled.is_set()):
            return RequestCancelledError("the request was cancelled (its client has gone)")
        if self.deadline is not None and now >= self.deadline:
            return DeadlineExceededError("the request's deadline passed before it was decoded")
        return None


@dataclass(frozen=True)
class _Part:
    """Sentences ``start:end`` of one request, in one batch."""

    request: _Request
    start: int
    end: int

    @property
    def sentences(self) -> list[str]:
        return self.request.sentences[self.start : self.end]


class BatchStats:
    """Thread-safe counters of decoded batches; `summary()` is what the server logs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.batches = 0
        self.requests = 0
        self.sentences = 0
        self.max_sentences = 0
        self.dropped = 0
        self.histogram: collections.Counter[str] = collections.Counter()

    def record(self, requests: int, sentences: int) -> None:
        with self._lock:
            self.batches += 1
            self.requests += requests
            self.sentences += sentences
            self.max_sentences = max(self.max_sentences, sentences)
            self.histogram[size_bucket(sentences)] += 1

    def record_drop(self) -> None:
        with self._lock:
            self.dropped += 1

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {
                "batches": self.batches,
                "requests": self.requests,
                "sentences": self.sentences,
                "max_batch_sentences": self.max_sentences,
                "dropped_requests": self.dropped,
                "sentences_per_batch": {
                    k: self.histogram[k]
                    for k in sorted(self.histogram, key=lambda b: int(b.split("-")[0]))
                },
            }


def size_bucket(n: int) -> str:
    """Power-of-two bucket label: 1, 2-3, 4-7, 8-15, ..."""
    low = 1 << (max(n, 1).bit_length() - 1)
    return str(low) if low == 1 else f"{low}-{2 * low - 1}"


class DynamicBatcher:
    """Coalesces concurrent `submit` calls into batched `decode` calls on one thread.

    ``decode`` gets the sentences of one or more request chunks, in batch order, and must
    return one string per sentence. If a batch of several chunks fails, each chunk is
    decoded again on its own, so one request's error never reaches another.
    ``max_request_s`` bounds how long ``submit`` waits when the caller gives no deadline
    (None: as long as the thread lives). ``decode_with`` decodes the requests submitted
    with ``settings`` (see the module docstring)."""

    def __init__(
        self,
        decode: DecodeFn,
        max_sentences: int,
        max_wait_s: float,
        stats: BatchStats | None = None,
        on_batch: Callable[[BatchStats], None] | None = None,
        max_request_s: float | None = None,
        decode_with: DecodeWithFn | None = None,
    ) -> None:
        if max_sentences < 1 or max_wait_s < 0:
            raise ValueError("max_sentences must be >= 1 and max_wait_s >= 0")
        if max_request_s is not None and max_request_s <= 0:
            raise ValueError("max_request_s must be > 0")
        self._decode = decode
        self._decode_with = decode_with
        self.max_sentences = max_sentences
        self.max_wait_s = max_wait_s
        self.max_request_s = max_request_s
        self.stats = stats or BatchStats()
        self._on_batch = on_batch
        # Requests that have had no chunk yet (arrival order), and those part-way through
        # (round-robin order). Both only under _cond.
        self._fresh: collections.deque[_Request] = collections.deque()
        self._continuing: collections.deque[_Request] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._stopped = False  # set first thing when the thread ends, for any reason
        self._hook_failures = 0
        self._hook_logged = -HOOK_LOG_EVERY_S
        self._thread = threading.Thread(target=self._run, name="decode-batcher", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether the decoding thread runs and takes requests (false after ``close``)."""
        return self._running() and not self._closed

    def _running(self) -> bool:
        return not self._stopped and self._thread.is_alive()

    def submit(
        self,
        sentences: Sequence[str],
        deadline: float | None = None,
        cancelled: threading.Event | None = None,
        settings: Hashable | None = None,
    ) -> list[Any]:
        """Translations of ``sentences``; blocks until they are decoded.

        ``deadline`` is a ``time.monotonic()`` instant; past it the call raises
        ``DeadlineExceededError`` (and the rest of the request is not decoded), as it
        raises ``RequestCancelledError`` soon after ``cancelled`` is set, and
        ``BatcherUnavailableError`` at once if the decoding thread is not running.
        ``settings`` (hashable): decode these sentences with ``decode_with(..., settings)``,
        in batches of requests with equal settings only; None: with ``decode``."""
        if settings is not None and self._decode_with is None:
            raise ValueError("settings given, but this batcher has no decode_with")
        if not sentences:
            return []
        if deadline is None and self.max_request_s is not None:
            deadline = time.monotonic() + self.max_request_s
        request = _Request(list(sentences), deadline, cancelled, settings)
        with self._cond:
            if self._closed or not self._running():
                raise BatcherUnavailableError("the decoding thread is not running")
            self._fresh.append(request)
            self._cond.notify()
        return self._wait(request)

    def _wait(self, request: _Request) -> list[Any]:
        while True:
            timeout = POLL_S
            if request.deadline is not None:
                timeout = min(timeout, max(0.0, request.deadline - time.monotonic()))
            futures.wait([request.future], timeout=timeout)
            if request.future.done():
                return request.future.result()
            reason = request.drop_reason(time.monotonic())
            if reason is None and not self._running():
                reason = BatcherUnavailableError("the decoding thread is not running")
            if reason is not None:
                request.abandoned = True  # the decoding thread skips what is left of it
                self.stats.record_drop()
                raise reason

    def close(self) -> None:
        """Decode what is queued, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        try:
            while True:
                parts: list[_Part] = []
                try:
                    gathered = self._gather()
                    if gathered is None:
                        return
                    parts = gathered
                    self._decode_parts(parts)
                except Exception as exc:  # a bug here must not end serving: fail the batch
                    log.exception("decode-batcher: batch failed outside decode; carrying on")
                    for part in parts:
                        _fail(part.request, exc)
        finally:
            self._stopped = True
            self._fail_queued(BatcherUnavailableError("the decoding thread has stopped"))

    def _gather(self) -> list[_Part] | None:
        with self._cond:
            while not self._pending():
                if self._closed:
                    return None
                self._cond.wait()
            if self._fresh:
                oldest = self._fresh[0]
                deadline = oldest.arrived + self.max_wait_s
                while not self._closed and self._pending(oldest.settings) < self.max_sentences:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            return self._take_batch()

    def _pending(self, settings: object = ANY_SETTINGS) -> int:
        """Sentences queued (with these settings, if given) and not yet in a batch (under
        _cond)."""
        return sum(
            len(r.sentences) - r.taken
            for q in (self._fresh, self._continuing)
            for r in q
            if settings is ANY_SETTINGS or r.settings == settings
        )

    def _next_settings(self) -> Hashable | None:
        """The settings of the next batch: those of the request that has waited longest for
        its turn, among the first newcomer and the first request part-way through."""
        heads = [q[0] for q in (self._fresh, self._continuing) if q]
        return min(heads, key=lambda r: r.waiting_since).settings if heads else None

    def _take_batch(self) -> list[_Part]:
        """Up to max_sentences of one setting: newcomers first, then one chunk per
        continuing request; a request with sentences left goes to the back of the
        continuing queue, others keep their places (under _cond). Dropped requests leave
        the queues here, with their error."""
        now = time.monotonic()
        settings = self._next_settings()
        room = self.max_sentences
        parts: list[_Part] = []
        served: list[_Request] = []  # with sentences left: to the back of _continuing
        for queue in (self._fresh, self._continuing):
            kept: list[_Request] = []
            while queue:
                request = queue.popleft()
                if room == 0 or request.settings != settings:
                    kept.append(request)
                    continue
                reason = request.drop_reason(now)
                if reason is not None:
                    if not request.abandoned:  # an abandoning caller counted it
                        self.stats.record_drop()
                    _fail(request, reason)
                    continue
                take = min(room, len(request.sentences) - request.taken)
                parts.append(_Part(request, request.taken, request.taken + take))
                request.taken += take
                request.waiting_since = now
                room -= take
                if request.taken < len(request.sentences):
                    served.append(request)
            queue.extend(kept)
        self._continuing.extend(served)
        return parts

    def _decode_parts(self, parts: list[_Part]) -> None:
        if not parts:
            return
        sentences = [s for part in parts for s in part.sentences]
        settings = parts[0].request.settings  # one setting per batch (_take_batch)
        try:
            if settings is None:
                out = self._decode(sentences)
            else:
                assert self._decode_with is not None  # submit refuses settings without it
                out = self._decode_with(sentences, settings)
        except BaseException as exc:  # handed to the waiting callers, who re-raise it
            if len(parts) == 1:
                _fail(parts[0].request, exc)
                return
            for part in parts:
                self._decode_parts([part])
            return
        if len(out) != len(sentences):
            error = RuntimeError(f"decode returned {len(out)} outputs for {len(sentences)}")
            for part in parts:
                _fail(part.request, error)
            return
        self.stats.record(len(parts), len(sentences))
        start = 0
        for part in parts:
            request = part.request
            end = start + part.end - part.start
            request.results.extend(out[start:end])
            start = end
            if len(request.results) == len(request.sentences) and not request.future.done():
                request.future.set_result(request.results)
        self._call_hook()

    def _call_hook(self) -> None:
        if self._on_batch is None:
            return
        try:
            self._on_batch(self.stats)
        except Exception:  # a logging hook must never stop decoding
            self._hook_failures += 1
            now = time.monotonic()
            if now - self._hook_logged >= HOOK_LOG_EVERY_S:
                self._hook_logged = now
                log.exception(
                    "decode-batcher: the on_batch hook failed (%d time(s) so far); decoding "
                    "goes on",
                    self._hook_failures,
                )

    def _fail_queued(self, error: Exception) -> None:
        with self._cond:
            queued = [*self._fresh, *self._continuing]
            self._fresh.clear()
            self._continuing.clear()
        for request in queued:
            _fail(request, error)


def _fail(request: _Request, error: BaseException) -> None:
    """Hand ``error`` to the request's caller, once (only the decoding thread settles a
    request's future, so there is no race on it)."""
    if not request.future.done():
        request.future.set_exception(error)
