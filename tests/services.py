"""The scale-out services on 127.0.0.1, each a process in its own group on a free port:
PostgreSQL, an S3-compatible object store (moto's server), the MLflow tracking server
(PostgreSQL backend, artifacts proxied to the bucket), the Prefect server (PostgreSQL) and
a Prefect process worker.

One implementation for the tests (integration/test_postgres.py, integration/test_scale_out.py)
and for people:

    python tests/services.py up --state .state/stack     # make stack: start, print the env
    python tests/services.py down --state .state/stack   # make stack-down: stop them

The project itself never sees moto: clients get only ``MLFLOW_TRACKING_URI``,
``PREFECT_API_URL``, ``AWS_*`` and the DVC remote's ``endpointurl``, as with MinIO or S3.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
BUCKET = "seq2seq"
# moto accepts any key; these stand for the credentials of a real bucket.
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "seq2seq-test-key",
    "AWS_SECRET_ACCESS_KEY": "seq2seq-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
QUIET = {
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}
START_TIMEOUT_S = 180


class ServiceError(RuntimeError):
    """A service did not start; the message carries the end of its log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pg_bin() -> Path | None:
    """The PostgreSQL server binaries: Debian's /usr/lib/postgresql/<v>/bin, else PATH."""
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists() and (candidate / "postgres").exists():
            return candidate
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("postgres") else None


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any Prefect/MLflow/AWS/DVC settings, quiet, venv first."""
    drop = ("PREFECT_", "MLFLOW_", "AWS_", "DVC_", "SEQ2SEQ_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env | QUIET | extra


def start(cmd: list[str], env: dict[str, str], log: Path, cwd: Path | None = None):
    """A process in its own group (its children stop with it), output appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_group(pid: int, first: signal.Signals = signal.SIGTERM, wait_s: float = 20) -> None:
    """Signal the process group ``pid`` leads, then SIGKILL what is left after ``wait_s``."""
    for sig in (first, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            _reap(pid)
            time.sleep(0.2)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen, log: Path, what: str) -> float:
    """Poll ``ready`` until it is true; seconds it took. Fails early when ``proc`` exits."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < START_TIMEOUT_S:
        if proc.poll() is not None:
            raise ServiceError(f"{what} exited with {proc.returncode}:\n{tail(log)}")
        try:
            if ready():
                return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.3)
    raise ServiceError(f"{what} not ready after {START_TIMEOUT_S} s:\n{tail(log)}")


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return resp.status == 200


def tcp_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


class Stack:
    """Services started in order, stopped in reverse (also when a start fails).

    ``client_env`` is what a pipeline machine, worker or person exports; ``timings`` the
    seconds each start took. ``services`` maps a name to (process, log, signal to stop).
    """

    def __init__(self, state: Path, *, bucket: str = BUCKET, ui: bool = False) -> None:
        self.state = Path(state)
        self.state.mkdir(parents=True, exist_ok=True)
        self.bucket = bucket
        self.ui = ui
        self.services: dict[str, tuple[subprocess.Popen, Path, signal.Signals]] = {}
        self.timings: dict[str, float] = {}
        self.client_env: dict[str, str] = {}
        self.s3_endpoint = self.postgres_url = ""
        self.pgdata: Path | None = None

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _add(self, name: str, proc: subprocess.Popen, sig: signal.Signals = signal.SIGTERM):
        self.services[name] = (proc, self.state / f"{name}.log", sig)
        return proc

    # ------------------------------------------------------------------ services

    def start_postgres(self, databases: tuple[str, ...] = ("mlflow", "prefect")) -> str:
        """initdb + postgres (as the `postgres` user when root: it refuses to run as root)."""
        binaries = pg_bin()
        if binaries is None:
            raise ServiceError("PostgreSQL not found (Debian: apt-get install postgresql)")
        t0 = time.monotonic()
        # Not under the repo or pytest's basetemp: the postgres user must own and reach it.
        self.pgdata = Path(tempfile.mkdtemp(prefix="seq2seq-pgdata-"))
        as_user: list[str] = []
        if os.geteuid() == 0:
            as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.pgdata, "postgres")
        initdb = [str(binaries / "initdb"), "-D", str(self.pgdata), "-U", "postgres"]
        subprocess.run([*as_user, *initdb, "-A", "trust"], check=True, capture_output=True)
        port = free_port()
        server = [str(binaries / "postgres"), "-D", str(self.pgdata), "-p", str(port)]
        socket_dir = ["-h", "127.0.0.1", "-k", str(self.pgdata)]
        log = self.state / "postgres.log"
        # SIGINT is PostgreSQL's fast shutdown (SIGTERM waits for clients to disconnect).
        proc = self._add(
            "postgres", start([*as_user, *server, *socket_dir], clean_env(), log), signal.SIGINT
        )
        ready = [str(binaries / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)]
        wait_until(lambda: subprocess.run(ready, capture_output=True).returncode == 0,
                   proc, log, "PostgreSQL")  # fmt: skip
        psql = [str(binaries / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
        for db in databases:
            subprocess.run([*psql, "-c", f"CREATE DATABASE {db}"], check=True, capture_output=True)
        self.postgres_url = f"postgresql://postgres@127.0.0.1:{port}"
        self.timings["postgres_start_s"] = round(time.monotonic() - t0, 1)
        return self.postgres_url

    def start_object_store(self) -> str:
        """moto's S3 server on a free port with the bucket created; returns the endpoint."""
        import boto3

        t0 = time.monotonic()
        port = free_port()
        log = self.state / "s3.log"
        proc = self._add(
            "s3", start([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                        clean_env(), log)
        )  # fmt: skip
        wait_until(lambda: tcp_open(port), proc, log, "S3 server (moto)")
        self.s3_endpoint = f"http://127.0.0.1:{port}"
        s3 = boto3.client("s3", endpoint_url=self.s3_endpoint, **_boto_credentials())
        s3.create_bucket(Bucket=self.bucket)
        self.timings["s3_start_s"] = round(time.monotonic() - t0, 1)
        return self.s3_endpoint

    def start_servers(self, prefect_env: dict[str, str] | None = None) -> None:
        """The MLflow and Prefect servers, started together (both migrate their database
        on first start), then waited for."""
        t0 = time.monotonic()
        mlflow_port, prefect_port = free_port(), free_port()
        mlflow_log, prefect_log = self.state / "mlflow.log", self.state / "prefect.log"
        # Only the tracking server holds the database URI and the S3 credentials.
        mlflow_env = clean_env(**S3_CREDENTIALS, MLFLOW_S3_ENDPOINT_URL=self.s3_endpoint)
        # No background job runner (GenAI scorers; unused here): it delays shutdown ~10 s.
        mlflow_env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        mlflow = self._add("mlflow", start(
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
             "--workers", "1", "--backend-store-uri", f"{self.postgres_url}/mlflow",
             "--artifacts-destination", f"s3://{self.bucket}/mlflow"],
            mlflow_env, mlflow_log, cwd=self.state,
        ))  # fmt: skip
        prefect_home = self.state / "prefect-server-home"
        prefect_home.mkdir(exist_ok=True)
        server_env = clean_env(
            PREFECT_HOME=str(prefect_home),
            PREFECT_API_DATABASE_CONNECTION_URL=self.postgres_url.replace(
                "postgresql://", "postgresql+asyncpg://"
            )
            + "/prefect",
            PREFECT_SERVER_UI_ENABLED=str(self.ui).lower(),
            **(prefect_env or {}),
        )
        prefect = self._add("prefect", start(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
             "--port", str(prefect_port)],
            server_env, prefect_log, cwd=self.state,
        ))  # fmt: skip
        mlflow_url = f"http://127.0.0.1:{mlflow_port}"
        api_url = f"http://127.0.0.1:{prefect_port}/api"
        wait_until(lambda: http_ok(f"{mlflow_url}/health"), mlflow, mlflow_log, "MLflow server")
        self.timings["mlflow_ready_s"] = round(time.monotonic() - t0, 1)
        wait_until(lambda: http_ok(f"{api_url}/health"), prefect, prefect_log, "Prefect server")
        self.timings["prefect_ready_s"] = round(time.monotonic() - t0, 1)
        self.client_env = {
            "MLFLOW_TRACKING_URI": mlflow_url,
            "PREFECT_API_URL": api_url,
            # For DVC's S3 remote only; MLflow clients go through the tracking server.
            **S3_CREDENTIALS,
        }

    def start_worker(self, project: Path, env: dict[str, str], pool: str) -> subprocess.Popen:
        """`prefect worker start` for a process pool, in ``project`` (a clone)."""
        cmd = [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"]
        return self._add("worker", start(cmd, env, self.state / "worker.log", cwd=project))

    def up(self, prefect_env: dict[str, str] | None = None) -> Stack:
        self.start_postgres()
        self.start_object_store()
        self.start_servers(prefect_env)
        return self

    # ------------------------------------------------------------------ stop

    def stop(self) -> None:
        for name in reversed(list(self.services)):
            proc, _, sig = self.services.pop(name)
            t0 = time.monotonic()
            stop_group(proc.pid, sig)
            proc.poll()
            self.timings[f"{name}_stop_s"] = round(time.monotonic() - t0, 1)
        if self.pgdata is not None:
            shutil.rmtree(self.pgdata, ignore_errors=True)
            self.pgdata = None

    def detach(self) -> dict[str, Any]:
        """Forget the processes (they keep running) and return what `down` needs."""
        record = {
            "services": [[name, proc.pid, int(sig)] for name, (proc, _, sig) in
                         self.services.items()],
            "pgdata": str(self.pgdata) if self.pgdata else None,
        }  # fmt: skip
        self.services, self.pgdata = {}, None
        return record


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_CREDENTIALS["AWS_DEFAULT_REGION"],
    }


def s3_objects(endpoint: str, bucket: str, prefix: str) -> dict[str, str]:
    """Key -> ETag (the MD5 of a single-part upload) of every object under ``prefix``."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, **_boto_credentials())
    found: dict[str, str] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found |= {obj["Key"]: obj["ETag"].strip('"') for obj in page.get("Contents", [])}
    return found


# ---------------------------------------------------------------------- make stack


def _exports(stack: Stack, repo: Path) -> dict[str, str]:
    return {
        **stack.client_env,
        "SEQ2SEQ_PROJECT_DIR": str(repo),
    }


def cmd_up(state: Path, repo: Path, pool: str) -> int:
    if (state / "pids.json").exists():
        print(f"a stack is already up ({state / 'pids.json'}); run `make stack-down` first")
        return 1
    stack = Stack(state, ui=True)
    try:
        stack.up()
        env = _exports(stack, repo)
        worker_env = clean_env(**env, PREFECT_HOME=str(state / "worker-home"))
        stack.start_worker(repo, worker_env, pool)
    except BaseException:
        stack.stop()
        raise
    record = stack.detach() | {"s3_endpoint": stack.s3_endpoint, "bucket": stack.bucket}
    (state / "pids.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    lines = [f"export {k}={v}" for k, v in env.items()]
    (state / "env.sh").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join([
        f"Stack up (logs in {state}): PostgreSQL {stack.postgres_url}, S3 (moto) "
        f"{stack.s3_endpoint} bucket {stack.bucket}, a worker on pool {pool} in {repo}.",
        f"MLflow UI {env['MLFLOW_TRACKING_URI']}   Prefect UI {env['PREFECT_API_URL'][:-4]}",
        "",
        f"# export these (or: source {state / 'env.sh'})",
        *lines,
        "",
        "# then: make deploy; .venv/bin/prefect deployment run "
        "seq2seq-training-pipeline/nightly-retrain",
        "# DVC on the same bucket (changes .dvc/config; not needed for the flow):",
        f"#   dvc remote add -d s3 s3://{stack.bucket}/dvc",
        f"#   dvc remote modify s3 endpointurl {stack.s3_endpoint}",
    ]))  # fmt: skip
    return 0


def cmd_down(state: Path) -> int:
    pids = state / "pids.json"
    if not pids.exists():
        print(f"no stack recorded in {pids}")
        return 0
    record = json.loads(pids.read_text(encoding="utf-8"))
    for name, pid, sig in reversed(record["services"]):
        stop_group(pid, signal.Signals(sig))
        print(f"stopped {name} (process group {pid})")
    if record.get("pgdata"):
        shutil.rmtree(record["pgdata"], ignore_errors=True)
    pids.unlink()
    (state / "env.sh").unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--state", type=Path, default=Path(".state/stack"))
    parser.add_argument("--repo", type=Path, default=Path.cwd(), help="the worker's clone")
    parser.add_argument("--pool", default="seq2seq-process")
    args = parser.parse_args(argv)
    state = args.state.resolve()
    if args.action == "up":
        return cmd_up(state, args.repo.resolve(), args.pool)
    return cmd_down(state)


if __name__ == "__main__":
    sys.exit(main())
