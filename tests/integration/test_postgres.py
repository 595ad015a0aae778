"""The MLflow backend switch is configuration only: the stages and the registry against a
real PostgreSQL (started here on a loopback port), chosen by MLFLOW_TRACKING_URI alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import Stack, pg_bin

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def postgres_uri(tmp_path_factory: pytest.TempPathFactory):
    if pg_bin() is None:
        pytest.skip("PostgreSQL server binaries not found (Debian: apt-get install postgresql)")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("psycopg2 is not installed (pip install psycopg2-binary)")
    with Stack(tmp_path_factory.mktemp("postgres")) as stack:
        stack.start_postgres({"mlflow": ("mlflow",)})
        # The URI names the role, not its password: libpq reads that from the PGPASSFILE.
        yield stack.database_url("mlflow"), stack.pgpass("mlflow")


def test_stages_and_registry_on_postgres(
    postgres_uri: tuple[str, Path], tiny_params_file: Path
) -> None:
    uri, pgpass = postgres_uri
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PGPASSFILE": str(pgpass)}
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

    engine = sqlalchemy.create_engine(uri, connect_args={"passfile": str(pgpass)})
    with engine.connect() as conn:
        rows = conn.execute(sqlalchemy.text("SELECT name, version FROM model_versions")).fetchall()
        aliases = conn.execute(
            sqlalchemy.text("SELECT alias, version FROM registered_model_aliases")
        ).fetchall()
    engine.dispose()
    assert [(r[0], int(r[1])) for r in rows] == [("seq2seq-translator", 1)]
    assert sorted((a[0], int(a[1])) for a in aliases) == [("challenger", 1), ("champion", 1)]
