"""Disk full and power loss: the real `seq2seq train` and `seq2seq evaluate` in a process of
their own, their output folder full part way through (a small tmpfs where this machine may
mount one, else writes that fail with ENOSPC after a number of bytes: full_disk.py).

Each must stop with one line naming the file and the problem, leave no temporary file and
no "done" mark, and the next run, once there is room, must succeed; a temporary file that a
killed run (power loss) left behind is removed by that next run, which says so.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from seq2seq_core.model.checkpoint import load_checkpoint
from tests.support import REPO, TrainedWorkspace, copy_workspace

pytestmark = [pytest.mark.faults, pytest.mark.integration]

FULL_DISK = REPO / "tests" / "faults" / "full_disk.py"
TINY = {"train": {"max_epochs": 1}, "evaluate": {"heatmap_sentences": 1}}
# Evaluate's text outputs (hypotheses, references, tables: ~9 kB in six files, each one
# 4 KiB page on a tmpfs) fit; the first plot (loss.png, ~39 kB) does not.
EVALUATE_ROOM = {"injected": 12_000, "tmpfs": 32 * 1024}
STALE_LOG = "removed 1 stale temporary file(s) in {folder} left by an interrupted run"


def _cli(
    workspace: Path, *args: str, full: tuple[Path, int] | None = None
) -> subprocess.CompletedProcess:
    """`seq2seq ARGS` in ``workspace``; with ``full`` = (folder, bytes), the folder has
    that much room left (full_disk.py)."""
    prefix = [str(FULL_DISK), str(full[0]), str(full[1]), "--"] if full else ["-m", "flows.cli"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *prefix, *args], cwd=workspace, env=env, capture_output=True,
        text=True, timeout=300, check=False,
    )  # fmt: skip


class _FullFolder:
    """A folder with little room left, until ``free()``: the ``full`` argument of ``_cli``
    for the injected variant; a small tmpfs with a ballast file for the other."""

    def __init__(self, folder: Path, room: int, ballast: Path | None) -> None:
        self.folder, self.ballast = folder, ballast
        self.full = (folder, room) if ballast is None else None

    def free(self) -> None:
        if self.ballast is not None:
            self.ballast.unlink()
        self.full = None


@contextmanager
def _full_folder(variant: str, folder: Path, room: int) -> Iterator[_FullFolder]:
    folder.mkdir(parents=True, exist_ok=True)
    if variant == "injected":
        yield _FullFolder(folder, room, None)
        return
    if shutil.which("mount") is None:
        pytest.skip("no mount command here; the injected variant runs")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); the injected variant runs")
    try:
        stat, ballast = os.statvfs(folder), folder / "ballast"
        ballast.write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - room))
        yield _FullFolder(folder, room, ballast)
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _temp_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name.endswith(".tmp"))


def _leave_stale_temp_file(folder: Path, name: str) -> None:
    """What a power cut leaves: a process killed mid-write, its temporary file in place."""
    code = (
        "import os, signal, sys\n"
        f"open(os.path.join(sys.argv[1], '.{name}.%d.tmp' % os.getpid()), 'wb').write(b'half')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(folder)], check=False)
    assert proc.returncode == -signal.SIGKILL
    assert len(_temp_files(folder)) == 1


def _assert_one_line_error(proc: subprocess.CompletedProcess, command: str, pattern: str) -> None:
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"seq2seq {command}: disk full: no space left writing "), last
    assert last.endswith("; free space and rerun"), last
    assert re.search(pattern, last), last


@pytest.fixture(params=["tmpfs", "injected"])
def variant(request: pytest.FixtureRequest) -> str:
    return request.param


def test_full_disk_during_a_checkpoint(
    variant: str, trained_workspace: TrainedWorkspace, tmp_path: Path
) -> None:
    """Room for best.pt but not for last.pt (Adam's moments make it about three times the
    size): best.pt stays whole, last.pt's temporary file goes; with room, training runs."""
    workspace = copy_workspace(trained_workspace, tmp_path / "ws", **TINY)
    checkpoints = workspace / trained_workspace.cfg.train.checkpoint_dir
    best, last = checkpoints / "best.pt", checkpoints / "last.pt"
    room = (best.stat().st_size + last.stat().st_size) // 2
    for path in checkpoints.iterdir():
        path.unlink()
    with _full_folder(variant, checkpoints, room) as disk:
        failed = _cli(workspace, "train", full=disk.full)
        _assert_one_line_error(failed, "train", r"writing \S*checkpoints/last\.pt;")
        assert _temp_files(checkpoints) == []
        assert not last.exists()
        assert load_checkpoint(best)["epoch"] == 1  # the whole file, renamed into place

        disk.free()
        _leave_stale_temp_file(checkpoints, "last.pt")
        rerun = _cli(workspace, "train", full=disk.full)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert STALE_LOG.format(folder=trained_workspace.cfg.train.checkpoint_dir) in rerun.stderr
        assert _temp_files(checkpoints) == []
        assert load_checkpoint(last)["progress"]["epoch"] == 1


def test_full_disk_during_evaluate(
    variant: str, trained_workspace: TrainedWorkspace, tmp_path: Path
) -> None:
    """Room for the hypotheses and tables but not the plots: no metrics.json (the stage's
    done mark, written last), no temporary file; with room, evaluate writes them all."""
    workspace = copy_workspace(trained_workspace, tmp_path / "ws", **TINY)
    reports = workspace / trained_workspace.cfg.evaluate.reports_dir
    with _full_folder(variant, reports, EVALUATE_ROOM[variant]) as disk:
        failed = _cli(workspace, "evaluate", full=disk.full)
        _assert_one_line_error(failed, "evaluate", r"writing \S*reports/plots/loss\.png;")
        assert _temp_files(reports) == []
        assert not (reports / "metrics.json").exists()
        assert (reports / "test_hypotheses.txt").is_file()  # written before the plots

        disk.free()
        _leave_stale_temp_file(reports, "metrics.json")
        rerun = _cli(workspace, "evaluate", full=disk.full)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert STALE_LOG.format(folder=trained_workspace.cfg.evaluate.reports_dir) in rerun.stderr
        assert _temp_files(reports) == []
        hypotheses = (reports / "test_hypotheses.txt").read_text(encoding="utf-8").splitlines()
        references = (reports / "test_references.txt").read_text(encoding="utf-8").splitlines()
        assert len(hypotheses) == len(references) > 0
        assert (reports / "metrics.json").is_file()
        assert (reports / "plots" / "loss.png").is_file()
