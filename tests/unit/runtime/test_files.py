"""runtime/files.py: atomic writes (fsync, rename, no temporary file left on a failure), the
one-line error of a failed write, and the removal of what a killed writer left behind."""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seq2seq_core.model.checkpoint import save_checkpoint
from seq2seq_core.runtime import files
from seq2seq_core.runtime.files import (
    FileWriteError,
    atomic_file,
    publish,
    remove_stale_temp_files,
    staging_dir,
    write_json,
    write_text,
)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True, check=True)  # fmt: skip
    return int(proc.stdout)


class _FullDisk:
    """A file object whose writes fail as a full disk does, after ``room`` bytes."""

    def __init__(self, handle, room: int) -> None:
        self._handle, self._room = handle, room

    def write(self, data) -> int:
        self._room -= len(data)
        if self._room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._handle.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._handle.close()

    def __getattr__(self, name):
        return getattr(self._handle, name)


def test_write_replaces_the_file_and_fsyncs_file_then_folder(tmp_path, monkeypatch):
    target = tmp_path / "out" / "metrics.json"
    write_text(target, "old\n")
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", recording_fsync)
    write_json(target, {"bleu": 12.5, "ü": 1})
    assert json.loads(target.read_text(encoding="utf-8")) == {"bleu": 12.5, "ü": 1}
    assert _names(target.parent) == ["metrics.json"]
    # The data before the rename (the temporary file), the folder after it.
    assert synced == [str(target.parent / f".metrics.json.{os.getpid()}.tmp"), str(target.parent)]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "last.pt"
    target.write_bytes(b"previous checkpoint")
    with pytest.raises(FileWriteError) as caught, atomic_file(target) as handle:
        _FullDisk(handle, room=10).write(b"x" * 100)
    assert str(caught.value) == f"disk full: no space left writing {target}; free space and rerun"
    assert caught.value.disk_full and caught.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"previous checkpoint"
    assert _names(tmp_path) == ["last.pt"]


def test_torch_save_on_a_full_disk_is_named_as_such(tmp_path, monkeypatch):
    """torch.save turns the OSError of its file object into a RuntimeError: the cause
    behind it is what the message reports."""
    real_open = open
    monkeypatch.setattr(files, "open", lambda *a, **k: _FullDisk(real_open(*a, **k), 200),
                        raising=False)  # fmt: skip
    target = tmp_path / "checkpoints" / "last.pt"
    with pytest.raises(FileWriteError, match=r"^disk full: no space left writing .*last\.pt;"):
        save_checkpoint(target, {"w": torch.zeros(1000)})
    assert _names(target.parent) == []


def test_the_error_survives_pickling():
    """Prefect keeps a failed task's exception in its state, pickled."""
    error = FileWriteError(Path("models/checkpoints/last.pt"), OSError(errno.ENOSPC, "full"))
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and copy.disk_full and copy.path == error.path


def test_other_os_errors_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(FileWriteError) as caught, atomic_file(tmp_path / "a.txt"):
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    assert str(caught.value) == f"could not write {tmp_path / 'a.txt'}: Input/output error; fix that and rerun"  # noqa: E501  # fmt: skip
    assert not caught.value.disk_full
    assert _names(tmp_path) == []


def test_a_writer_bug_is_not_disguised_as_a_disk_error(tmp_path):
    with pytest.raises(TypeError), atomic_file(tmp_path / "a.txt") as handle:
        handle.write("text, not bytes")  # type: ignore[arg-type]
    assert _names(tmp_path) == []


def test_staging_reports_a_full_disk_against_the_output_folder(tmp_path):
    out_dir = tmp_path / "prepared"
    full = r"^disk full: no space left writing .*prepared;"
    with pytest.raises(FileWriteError, match=full), staging_dir(out_dir) as staged:
        (staged / "train.parquet").write_bytes(b"1")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert _names(tmp_path) == []


def test_publish_moves_the_staged_files_in_order(tmp_path):
    out_dir = tmp_path / "vocab"
    with staging_dir(out_dir) as staged:
        assert staged.name.startswith(f".vocab.{os.getpid()}.") and staged.name.endswith(".tmp")
        for name in ("a.model", "manifest.json"):
            (staged / name).write_text(name)
        publish(staged, out_dir, ["a.model", "manifest.json"])
    assert _names(out_dir) == ["a.model", "manifest.json"]
    assert _names(tmp_path) == ["vocab"]


def test_stale_temporary_files_of_a_killed_writer_are_removed(tmp_path):
    """A process killed (SIGKILL, as a power cut would) in the middle of its writes: the
    temporary files it left, in the folder, a subfolder and a staging sibling, go; the
    outputs and a running writer's temporary file stay."""
    reports = tmp_path / "reports"
    (reports / "plots").mkdir(parents=True)
    (reports / "metrics.json").write_text("{}")
    killed = subprocess.Popen(
        [sys.executable, "-c", (
            "import os, signal, tempfile\n"
            "from pathlib import Path\n"
            f"reports = Path({str(reports)!r})\n"
            "pid = os.getpid()\n"
            "(reports / f'.metrics.json.{pid}.tmp').write_text('{')\n"
            "(reports / 'plots' / f'.loss.png.{pid}.tmp').write_bytes(b'PNG')\n"
            "staged = tempfile.mkdtemp(prefix=f'.reports.{pid}.', suffix='.tmp', dir=reports.parent)\n"  # noqa: E501
            "Path(staged, 'part').write_text('x')\n"
            "os.kill(pid, signal.SIGKILL)\n"
        )],
    )  # fmt: skip
    assert killed.wait(timeout=60) == -signal.SIGKILL
    own = reports / f".train.json.{os.getpid()}.tmp"  # this process's own: a previous life's
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        in_flight = reports / f".samples.csv.{alive.pid}.tmp"
        in_flight.write_text("half")
        own.write_text("{")
        assert remove_stale_temp_files(reports) == 4
        assert remove_stale_temp_files(reports) == 0
        assert _names(reports) == [in_flight.name, "metrics.json", "plots"]
        assert _names(reports / "plots") == []
        assert _names(tmp_path) == ["reports"]
    finally:
        alive.kill()
        alive.wait()


def test_only_temporary_names_count_as_stale(tmp_path):
    dead = _dead_pid()
    keep = ["best.pt", f"notes.{dead}.txt", f"last.pt.{dead}.tmp", ".hidden.tmp"]
    for name in [*keep, f".best.pt.{dead}.tmp"]:
        (tmp_path / name).write_text("x")
    assert remove_stale_temp_files(tmp_path) == 1
    assert _names(tmp_path) == sorted(keep)
    assert remove_stale_temp_files(tmp_path / "missing") == 0
