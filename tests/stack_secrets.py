"""The stack's secrets: one file each, mode 0600, in a 0700 folder under the state dir.

A secret is generated (``secrets.token_urlsafe``) the first time it is asked for and read
back on every later start, so there is no default password anywhere and a restarted stack
keeps its credentials. Values travel to processes only through their environment or a
0600 file (a PGPASSFILE, a role's env file), never through a command line: ``ps`` shows
every process's arguments to every user of the host.
"""

from __future__ import annotations

import os
import secrets
import shlex
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def write_private(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` created with mode 0600 (never world-readable, not even for
    the moment between create and chmod), replacing any earlier file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)
    return path


def env_file(path: Path, env: dict[str, str]) -> Path:
    """A 0600 file of ``export NAME=value`` lines to ``source`` (a shell builtin: the values
    never become a process argument)."""
    lines = [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
    return write_private(path, "\n".join(lines) + "\n")


class SecretStore:
    """Named secrets in ``folder`` (created 0700): ``get`` makes one on first use."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(PRIVATE_DIR)

    def path(self, name: str) -> Path:
        return self.folder / name

    def get(self, name: str, nbytes: int = 24) -> str:
        """The secret ``name``: read from its file, or generated and written 0600."""
        path = self.path(name)
        if path.exists():
            return path.read_text(encoding="utf-8").strip()
        value = secrets.token_urlsafe(nbytes)
        write_private(path, value + "\n")
        return value

    def put(self, name: str, value: str) -> str:
        """Store a secret minted elsewhere (an object store's access key)."""
        write_private(self.path(name), value + "\n")
        return value

    def values(self) -> dict[str, str]:
        """Every stored secret by name: what a leak check greps for."""
        return {
            p.name: p.read_text(encoding="utf-8").strip()
            for p in sorted(self.folder.iterdir())
            if p.is_file() and not p.name.startswith(".") and "." not in p.name
        }
