"""The registry lock: one alias move at a time, for every machine that shares the store.

Which lock depends on where the store is, because the lock must be seen by every process
that can move an alias:

- a PostgreSQL store (``postgresql://`` tracking URI), or ``SEQ2SEQ_REGISTRY_LOCK_URL`` set
  (for an MLflow server whose backend is PostgreSQL: the client cannot see that database,
  so it is given a libpq URI to lock in): a PostgreSQL advisory lock, polled with
  ``pg_try_advisory_lock``; the holder is named by its ``application_name`` in
  ``pg_stat_activity``.
- a SQLite store: ``flock`` on ``mlflow.db.registry.lock`` next to the database (one
  machine by construction); the holder is named in the file.
- any other store (an ``http(s)://`` server) with a Prefect API configured: the Prefect
  global concurrency limit ``seq2seq-registry`` (1 slot); the holder is named by the Prefect
  variable ``seq2seq_registry_lock_holder``.
- any other store, no Prefect API: ``flock`` in this machine's temp folder, with a warning
  that it stops at the machine.

Every kind waits up to ``pipeline.lock_timeout_min``, logs who holds it while it waits and
then raises ``RegistryBusyError`` naming them. A holder that dies frees the lock: the kernel
drops the flock, PostgreSQL drops the session's advisory lock, and Prefect's lease ends after
``GCL_LEASE_S``. The lock is re-entrant within a process (register, then promote).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from flows.workspace_lock import (
    describe_holder,
    held_file_lock,
    holder_record,
    poll_until_acquired,
)

log = logging.getLogger(__name__)

LOCK_URL_ENV = "SEQ2SEQ_REGISTRY_LOCK_URL"
SETTING = "pipeline.lock_timeout_min"
# One advisory-lock key for the registry: the first 8 bytes of a fixed name's sha256.
ADVISORY_KEY = int.from_bytes(hashlib.sha256(b"seq2seq.registry").digest()[:8], "big", signed=True)
APP_NAME_PREFIX = "seq2seq-lock"
GCL_NAME = "seq2seq-registry"
GCL_HOLDER_VARIABLE = "seq2seq_registry_lock_holder"
# A killed holder's Prefect slot frees itself after this long (a live one renews it).
GCL_LEASE_S = 60.0
# Re-entrancy for the PostgreSQL and Prefect kinds (the file kind has its own).
_depth = threading.local()


class RegistryBusyError(RuntimeError):
    """Another promotion held the registry lock for longer than the wait allowed; names it."""


def lock_kind(tracking_uri: str, env: dict[str, str] | None = None) -> str:
    """``postgres``, ``file`` (next to a SQLite store), ``prefect`` or ``machine``: the
    table in the module docstring as a pure function of the store and the environment."""
    env = dict(os.environ if env is None else env)
    if env.get(LOCK_URL_ENV, "").strip() or tracking_uri.startswith("postgresql"):
        return "postgres"
    if tracking_uri.startswith("sqlite:///"):
        return "file"
    if env.get("PREFECT_API_URL", "").strip():
        return "prefect"
    return "machine"


def lock_dsn(tracking_uri: str, env: dict[str, str] | None = None) -> str:
    """The libpq URI to lock in: ``SEQ2SEQ_REGISTRY_LOCK_URL``, else the tracking URI
    without SQLAlchemy's driver (``postgresql+psycopg2://`` -> ``postgresql://``). The
    password comes from ``PGPASSFILE``/``PGPASSWORD``, never from a log."""
    env = dict(os.environ if env is None else env)
    url = env.get(LOCK_URL_ENV, "").strip() or tracking_uri
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+', 1)[0]}{sep}{rest}"


@contextmanager
def registry_lock(tracking_uri: str, *, timeout_min: float, command: str = "") -> Iterator[None]:
    """Hold the registry lock of the store at ``tracking_uri`` for the block (see the
    module docstring for which lock)."""
    kind = lock_kind(tracking_uri)
    if kind in ("file", "machine"):
        with held_file_lock(
            _lock_file(tracking_uri, kind), timeout_min=timeout_min, command=command,
            what="registry lock", setting=SETTING, busy=RegistryBusyError,
        ):  # fmt: skip
            yield
        return
    depth = getattr(_depth, "value", 0)
    if depth:
        _depth.value = depth + 1
        try:
            yield
        finally:
            _depth.value -= 1
        return
    record = holder_record(command)
    held = _advisory_lock if kind == "postgres" else _prefect_limit_lock
    with held(tracking_uri, timeout_min, record):
        _depth.value = 1
        try:
            yield
        finally:
            _depth.value = 0


def _lock_file(tracking_uri: str, kind: str) -> Path:
    if kind == "file":
        return Path(f"{tracking_uri[len('sqlite:///') :]}.registry.lock")
    log.warning(
        "registry lock: the store is remote but neither %s nor a Prefect API is set, so the "
        "lock covers this machine only; promote from one machine or set one of them",
        LOCK_URL_ENV,
    )
    digest = hashlib.sha256(tracking_uri.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"seq2seq-mlflow-registry-{digest}.lock"


# ------------------------------------------------------------------ PostgreSQL


def application_name(record: dict[str, Any]) -> str:
    """The holder record squeezed into PostgreSQL's 63-byte ``application_name``:
    ``seq2seq-lock|pid|host|flow run (8)|command``."""
    fields = [APP_NAME_PREFIX, str(record["pid"]), str(record["host"])[:20],
              str(record.get("flow_run") or "")[:8], str(record.get("command") or "")]  # fmt: skip
    return "|".join(f.replace("|", "/") for f in fields).encode()[:63].decode(errors="ignore")


def record_of_application_name(name: str, since: str = "") -> dict[str, Any]:
    """``application_name`` back as a holder record (describe_holder's input)."""
    parts = name.split("|")
    if len(parts) < 5 or parts[0] != APP_NAME_PREFIX:
        return {"pid": "?", "host": "?", "command": name}
    _, pid, host, flow_run, command = parts[:5]
    return {"pid": pid, "host": host, "flow_run": flow_run, "command": command, "started": since}


HOLDER_SQL = """
SELECT a.application_name, to_char(a.backend_start AT TIME ZONE 'UTC',
       'YYYY-MM-DD"T"HH24:MI:SS"+00:00"')
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.classid::bigint = %s AND l.objid::bigint = %s
"""


@contextmanager
def _advisory_lock(tracking_uri: str, timeout_min: float, record: dict[str, Any]) -> Iterator[None]:
    """A session-level advisory lock on its own connection: the server releases it when
    the session ends, however the holder dies."""
    import psycopg2

    conn = psycopg2.connect(
        lock_dsn(tracking_uri), application_name=application_name(record), connect_timeout=10
    )
    conn.autocommit = True
    try:
        with conn.cursor() as cur:

            def try_acquire() -> bool:
                cur.execute("SELECT pg_try_advisory_lock(%s)", (ADVISORY_KEY,))
                return bool(cur.fetchone()[0])

            def holder() -> str:
                key = ADVISORY_KEY & 0xFFFFFFFFFFFFFFFF
                cur.execute(HOLDER_SQL, (key >> 32, key & 0xFFFFFFFF))
                row = cur.fetchone()
                if row is None:
                    return "a session that has just released it"
                return describe_holder(record_of_application_name(row[0], row[1] or ""))

            poll_until_acquired(
                try_acquire, holder, what="registry lock (PostgreSQL advisory lock)",
                timeout_min=timeout_min, setting=SETTING, busy=RegistryBusyError,
            )  # fmt: skip
            try:
                yield
            finally:
                cur.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_KEY,))
    finally:
        conn.close()


# ------------------------------------------------------------------ Prefect


@contextmanager
def _prefect_limit_lock(
    tracking_uri: str, timeout_min: float, record: dict[str, Any]
) -> Iterator[None]:
    """One slot of the global concurrency limit ``seq2seq-registry`` (created with one
    slot if missing: a missing limit would not limit), the holder in a Prefect variable."""
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency
    from prefect.variables import Variable

    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(GCL_NAME, 1)
    with ExitStack() as stack:

        def try_acquire() -> bool:
            slot = concurrency(
                GCL_NAME, occupy=1, timeout_seconds=1, strict=True, lease_duration=GCL_LEASE_S
            )
            try:
                stack.enter_context(slot)
            except TimeoutError:
                return False
            return True

        def holder() -> str:
            found = Variable.get(GCL_HOLDER_VARIABLE, default=None)
            return describe_holder(found) if isinstance(found, dict) and found else "unknown"

        poll_until_acquired(
            try_acquire, holder, what=f"registry lock (Prefect limit {GCL_NAME!r})",
            timeout_min=timeout_min, setting=SETTING, busy=RegistryBusyError,
        )  # fmt: skip
        Variable.set(GCL_HOLDER_VARIABLE, record, overwrite=True)
        try:
            yield
        finally:
            Variable.set(GCL_HOLDER_VARIABLE, {}, overwrite=True)
