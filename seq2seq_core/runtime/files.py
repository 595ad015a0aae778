"""Atomic writes: the one way the core puts a file or a set of files in place, so that a
killed stage never leaves half a file, and a reader never sees a set of files (a
vocabulary, the prepared splits) half replaced."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path next to ``path`` to write to; renamed over ``path`` when the block
    succeeds, removed when it fails. The process id in its name keeps two writers of one
    file (two ranks, two runs) off each other's temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, payload: Any) -> None:
    """Indented UTF-8 JSON with a final newline, written atomically."""
    write_text(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


@contextmanager
def staging_dir(out_dir: Path) -> Iterator[Path]:
    """A temporary sibling of ``out_dir``, removed afterwards whatever happens: on the
    same filesystem, so that ``publish`` moves its files by rename."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(staged: Path, out_dir: Path, names: Iterable[str]) -> None:
    """Rename the staged files into ``out_dir`` one by one, in the order given: name the
    file that marks the set complete (a manifest, a report) last."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        os.replace(Path(staged) / name, out_dir / name)
