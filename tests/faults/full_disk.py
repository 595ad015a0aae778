"""Run the `seq2seq` CLI as if the disk under one folder filled up: test-only, for machines
that may not mount a small tmpfs.

    python tests/faults/full_disk.py FOLDER ROOM_BYTES -- STAGE [ARGS...]

Files opened for writing under FOLDER share ROOM_BYTES; the write that would pass them
fails with ENOSPC, as a full filesystem's does. Every stage output goes through Python's
``open`` (seq2seq_core/runtime/files.py), so this sees all its bytes.
"""

from __future__ import annotations

import builtins
import errno
import os
import sys
from pathlib import Path
from typing import Any


class _Disk:
    def __init__(self, folder: Path, room: int) -> None:
        self.folder, self.room = folder.resolve(), room

    def holds(self, file: Any, mode: str) -> bool:
        if not isinstance(file, (str, os.PathLike)) or not set(mode) & set("wax+"):
            return False
        return Path(file).resolve().is_relative_to(self.folder)


class _FullingFile:
    """A file on ``disk``: its writes take room until there is none."""

    def __init__(self, handle: Any, disk: _Disk) -> None:
        self._handle, self._disk = handle, disk

    def write(self, data: Any) -> int:
        size = len(data.encode("utf-8") if isinstance(data, str) else data)
        if size > self._disk.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._disk.room -= size
        return self._handle.write(data)

    def __enter__(self) -> _FullingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()

    def __iter__(self) -> Any:
        return iter(self._handle)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


def install(folder: Path, room: int) -> None:
    disk, real_open = _Disk(folder, room), builtins.open

    def open_on_disk(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(file, mode, *args, **kwargs)
        return _FullingFile(handle, disk) if disk.holds(file, mode) else handle

    builtins.open = open_on_disk


def main(argv: list[str]) -> int:
    folder, room, separator, *cli_args = argv
    if separator != "--":
        raise SystemExit(__doc__)
    install(Path(folder), int(room))
    from flows.cli import main as cli_main

    return cli_main(cli_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
