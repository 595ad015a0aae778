"""No object collective and no pickle on the distributed path: torch's ``*_object``
collectives unpickle what any peer sends (runtime.distributed says what replaces them)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
OBJECT_COLLECTIVE = re.compile(
    r"\b(all_gather_object|gather_object|scatter_object_list|broadcast_object_list"
    r"|send_object_list|recv_object_list|_object_list|\w+_object)\s*\("
)
PICKLE = re.compile(r"^\s*(import|from)\s+(c?pickle|cloudpickle|dill)\b|\bpickle\.loads?\(", re.M)


def _sources() -> list[Path]:
    files = [p for top in ("seq2seq_core", "flows") for p in (REPO / top).rglob("*.py")]
    assert len(files) > 40  # the scan really reads the packages
    return files


def test_no_object_collective_in_the_code() -> None:
    found = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for path in _sources()
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if OBJECT_COLLECTIVE.search(line)
    ]
    assert found == []


def test_no_pickle_in_the_code() -> None:
    found = [str(p.relative_to(REPO)) for p in _sources() if PICKLE.search(p.read_text("utf-8"))]
    assert found == []


def test_the_scan_sees_what_it_looks_for() -> None:
    assert OBJECT_COLLECTIVE.search("    dist.all_gather_object(out, value)")
    assert OBJECT_COLLECTIVE.search("dist.broadcast_object_list(box, src=0)")
    assert OBJECT_COLLECTIVE.search("torch.distributed.gather_object (x)")
    assert not OBJECT_COLLECTIVE.search("all_gather_json(value, topo)")
    assert PICKLE.search("import pickle\n") and PICKLE.search("x = pickle.loads(b)")
