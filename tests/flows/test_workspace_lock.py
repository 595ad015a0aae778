"""The workspace lock between real processes: waiting, giving up with the holder's name,
taking over from a killed holder, and the CLI's stage commands holding it."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flows.workspace_lock import LOCK_PATH, WorkspaceBusyError, workspace_lock

HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from flows.workspace_lock import workspace_lock
    with workspace_lock(Path(sys.argv[1]), command="nightly test", flow_run="brave-otter"):
        Path(sys.argv[2]).write_text("held")
        time.sleep(float(sys.argv[3]))
    """
)


def _hold(root: Path, seconds: float) -> subprocess.Popen:
    """A separate process that holds the lock of `root` for `seconds` once it says so."""
    ready = root / "held.flag"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(root), str(ready), str(seconds)])
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None, "the holder exited before taking the lock"
        assert time.monotonic() < deadline, "the holder never took the lock"
        time.sleep(0.05)
    return proc


def test_second_run_waits_then_gives_up_naming_the_holder(tmp_path: Path) -> None:
    holder = _hold(tmp_path, 30)
    try:
        start = time.monotonic()
        with (
            pytest.raises(WorkspaceBusyError) as err,
            workspace_lock(tmp_path, timeout_min=0.03),
        ):
            pytest.fail("took a lock another process holds")
        waited = time.monotonic() - start
    finally:
        holder.kill()
        holder.wait()
    message = str(err.value)
    assert f"pid {holder.pid} on " in message
    assert "flow run 'brave-otter'" in message and "nightly test" in message
    assert "gave up after waiting 0.03 min" in message
    assert 1.5 <= waited < 10  # it waited its 1.8 s, polling, then stopped


def test_waits_for_the_holder_to_finish(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    holder = _hold(tmp_path, 2)
    caplog.set_level(logging.INFO, logger="flows.workspace_lock")
    with workspace_lock(tmp_path, timeout_min=1):
        assert holder.wait(timeout=30) == 0  # it released the lock at its end, then exited
        record = json.loads((tmp_path / LOCK_PATH).read_text())
        assert record["pid"] == os.getpid()
    assert "another run holds the workspace lock" in caplog.text
    assert f"pid {holder.pid}" in caplog.text
    assert (tmp_path / LOCK_PATH).read_text() == ""  # a clean exit leaves no holder


def test_a_killed_holder_is_taken_over_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    holder = _hold(tmp_path, 60)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    caplog.set_level(logging.WARNING, logger="flows.workspace_lock")
    start = time.monotonic()
    with workspace_lock(tmp_path, timeout_min=0.1):
        pass
    assert time.monotonic() - start < 2  # the kernel released it: no waiting
    assert f"taking over the workspace lock {tmp_path / LOCK_PATH} left by pid {holder.pid}" in (
        caplog.text
    )


def test_the_lock_is_reentrant_within_a_process(tmp_path: Path) -> None:
    with workspace_lock(tmp_path, timeout_min=0), workspace_lock(tmp_path, timeout_min=0):
        pass
    with workspace_lock(tmp_path, timeout_min=0):  # released by the outer exit
        pass


def test_cli_stage_commands_hold_the_lock(tmp_path: Path, tiny_params_file: Path) -> None:
    holder = _hold(tmp_path, 60)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "flows.cli", "ingest", "--params", str(tiny_params_file),
             "--set", "pipeline.lock_timeout_min=0.02"],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 3, proc.stderr
    assert "seq2seq ingest: another run holds the workspace lock" in proc.stderr
    assert f"pid {holder.pid}" in proc.stderr
    assert not (tmp_path / "data" / "prepared").exists()  # it wrote nothing
