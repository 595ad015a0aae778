"""Atomic writes: the one way the core and the flows put a file or a set of files in place,
so that a killed stage never leaves half a file, a reader never sees a set of files (a
vocabulary, the prepared splits) half replaced, and a power cut after a rename never
leaves an empty file under the new name.

Each write goes to a temporary file next to its target, is flushed and fsynced, renamed
over the target, and the folder is fsynced so that the rename itself survives a power cut.
A failed write removes its temporary file and raises :class:`FileWriteError`, a one-line
message naming the file and the problem. A process killed mid-write (power loss, SIGKILL)
cannot clean up: the stage that owns the folder removes such leftovers when it next starts
(:func:`remove_stale_temp_files`).
"""

from __future__ import annotations

import errno
import glob
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

# `.NAME.PID.tmp` (a file) or `.NAME.PID.XXXXXXXX.tmp` (a staging folder, mkdtemp's eight
# random characters): the process id says whether its writer can still be at work.
_TEMP_NAME = re.compile(r"^\..+?\.(?P<pid>\d+)(?:\.[a-z0-9_]{8})?\.tmp$")
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


class FileWriteError(OSError):
    """A stage output could not be written (disk full, read-only, I/O error): the file and
    the problem in one line, for a person to act on, not a traceback."""

    def __init__(self, path: Path, cause: OSError | None) -> None:
        code = cause.errno if cause is not None else None
        if code in _DISK_FULL:
            message = f"disk full: no space left writing {path}; free space and rerun"
        else:
            problem = (cause.strerror or str(cause)) if cause is not None else "write failed"
            message = f"could not write {path}: {problem}; fix that and rerun"
        super().__init__(message)
        self.errno = code  # type: ignore[misc]
        self.path = Path(path)
        self.message = message
        self._cause = cause

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled whole (Prefect keeps a failed task's exception in its state): not
        # rebuilt from the message alone, which would lose the path and the errno.
        return (type(self), (self.path, self._cause))

    @property
    def disk_full(self) -> bool:
        """No space (or quota) left: retrying before someone frees space cannot help."""
        return self.errno in _DISK_FULL

    def __str__(self) -> str:
        return self.message


def _os_error_in(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``, if any: torch.save reports a failed write of its file
    object as a RuntimeError whose context is the OSError (ENOSPC) the write raised."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and not isinstance(current, FileWriteError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(path: Path) -> Path:
    """Where ``path`` is written before its rename: the process id in the name keeps two
    writers of one file (two ranks, two runs) off each other's temporary file."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """An open binary file that becomes ``path`` when the block succeeds: flushed,
    fsynced, renamed over ``path``, the folder fsynced. On any failure the temporary file
    is removed; an OS error (disk full, I/O error) becomes a :class:`FileWriteError`.

    Writers take the file object, not a path (``torch.save(obj, f)``, ``fig.savefig(f,
    format="png")``, ``df.to_csv(f)``), so that every byte goes through one open file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        cause = _os_error_in(exc)
        if cause is not None:
            raise FileWriteError(path, cause) from exc
        raise
    _fsync_dir(path.parent)


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path) as handle:
        handle.write(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, payload: Any) -> None:
    """Indented UTF-8 JSON with a final newline, written atomically."""
    write_text(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


@contextmanager
def staging_dir(out_dir: Path) -> Iterator[Path]:
    """A temporary sibling of ``out_dir``, removed afterwards whatever happens: on the
    same filesystem, so that ``publish`` moves its files by rename. An OS error while
    staging (the disk filling up under a Parquet or PNG writer) becomes a
    :class:`FileWriteError` naming ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{out_dir.name}.{os.getpid()}."
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=out_dir.parent))
    try:
        yield tmp
    except Exception as exc:
        cause = _os_error_in(exc)
        if cause is not None:
            raise FileWriteError(out_dir, cause) from exc
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(staged: Path, out_dir: Path, names: Iterable[str]) -> None:
    """Rename the staged files into ``out_dir`` one by one, in the order given: name the
    file that marks the set complete (a manifest, a report) last. Each is fsynced before
    its rename and the folder after the last, so that a power cut leaves the old set or
    the new one, never names pointing at unwritten data."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(names)
    for name in names:
        fd = os.open(Path(staged) / name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for name in names:
        os.replace(Path(staged) / name, out_dir / name)
    _fsync_dir(out_dir)


def _writer_is_gone(pid: int) -> bool:
    """True when no process ``pid`` can still be writing here. This process counts as
    gone: a stage clears its folder before it writes, and a container restarted after a
    power cut may well be given the pid its killed predecessor had."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def remove_stale_temp_files(folder: Path) -> int:
    """Remove the temporary files (and staging folders) that a killed writer left in
    ``folder``, its subfolders and beside it (``publish``'s staging siblings); return how
    many. Those of a writer that is still running stay."""
    folder = Path(folder)
    stale: list[Path] = []
    if folder.is_dir():
        for root, dirs, files in os.walk(folder):
            stale += [Path(root) / name for name in [*dirs, *files] if _is_stale(name)]
            dirs[:] = [name for name in dirs if not _is_stale(name)]  # removed whole
    if folder.parent.is_dir():
        siblings = folder.parent.glob(f".{glob.escape(folder.name)}.*.tmp")
        stale += [path for path in siblings if path.is_dir() and _is_stale(path.name)]
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return len(stale)


def _is_stale(name: str) -> bool:
    match = _TEMP_NAME.match(name)
    return match is not None and _writer_is_gone(int(match["pid"]))
