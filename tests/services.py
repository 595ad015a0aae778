"""The scale-out services on 127.0.0.1, each a process in its own group on a free port,
each behind its own credentials: PostgreSQL (scram-sha-256), an S3-compatible object store
(moto's server with IAM enforced), the MLflow tracking server (basic-auth app, PostgreSQL
backend, artifacts proxied to the bucket), the Prefect server (API auth string,
PostgreSQL) and a Prefect process worker.

One implementation for the tests (integration/test_postgres.py, integration/test_scale_out.py,
integration/test_security.py) and for people:

    python -m tests.services up --state .state/stack     # make stack: start, write env files
    python -m tests.services down --state .state/stack   # make stack-down: stop them

Secrets live in ``<state>/secrets/`` (tests/stack_secrets.py: 0600 files, generated once);
each role's variables in ``<state>/<role>.env`` (0600) to ``source``. Nothing secret is
printed, logged, written to pids.json or passed as a process argument.

The project itself never sees moto: clients get only ``MLFLOW_TRACKING_URI`` (+ user and
password), ``PREFECT_API_URL`` (+ auth string), ``AWS_*`` and the DVC remote's
``endpointurl``, as with MinIO or S3.
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

from tests.stack_access import (
    MLFLOW_ADMIN,
    MLFLOW_GRANTS,
    S3_BOOTSTRAP_ACTIONS,
    bootstrap_s3,
    boto_credentials,
    provision_mlflow,
)
from tests.stack_secrets import SecretStore, env_file, write_private
from tests.tcp_gate import TcpGate

BIN = Path(sys.executable).parent
BUCKET = "seq2seq"
# PostgreSQL roles -> the databases each owns; the superuser is used only to create them.
DB_ROLES = {"mlflow": ("mlflow", "mlflow_auth"), "prefect": ("prefect",)}
PREFECT_AUTH_USER = "seq2seq"
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

    ``role_env(role)`` is what a worker, maintainer or reader exports (``client_env`` is
    the worker's); ``timings`` the seconds each start took. ``services`` maps a name to
    (process, log, signal to stop). ``secrets`` holds every credential (0600 files under
    ``<state>/secrets``), generated on the first start and reused afterwards.
    """

    def __init__(self, state: Path, *, bucket: str = BUCKET, ui: bool = False) -> None:
        self.state = Path(state)
        self.state.mkdir(parents=True, exist_ok=True)
        self.secrets = SecretStore(self.state / "secrets")
        self.bucket = bucket
        self.ui = ui
        self.services: dict[str, tuple[subprocess.Popen, Path, signal.Signals]] = {}
        self.timings: dict[str, float] = {}
        self.client_env: dict[str, str] = {}
        self.s3_credentials: dict[str, str] = {}
        self.s3_endpoint = self.postgres_url = self.mlflow_url = self.prefect_api = ""
        self.postgres_port = 0
        self.pgdata: Path | None = None
        self.s3_gate: TcpGate | None = None
        self.s3_server_endpoint = ""  # set by gate_object_store: the store behind the gate

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _add(self, name: str, proc: subprocess.Popen, sig: signal.Signals = signal.SIGTERM):
        self.services[name] = (proc, self.state / f"{name}.log", sig)
        return proc

    # ------------------------------------------------------------------ credentials

    def database_url(self, role: str, database: str | None = None,
                     driver: str = "postgresql") -> str:  # fmt: skip
        """``role``'s URI of ``database`` (default: the role's name), with no password in
        it: libpq reads it from ``pgpass(role)`` (``PGPASSFILE``)."""
        return f"{driver}://{role}@127.0.0.1:{self.postgres_port}/{database or role}"

    def pgpass(self, role: str) -> Path:
        """A 0600 PGPASSFILE holding ``role``'s password alone."""
        return self.secrets.path(f"{role}.pgpass")

    def prefect_auth_string(self) -> str:
        return f"{PREFECT_AUTH_USER}:{self.secrets.get('prefect-auth')}"

    def role_env(self, role: str) -> dict[str, str]:
        """A role's client variables: the MLflow user of the same name; the worker and the
        maintainer also get the Prefect auth string and the bucket's key (DVC); the reader
        gets nothing but read access to MLflow."""
        env = {
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "MLFLOW_TRACKING_USERNAME": role,
            "MLFLOW_TRACKING_PASSWORD": self.secrets.get(f"mlflow-{role}"),
            # Every download through the server, where the auth app checks it. MLflow 3.17
            # otherwise hands S3-backed clients presigned bucket URLs (signed with the
            # server's key, which then shows in the bucket's access log), and moto's IAM
            # refuses those.
            "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false",
        }
        if role == "reader":
            return env
        return env | {
            "PREFECT_API_URL": self.prefect_api,
            "PREFECT_API_AUTH_STRING": self.prefect_auth_string(),
            # For DVC's S3 remote only; MLflow clients go through the tracking server.
            **self.s3_credentials,
        }

    # ------------------------------------------------------------------ services

    def start_postgres(self, roles: dict[str, tuple[str, ...]] = DB_ROLES) -> str:
        """initdb with scram-sha-256 and a generated superuser password, then postgres (as
        the `postgres` user when root: it refuses to run as root); each role in ``roles``
        gets its own password and owns its databases. Returns the URL of the server."""
        binaries = pg_bin()
        if binaries is None:
            raise ServiceError("PostgreSQL not found (Debian: apt-get install postgresql)")
        t0 = time.monotonic()
        # Not under the repo or pytest's basetemp: the postgres user must own and reach it.
        self.pgdata = Path(tempfile.mkdtemp(prefix="seq2seq-pgdata-"))
        data = self.pgdata / "data"
        as_user: list[str] = []
        if os.geteuid() == 0:
            as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.pgdata, "postgres")
        # initdb reads the superuser's password from a file (never an argument); this copy
        # lives, 0600 and owned by the server's user, only while initdb runs.
        superuser = self.secrets.get("postgres-superuser")
        pwfile = write_private(self.pgdata / "pwfile", superuser + "\n")
        if as_user:
            shutil.chown(pwfile, "postgres")
        initdb = [str(binaries / "initdb"), "-D", str(data), "-U", "postgres",
                  "--auth=scram-sha-256", f"--pwfile={pwfile}"]  # fmt: skip
        try:
            subprocess.run([*as_user, *initdb], check=True, capture_output=True)
        finally:
            pwfile.unlink(missing_ok=True)
        port = self.postgres_port = free_port()
        server = [str(binaries / "postgres"), "-D", str(data), "-p", str(port)]
        socket_dir = ["-h", "127.0.0.1", "-k", str(self.pgdata)]
        log = self.state / "postgres.log"
        # SIGINT is PostgreSQL's fast shutdown (SIGTERM waits for clients to disconnect).
        proc = self._add(
            "postgres", start([*as_user, *server, *socket_dir], clean_env(), log), signal.SIGINT
        )
        ready = [str(binaries / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)]
        wait_until(lambda: subprocess.run(ready, capture_output=True).returncode == 0,
                   proc, log, "PostgreSQL")  # fmt: skip
        self._create_roles(roles, superuser)
        self.postgres_url = f"postgresql://127.0.0.1:{port}"
        self.timings["postgres_start_s"] = round(time.monotonic() - t0, 1)
        return self.postgres_url

    def _create_roles(self, roles: dict[str, tuple[str, ...]], superuser: str) -> None:
        import psycopg2
        from psycopg2 import sql

        conn = psycopg2.connect(host="127.0.0.1", port=self.postgres_port, user="postgres",
                                password=superuser, dbname="postgres")  # fmt: skip
        conn.autocommit = True  # CREATE DATABASE refuses to run in a transaction
        try:
            with conn.cursor() as cur:
                for role, databases in roles.items():
                    password = self.secrets.get(f"postgres-{role}")
                    cur.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(
                        sql.Identifier(role)), (password,))  # fmt: skip
                    for db in databases:
                        name = sql.Identifier(db)
                        cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                            name, sql.Identifier(role)))  # fmt: skip
                        # Only the owner (and the superuser) may connect to it.
                        cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(name))
                    line = f"127.0.0.1:{self.postgres_port}:*:{role}:{password}\n"
                    write_private(self.pgpass(role), line)
        finally:
            conn.close()

    def start_object_store(self) -> str:
        """moto's S3 server on a free port with IAM enforced after the bootstrap actions
        (tests/stack_access.py); returns the endpoint. The key is minted by the store."""
        t0 = time.monotonic()
        port = free_port()
        log = self.state / "s3.log"
        env = clean_env(INITIAL_NO_AUTH_ACTION_COUNT=str(S3_BOOTSTRAP_ACTIONS))
        proc = self._add(
            "s3", start([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], env, log)
        )
        wait_until(lambda: tcp_open(port), proc, log, "S3 server (moto)")
        self.s3_endpoint = f"http://127.0.0.1:{port}"
        self.s3_credentials = bootstrap_s3(self.s3_endpoint, self.bucket)
        self.secrets.put("s3-access-key-id", self.s3_credentials["AWS_ACCESS_KEY_ID"])
        self.secrets.put("s3-secret-access-key", self.s3_credentials["AWS_SECRET_ACCESS_KEY"])
        self.timings["s3_start_s"] = round(time.monotonic() - t0, 1)
        return self.s3_endpoint

    def _mlflow_env(self) -> dict[str, str]:
        """The tracking server's environment: the only process with the database password
        (PGPASSFILE) and, with the workers, the bucket's key."""
        ini = write_private(self.state / "mlflow-auth.ini", "\n".join([
            "[mlflow]",
            # A user sees only what they were granted (tests/stack_access.py).
            "default_permission = NO_PERMISSIONS",
            f"database_uri = {self.database_url('mlflow', 'mlflow_auth')}",
            f"admin_username = {MLFLOW_ADMIN}",
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
            # Each request re-hashes the password (PBKDF2) unless the check is cached; a
            # pipeline run makes hundreds of requests. One server worker: a password change
            # through the API takes effect at once.
            "auth_cache_ttl_seconds = 60",
        ]) + "\n")  # fmt: skip
        return clean_env(
            **self.s3_credentials,
            # The store itself, not a gate before it (gate_object_store): a restarted server
            # keeps its route when a test shuts the gate on DVC.
            MLFLOW_S3_ENDPOINT_URL=self.s3_server_endpoint or self.s3_endpoint,
            MLFLOW_BACKEND_STORE_URI=self.database_url("mlflow"),
            PGPASSFILE=str(self.pgpass("mlflow")),
            MLFLOW_AUTH_CONFIG_PATH=str(ini),
            MLFLOW_AUTH_ADMIN_PASSWORD=self.secrets.get("mlflow-admin"),
            MLFLOW_FLASK_SERVER_SECRET_KEY=self.secrets.get("mlflow-flask-secret-key"),
            # No background job runner (GenAI scorers; unused here): it delays shutdown ~10 s.
            MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        )

    def start_servers(self, prefect_env: dict[str, str] | None = None) -> None:
        """The MLflow and Prefect servers, started together (both migrate their database
        on first start), then waited for; then MLflow's users and grants."""
        t0 = time.monotonic()
        mlflow_port, prefect_port = free_port(), free_port()
        mlflow_log, prefect_log = self.state / "mlflow.log", self.state / "prefect.log"
        mlflow = self._start_mlflow(mlflow_port)
        prefect_home = self.state / "prefect-server-home"
        prefect_home.mkdir(exist_ok=True)
        server_env = clean_env(
            PREFECT_HOME=str(prefect_home),
            PREFECT_SERVER_DATABASE_DRIVER="postgresql+asyncpg",
            PREFECT_SERVER_DATABASE_HOST="127.0.0.1",
            PREFECT_SERVER_DATABASE_PORT=str(self.postgres_port),
            PREFECT_SERVER_DATABASE_USER="prefect",
            PREFECT_SERVER_DATABASE_NAME="prefect",
            PREFECT_SERVER_DATABASE_PASSWORD=self.secrets.get("postgres-prefect"),
            PREFECT_SERVER_API_AUTH_STRING=self.prefect_auth_string(),
            PREFECT_SERVER_UI_ENABLED=str(self.ui).lower(),
            **(prefect_env or {}),
        )
        prefect = self._add("prefect", start(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
             "--port", str(prefect_port)],
            server_env, prefect_log, cwd=self.state,
        ))  # fmt: skip
        self.mlflow_url = f"http://127.0.0.1:{mlflow_port}"
        self.prefect_api = f"http://127.0.0.1:{prefect_port}/api"
        # /health answers without credentials on both servers (load-balancer probes).
        wait_until(lambda: http_ok(f"{self.mlflow_url}/health"), mlflow, mlflow_log,
                   "MLflow server")  # fmt: skip
        passwords = {user: self.secrets.get(f"mlflow-{user}") for user in MLFLOW_GRANTS}
        provision_mlflow(self.mlflow_url, self.secrets.get("mlflow-admin"), passwords)
        self.timings["mlflow_ready_s"] = round(time.monotonic() - t0, 1)
        wait_until(lambda: http_ok(f"{self.prefect_api}/health"), prefect, prefect_log,
                   "Prefect server")  # fmt: skip
        self.timings["prefect_ready_s"] = round(time.monotonic() - t0, 1)
        self.client_env = self.role_env("worker")

    def _start_mlflow(self, port: int) -> subprocess.Popen:
        return self._add("mlflow", start(
            [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1",
             "--artifacts-destination", f"s3://{self.bucket}/mlflow"],
            self._mlflow_env(), self.state / "mlflow.log", cwd=self.state,
        ))  # fmt: skip

    def stop_service(self, name: str) -> float:
        """Stop one service as ``stop`` would (its state stays: PostgreSQL, the bucket);
        seconds it took. ``restart_mlflow`` brings the tracking server back."""
        proc, _, sig = self.services.pop(name)
        t0 = time.monotonic()
        stop_group(proc.pid, sig)
        proc.poll()
        return time.monotonic() - t0

    def restart_mlflow(self) -> float:
        """The tracking server again, on the same port with the same stores; seconds until
        it answers."""
        port = int(self.mlflow_url.rsplit(":", 1)[1])
        proc = self._start_mlflow(port)
        return wait_until(lambda: http_ok(f"{self.mlflow_url}/health"), proc,
                          self.state / "mlflow.log", "MLflow server (restarted)")  # fmt: skip

    def gate_object_store(self) -> TcpGate:
        """A gate (tests/tcp_gate.py) in front of the object store; ``s3_endpoint`` then
        points at it, so clients configured from now on lose the store when it is shut.
        The MLflow server (also once restarted) keeps ``s3_server_endpoint``, the store
        itself. moto keeps its buckets in memory: stopping its process would lose them,
        where a real S3 or MinIO keeps them across a restart."""
        self.s3_server_endpoint = self.s3_endpoint
        self.s3_gate = TcpGate(int(self.s3_endpoint.rsplit(":", 1)[1]))
        self.s3_endpoint = f"http://127.0.0.1:{self.s3_gate.port}"
        return self.s3_gate

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
        if self.s3_gate is not None:
            self.s3_gate.shut()
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
        """Forget the processes (they keep running) and return what `down` needs (no
        secret: pids.json is not private)."""
        record = {
            "services": [[name, proc.pid, int(sig)] for name, (proc, _, sig) in
                         self.services.items()],
            "pgdata": str(self.pgdata) if self.pgdata else None,
        }  # fmt: skip
        self.services, self.pgdata = {}, None
        return record


def s3_objects(endpoint: str, bucket: str, prefix: str,
               credentials: dict[str, str]) -> dict[str, str]:  # fmt: skip
    """Key -> ETag (the MD5 of a single-part upload) of every object under ``prefix``,
    read with ``credentials`` (``AWS_*`` variables)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, **boto_credentials(credentials))
    found: dict[str, str] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found |= {obj["Key"]: obj["ETag"].strip('"') for obj in page.get("Contents", [])}
    return found


# ---------------------------------------------------------------------- make stack

ROLES = ("worker", "maintainer", "reader")


def role_env_file(state: Path, role: str) -> Path:
    return state / f"{role}.env"


def cmd_up(state: Path, repo: Path, pool: str) -> int:
    if (state / "pids.json").exists():
        print(f"a stack is already up ({state / 'pids.json'}); run `make stack-down` first")
        return 1
    stack = Stack(state, ui=True)
    try:
        stack.up()
        envs = {role: stack.role_env(role) for role in ROLES}
        for role in ("worker", "maintainer"):
            envs[role]["SEQ2SEQ_PROJECT_DIR"] = str(repo)
        worker_env = clean_env(**envs["worker"], PREFECT_HOME=str(state / "worker-home"))
        stack.start_worker(repo, worker_env, pool)
    except BaseException:
        stack.stop()
        raise
    record = stack.detach() | {"s3_endpoint": stack.s3_endpoint, "bucket": stack.bucket}
    (state / "pids.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    files = {role: env_file(role_env_file(state, role), env) for role, env in envs.items()}
    print("\n".join([
        f"Stack up (logs in {state}): PostgreSQL {stack.postgres_url}, S3 (moto) "
        f"{stack.s3_endpoint} bucket {stack.bucket}, a worker on pool {pool} in {repo}.",
        f"MLflow UI {stack.mlflow_url}   Prefect UI {stack.prefect_api[:-4]}",
        f"Every service asks for credentials; secrets (0600): {stack.secrets.folder}",
        "",
        "# each role's variables (0600 files; `source` them, do not paste them):",
        f"#   worker, runs flows, logs and registers:  source {files['worker']}",
        f"#   maintainer, promote / roll back:        source {files['maintainer']}",
        f"#   reader, serve / translate only:         source {files['reader']}",
        "",
        "# then, as the maintainer: make deploy; .venv/bin/prefect deployment run "
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
    # The env files point at stopped servers; the secrets stay for the next start.
    for role in ROLES:
        role_env_file(state, role).unlink(missing_ok=True)
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
