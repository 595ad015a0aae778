"""The MLflow backend switch is configuration only: the stages and the registry against a
real PostgreSQL (started here on a loopback port), chosen by MLFLOW_TRACKING_URI alone."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _pg_bin() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists() and (candidate / "postgres").exists():
            return candidate
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("postgres") else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_uri():
    pg_bin = _pg_bin()
    if pg_bin is None:
        pytest.skip("PostgreSQL server binaries not found (Debian: apt-get install postgresql)")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("psycopg2 is not installed (pip install psycopg2-binary)")
    # Not under pytest's basetemp: as root that is private to root, and postgres refuses
    # to run as root, so the server runs as the `postgres` user in a dir it owns.
    data = Path(tempfile.mkdtemp(prefix="seq2seq-pgdata-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(data, "postgres")
    run = subprocess.run
    run([*as_user, str(pg_bin / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"],
        check=True, capture_output=True)  # fmt: skip
    port = _free_port()
    server = subprocess.Popen(
        [*as_user, str(pg_bin / "postgres"), "-D", str(data), "-p", str(port),
         "-h", "127.0.0.1", "-k", str(data)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 30
        while True:
            probe = run([str(pg_bin / "pg_isready") if (pg_bin / "pg_isready").exists()
                         else "pg_isready", "-h", "127.0.0.1", "-p", str(port)],
                        capture_output=True, check=False)  # fmt: skip
            if probe.returncode == 0:
                break
            if time.time() > deadline:
                pytest.fail("PostgreSQL did not start within 30 s")
            time.sleep(0.3)
        run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c",
             "CREATE DATABASE mlflow"], check=True, capture_output=True)  # fmt: skip
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(data, ignore_errors=True)


def test_stages_and_registry_on_postgres(postgres_uri: str, tiny_params_file: Path) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": postgres_uri}
    cli = [sys.executable, "-m", "flows.cli"]
    for stage in ("ingest", "vocab", "train", "evaluate", "register"):
        proc = subprocess.run(
            [*cli, stage, "--set", "train.max_epochs=1"], env=env, capture_output=True,
            text=True, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, f"{stage}: {proc.stderr[-2000:]}"
    record = json.loads(Path("reports/registration.json").read_text(encoding="utf-8"))
    assert record["version"] == 1 and record["promoted"]
    assert not Path("mlflow.db").exists()  # nothing fell back to SQLite

    import sqlalchemy

    engine = sqlalchemy.create_engine(postgres_uri)
    with engine.connect() as conn:
        rows = conn.execute(sqlalchemy.text("SELECT name, version FROM model_versions")).fetchall()
        aliases = conn.execute(
            sqlalchemy.text("SELECT alias, version FROM registered_model_aliases")
        ).fetchall()
    engine.dispose()
    assert [(r[0], int(r[1])) for r in rows] == [("seq2seq-translator", 1)]
    assert sorted((a[0], int(a[1])) for a in aliases) == [("challenger", 1), ("champion", 1)]
