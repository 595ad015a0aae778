"""One writer per workspace: the lock every entry point that writes the clone holds.

Two runs in one clone (a scheduled run meeting a manual `make run`, or `dvc repro` during
a pipeline) would train into the same `models/checkpoints` and register mixed files. So
`seq2seq pipeline`, the deployments' flow runs and each CLI stage (and with them `dvc
repro`'s stage commands) hold `.state/workspace.lock` while they run.

The lock is an `flock` on the file, so the kernel releases it when its holder dies, however
it dies. The file also names the holder (pid, host, start time, flow run, command); a
second run prints that while it waits up to `pipeline.lock_timeout_min`. A holder record
that is still in the file when the lock is free was left by a process that did not exit
cleanly: the next holder takes over and says so.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

LOCK_PATH = Path(".state") / "workspace.lock"
POLL_S = 1.0
# Re-entrancy within one process: the flow and a stage it calls may both ask for the lock.
_held: dict[Path, int] = {}
_held_guard = threading.Lock()


class WorkspaceBusyError(RuntimeError):
    """Another run held the workspace lock for longer than the wait allowed; names it."""


def describe_holder(record: dict[str, Any]) -> str:
    """`pid 123 on host, since 2026-12-01T02:00:00+00:00 (flow run 'x', seq2seq pipeline)`."""
    parts = [f"pid {record.get('pid', '?')} on {record.get('host', '?')}"]
    if record.get("started"):
        parts.append(f"since {record['started']}")
    extra = [f"flow run {record['flow_run']!r}"] if record.get("flow_run") else []
    if record.get("command"):
        extra.append(str(record["command"]))
    text = ", ".join(parts)
    return f"{text} ({'; '.join(extra)})" if extra else text


@contextmanager
def workspace_lock(
    root: Path | None = None,
    *,
    timeout_min: float = 30.0,
    command: str = "",
    flow_run: str = "",
) -> Iterator[None]:
    """Hold the workspace lock of ``root`` (default: the working directory) for the block.

    Waits up to ``timeout_min`` minutes for another holder, logging who it is, then raises
    ``WorkspaceBusyError`` with the same description."""
    path = Path(root or Path.cwd()) / LOCK_PATH
    with held_file_lock(path, timeout_min=timeout_min, command=command, flow_run=flow_run):
        yield


@contextmanager
def held_file_lock(
    path: Path,
    *,
    timeout_min: float,
    command: str = "",
    flow_run: str = "",
    what: str = "workspace lock",
    setting: str = "pipeline.lock_timeout_min",
    busy: type[RuntimeError] = WorkspaceBusyError,
) -> Iterator[None]:
    """An ``flock`` on ``path`` whose file names its holder, re-entrant within a process
    (the workspace lock; the registry lock of a SQLite store, flows/registry_lock.py).
    Waits up to ``timeout_min`` logging the holder, then raises ``busy``."""
    path = Path(path).resolve()
    with _held_guard:
        if _held.get(path):
            _held[path] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield
        finally:
            with _held_guard:
                _held[path] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        poll_until_acquired(
            lambda: _try_flock(handle),
            lambda: describe_holder(_read_record(handle)),
            what=f"{what} {path}", timeout_min=timeout_min, setting=setting, busy=busy,
        )  # fmt: skip
        try:
            _take_over_if_stale(handle, path, what)
            _write_record(handle, holder_record(command, flow_run))
            with _held_guard:
                _held[path] = 1
            yield
        finally:
            with _held_guard:
                _held.pop(path, None)
            _write_record(handle, None)  # a clean exit leaves no holder behind
            fcntl.flock(handle, fcntl.LOCK_UN)


def _try_flock(handle: IO[str]) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def poll_until_acquired(
    try_acquire: Callable[[], bool],
    holder: Callable[[], str],
    *,
    what: str,
    timeout_min: float,
    setting: str,
    busy: type[RuntimeError] = WorkspaceBusyError,
) -> None:
    """Call ``try_acquire`` every POLL_S until it returns True; the first miss logs who
    holds ``what`` (``holder()``), a miss after ``timeout_min`` raises ``busy`` naming them.
    One wait loop for every lock here (file, PostgreSQL advisory, Prefect limit)."""
    deadline = time.monotonic() + timeout_min * 60.0
    announced = False
    while not try_acquire():
        if time.monotonic() >= deadline:
            raise busy(
                f"another run holds the {what}: {holder()}; gave up after waiting "
                f"{timeout_min:g} min ({setting})"
            )
        if not announced:
            log.warning(
                "another run holds the %s: %s; waiting up to %g min", what, holder(), timeout_min
            )
            announced = True
        time.sleep(POLL_S)
    if announced:
        log.info("%s acquired", what)


def _take_over_if_stale(handle: IO[str], path: Path, what: str) -> None:
    previous = _read_record(handle)
    if previous:
        log.warning(
            "taking over the %s %s left by %s: that run did not exit cleanly "
            "(killed or crashed); its outputs may be partial and are checked by this run",
            what, path, describe_holder(previous),
        )  # fmt: skip


def holder_record(command: str = "", flow_run: str = "") -> dict[str, Any]:
    """Who takes a lock: pid, host, start time, flow run (the Prefect worker's
    ``PREFECT__FLOW_RUN_ID`` when none is given) and command (default: this process's)."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "flow_run": flow_run or os.environ.get("PREFECT__FLOW_RUN_ID", ""),
        "command": command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def _read_record(handle: IO[str]) -> dict[str, Any]:
    handle.seek(0)
    try:
        record = json.loads(handle.read() or "{}")
    except json.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}


def _write_record(handle: IO[str], record: dict[str, Any] | None) -> None:
    handle.seek(0)
    handle.truncate()
    if record:
        handle.write(json.dumps(record) + "\n")
    handle.flush()
    os.fsync(handle.fileno())
