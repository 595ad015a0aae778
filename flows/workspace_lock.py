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
from collections.abc import Iterator
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
    path = (Path(root or Path.cwd()) / LOCK_PATH).resolve()
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
        _acquire(handle, path, timeout_min)
        try:
            _take_over_if_stale(handle, path)
            _write_record(handle, _record(command, flow_run))
            with _held_guard:
                _held[path] = 1
            yield
        finally:
            with _held_guard:
                _held.pop(path, None)
            _write_record(handle, None)  # a clean exit leaves no holder behind
            fcntl.flock(handle, fcntl.LOCK_UN)


def _acquire(handle: IO[str], path: Path, timeout_min: float) -> None:
    deadline = time.monotonic() + timeout_min * 60.0
    announced = False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if announced:
                log.info("workspace lock %s acquired", path)
            return
        except BlockingIOError:
            holder = describe_holder(_read_record(handle))
            if time.monotonic() >= deadline:
                raise WorkspaceBusyError(
                    f"another run holds the workspace lock {path}: {holder}; gave up after "
                    f"waiting {timeout_min:g} min (pipeline.lock_timeout_min)"
                ) from None
            if not announced:
                log.warning(
                    "another run holds the workspace lock %s: %s; waiting up to %g min",
                    path, holder, timeout_min,
                )  # fmt: skip
                announced = True
            time.sleep(POLL_S)


def _take_over_if_stale(handle: IO[str], path: Path) -> None:
    previous = _read_record(handle)
    if previous:
        log.warning(
            "taking over the workspace lock %s left by %s: that run did not exit cleanly "
            "(killed or crashed); its outputs may be partial and are checked by this run",
            path, describe_holder(previous),
        )  # fmt: skip


def _record(command: str, flow_run: str) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "flow_run": flow_run,
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
