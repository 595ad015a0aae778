"""flows/registry_lock.py: which lock a store gets, the holder squeezed into PostgreSQL's
application_name and back, and the SQLite store's lock giving up with the holder named
(the PostgreSQL lock between two machines runs in tests/faults/test_promotion_faults.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flows import registry_lock
from flows.registry_lock import RegistryBusyError, lock_dsn, lock_kind
from flows.workspace_lock import describe_holder, holder_record

PG = "postgresql+psycopg2://mlflow@127.0.0.1:5432/mlflow"


@pytest.mark.parametrize(
    ("uri", "env", "kind"),
    [
        (PG, {}, "postgres"),
        ("http://mlflow:5000", {"SEQ2SEQ_REGISTRY_LOCK_URL": "postgresql://l@h/locks"}, "postgres"),
        ("sqlite:////tmp/mlflow.db", {}, "file"),
        ("http://mlflow:5000", {"PREFECT_API_URL": "http://prefect:4200/api"}, "prefect"),
        ("http://mlflow:5000", {}, "machine"),
    ],
)
def test_lock_kind_follows_the_store(uri: str, env: dict[str, str], kind: str) -> None:
    assert lock_kind(uri, env) == kind


def test_lock_dsn_is_libpq_s_uri() -> None:
    assert lock_dsn(PG, {}) == "postgresql://mlflow@127.0.0.1:5432/mlflow"
    env = {"SEQ2SEQ_REGISTRY_LOCK_URL": "postgresql://locker@db:5432/locks"}
    assert lock_dsn("http://mlflow:5000", env) == "postgresql://locker@db:5432/locks"


def test_the_holder_survives_application_name() -> None:
    record = {"pid": 4242, "host": "worker-7", "flow_run": "0b9d6c1e-aaaa-bbbb",
              "command": "seq2seq promote"}  # fmt: skip
    name = registry_lock.application_name(record)
    assert len(name.encode()) <= 63
    back = registry_lock.record_of_application_name(name, "2026-12-06T00:00:00+00:00")
    assert describe_holder(back) == (
        "pid 4242 on worker-7, since 2026-12-06T00:00:00+00:00 (flow run '0b9d6c1e'; "
        "seq2seq promote)"
    )
    assert registry_lock.record_of_application_name("psql")["command"] == "psql"


HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from flows.registry_lock import registry_lock
    with registry_lock(sys.argv[1], timeout_min=1, command="seq2seq promote --force"):
        Path(sys.argv[2]).write_text("held")
        time.sleep(60)
    """
)


def test_a_sqlite_store_s_lock_gives_up_naming_the_holder(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ready = tmp_path / "held"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, uri, str(ready)])
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert holder.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        with (
            pytest.raises(RegistryBusyError) as err,
            registry_lock.registry_lock(uri, timeout_min=0.02),
        ):
            pytest.fail("took a registry lock another process holds")
    finally:
        holder.kill()
        holder.wait()
    message = str(err.value)
    assert f"registry lock {tmp_path / 'mlflow.db.registry.lock'}" in message
    assert f"pid {holder.pid} on " in message and "seq2seq promote --force" in message
    with registry_lock.registry_lock(uri, timeout_min=0.02):  # the kernel freed it
        assert holder_record()["pid"] != holder.pid
