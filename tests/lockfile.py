"""requirements.lock: every package `make install` installs, each at one version with the
sha256 of its files, and the digest of the inputs it was resolved from.

One implementation for the Makefile and the tests (tests/unit/test_lock.py):

    python tests/lockfile.py stamp requirements.lock    # make lock, after pip-compile
    python tests/lockfile.py verify requirements.lock   # make install, before pip runs
    python tests/lockfile.py entry pip                  # make install: the locked pip first

The inputs are pyproject.toml's dependency tables and the requirement lines of
constraints.txt (measured pins) and cve-floors.txt (the advisories' floors);
a lock stamped from other inputs is stale, and `make install` refuses it rather than
install a set that no longer matches pyproject.toml. Standard library only: `verify` runs
before the virtual environment exists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"
# The lock's inputs besides pyproject.toml, each a pip constraints file.
CONSTRAINTS = (ROOT / "constraints.txt", ROOT / "cve-floors.txt")
CVE_FLOORS = CONSTRAINTS[1]
DIGEST_PREFIX = "# inputs-sha256: "
# An entry once continuations are joined: `name==version --hash=sha256:... --hash=...`.
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")
_HASH = re.compile(r"--hash=sha256:([0-9a-f]+)")
_COMMENT = re.compile(r"(^|\s+)#.*$")


class LockError(Exception):
    """The lock is unreadable or was made from other inputs than the files beside it."""


@dataclass(frozen=True)
class Pin:
    """One locked package: its version and the sha256 of each file pip may install."""

    version: str
    hashes: tuple[str, ...]


def normalize(name: str) -> str:
    """PEP 503 name: `Flask_WTF` and `flask-wtf` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def constraint_lines(path: Path) -> list[str]:
    """A constraints file's requirement lines without comments; blank lines dropped."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def dependency_tables(path: Path = PYPROJECT) -> dict[str, list[str]]:
    """pyproject's requirement strings by table: `build-system`, `project`, one per extra."""
    data = tomllib.loads(path.read_text())
    tables = {
        "build-system": list(data["build-system"]["requires"]),
        "project": list(data["project"]["dependencies"]),
    }
    for extra, reqs in data["project"].get("optional-dependencies", {}).items():
        tables[f"extra:{extra}"] = list(reqs)
    return tables


def inputs_digest(pyproject: Path = PYPROJECT, constraints: tuple[Path, ...] = CONSTRAINTS) -> str:
    """sha256 over what the lock is resolved from; comments and formatting don't count."""
    data = tomllib.loads(pyproject.read_text())
    inputs = {
        "tables": dependency_tables(pyproject),
        "requires-python": data["project"].get("requires-python"),
        "constraints": {path.name: constraint_lines(path) for path in constraints},
    }
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def recorded_digest(lock: Path = LOCK) -> str | None:
    """The digest `stamp` wrote into the lock's header, or None when there is none."""
    for line in lock.read_text().splitlines():
        if line.startswith(DIGEST_PREFIX):
            words = line[len(DIGEST_PREFIX) :].split()
            return words[0] if words else None
    return None


def logical_lines(lock: Path) -> list[tuple[int, str]]:
    """(first line number, text): comments dropped, backslash continuations joined, as pip
    reads a requirements file; a `--hash` line cut off from its entry stands on its own."""
    joined: list[tuple[int, str]] = []
    parts: list[str] = []
    for number, line in enumerate(lock.read_text().splitlines(), start=1):
        if not parts:
            first = number
        text = _COMMENT.sub("", line).strip()
        parts.append(text.removesuffix("\\").strip())
        if not text.endswith("\\"):
            joined.append((first, " ".join(parts).strip()))
            parts = []
    if parts:
        joined.append((first, " ".join(parts).strip()))
    return joined


def read_pins(lock: Path = LOCK) -> dict[str, Pin]:
    """Normalized name -> Pin for every entry; a name locked twice is an error."""
    pins: dict[str, Pin] = {}
    for number, text in logical_lines(lock):
        if not text:
            continue
        match = _PIN.match(text)
        if match is None:
            raise LockError(f"{lock}:{number}: not a `name==version` entry: {text}")
        name = normalize(match.group(1))
        if name in pins:
            raise LockError(f"{lock}:{number}: {name} is locked twice")
        pins[name] = Pin(match.group(2), tuple(_HASH.findall(text)))
    return pins


def stamp(lock: Path = LOCK) -> str:
    """Write the inputs' digest as the lock's first line (replacing an old one)."""
    digest = inputs_digest()
    kept = [ln for ln in lock.read_text().splitlines() if not ln.startswith(DIGEST_PREFIX)]
    header = f"{DIGEST_PREFIX}{digest}  (pyproject.toml, constraints.txt, cve-floors.txt)"
    lock.write_text("\n".join([header, *kept]) + "\n")
    return digest


def verify(lock: Path = LOCK) -> None:
    """Raise LockError unless the lock exists and was stamped from today's inputs."""
    if not lock.is_file():
        raise LockError(f"{lock.name} is missing: run `make lock`")
    recorded = recorded_digest(lock)
    if recorded != inputs_digest():
        raise LockError(
            f"{lock.name} was resolved from other inputs than pyproject.toml, "
            "constraints.txt and cve-floors.txt as they are now: run `make lock` and commit it"
        )


def entry(name: str, lock: Path = LOCK) -> str:
    """One package's line of the lock, hashes included, for `pip install -r`."""
    pin = read_pins(lock).get(normalize(name))
    if pin is None:
        raise LockError(f"{lock.name} does not lock {name}")
    return " ".join(
        [f"{normalize(name)}=={pin.version}", *(f"--hash=sha256:{h}" for h in pin.hashes)]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    for action in ("stamp", "verify"):
        sub.add_parser(action).add_argument("lock", nargs="?", type=Path, default=LOCK)
    sub.add_parser("entry").add_argument("name")
    args = parser.parse_args(argv)
    try:
        if args.action == "stamp":
            print(f"{args.lock.name}: inputs-sha256 {stamp(args.lock)}")
        elif args.action == "entry":
            print(entry(args.name))
        else:
            verify(args.lock)
    except LockError as exc:
        print(f"lock: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
