"""Step metrics that outlive a tracking-server outage: kept in memory and in a small spool
file, sent in the background with their original steps and timestamps.

Training must not wait for MLflow. MLflow's client retries a refused connection
``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` (7) times with backoff factor 2, about four minutes,
and then raises: an unguarded ``log_batch`` in the loop stalls training for minutes and a
longer outage (a server restart) kills ten minutes of it. So ``add`` only appends (to
memory and, one JSON line a metric, to the spool, so a crash loses nothing),
``flush_soon`` hands what is pending to one background thread and returns at once, and
``close`` waits, for a bounded time and saying so in the log, until everything is sent.
A spool left behind by a crash is sent first by the next spool opened on the same file.
"""

from __future__ import annotations

import contextvars
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import requests
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from seq2seq_core.runtime.files import write_text

log = logging.getLogger(__name__)

# MLflow's log_batch takes at most 1000 metrics a call.
BATCH_LIMIT = 1000
# What a send raises while the server is down or restarting (MLflow wraps most of these).
SEND_ERRORS = (MlflowException, requests.RequestException, OSError)
# A send running longer than this is stuck in MLflow's retries: say so in the log.
SLOW_SEND_S = 30.0

SendBatch = Callable[[list[Metric]], None]
Reachable = Callable[[], bool]


class MetricSpool:
    """Pending metrics for one run: ``add``, ``flush_soon`` (background), ``close`` (wait).

    ``send`` logs one batch (<= 1000 metrics) and raises one of ``SEND_ERRORS`` on failure;
    ``reachable`` is a cheap probe (a short-timeout health check) asked before each send so
    that a down server costs a probe, not MLflow's minutes of retries.
    """

    def __init__(self, path: Path, send: SendBatch, reachable: Reachable = lambda: True) -> None:
        self.path = Path(path)
        self._send, self._reachable = send, reachable
        self._lock = threading.Lock()  # guards _pending and the spool file
        self._thread: threading.Thread | None = None
        self._down_since: float | None = None
        self._send_started = 0.0
        self.sent = 0
        self._pending = _read_spool(self.path)
        if self._pending:
            log.warning(
                "%s: %d metrics spooled by an earlier attempt; sending them first",
                self.path, len(self._pending),
            )  # fmt: skip

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def add(self, metrics: Iterable[Metric]) -> None:
        """Keep ``metrics`` until sent: in memory and appended to the spool file."""
        batch = list(metrics)
        if not batch:
            return
        with self._lock:
            self._pending.extend(batch)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as spool:
                spool.write("".join(json.dumps(_row(m)) + "\n" for m in batch))

    def flush_soon(self) -> None:
        """Send what is pending in the background; returns at once. One send at a time: a
        send still running (a slow or retrying server) takes the new metrics next time."""
        if self._thread is not None and self._thread.is_alive():
            waited = time.monotonic() - self._send_started
            if waited >= SLOW_SEND_S:  # MLflow's client retrying a server that went away
                self._note_down(f"a send has waited {waited:.0f} s for an answer")
            return
        # The caller's context (Prefect's flow run) goes along, so the lines this thread
        # logs reach the flow-run log and not only the console.
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self.send_pending,),
                                        name="metric-spool", daemon=True)  # fmt: skip
        self._send_started = time.monotonic()
        self._thread.start()

    def send_pending(self) -> bool:
        """One attempt to send everything pending now; whether it all went out."""
        with self._lock:
            batch = list(self._pending)
        if not batch:
            return True
        if not self._reachable():
            self._note_down("the server does not answer its health check")
            return False
        for start in range(0, len(batch), BATCH_LIMIT):
            chunk = batch[start : start + BATCH_LIMIT]
            try:
                self._send(chunk)
            except SEND_ERRORS as exc:
                self._note_down(str(exc)[:300])
                return False
            self._drop_sent(len(chunk))
        self._note_up()
        return True

    def close(self, wait_s: float, retry_every_s: float = 5.0) -> int:
        """Send everything, retrying for up to ``wait_s`` seconds (logged); returns how many
        metrics are still unsent (they stay in the spool for a later attempt)."""
        deadline = time.monotonic() + wait_s
        if self._thread is not None:
            self._thread.join(timeout=wait_s)
            if self._thread.is_alive():  # a send stuck in MLflow's retries the whole time
                log.error("a send is still running after %.0f s: %d metrics stay in %s",
                          wait_s, self.pending, self.path)  # fmt: skip
                return self.pending
        last_note = 0.0
        while not self.send_pending():
            left = deadline - time.monotonic()
            if left <= 0:
                log.error("gave up after %.0f s: %d metrics stay unsent in %s",
                          wait_s, self.pending, self.path)  # fmt: skip
                return self.pending
            if time.monotonic() - last_note >= 60:  # one line a minute while waiting
                log.warning("tracking server unreachable: %d metrics wait in %s; retrying "
                            "for up to %.0f s more", self.pending, self.path, left)  # fmt: skip
                last_note = time.monotonic()
            time.sleep(min(retry_every_s, left))
        self.path.unlink(missing_ok=True)
        return 0

    def _drop_sent(self, count: int) -> None:
        """Forget the first ``count`` pending metrics, in memory and in the spool file."""
        with self._lock:
            del self._pending[:count]
            self.sent += count
            if not self._pending:
                self.path.unlink(missing_ok=True)
            else:
                write_text(self.path, "".join(json.dumps(_row(m)) + "\n" for m in self._pending))

    def _note_down(self, why: str) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("tracking server unreachable (%s): step metrics are kept in %s and "
                        "sent when it is back; training goes on", why, self.path)  # fmt: skip

    def _note_up(self) -> None:
        if self._down_since is not None:
            log.info("tracking server back after %.0f s: buffered step metrics sent",
                     time.monotonic() - self._down_since)  # fmt: skip
            self._down_since = None


def _row(metric: Metric) -> dict[str, object]:
    return {"key": metric.key, "value": metric.value, "timestamp": metric.timestamp,
            "step": metric.step}  # fmt: skip


def _read_spool(path: Path) -> list[Metric]:
    """The metrics in a spool file; a line cut short by a crash is skipped."""
    if not path.is_file():
        return []
    metrics = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            metrics.append(Metric(row["key"], float(row["value"]), int(row["timestamp"]),
                                  int(row["step"])))  # fmt: skip
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("%s: skipping an unreadable line (cut short by a crash?)", path)
    return metrics
