"""docs/scaling.md end to end on one machine: every service its own process on 127.0.0.1.

    S3 (moto's server) <- MLflow server (PostgreSQL backend, proxied artifacts)
    PostgreSQL          <- Prefect server
    git origin (bare)   -> clone A: `prefect deploy`
                        -> clone B: a process worker runs nightly-retrain: `dvc pull` of the
                           raw corpus, train (tiny), register, `dvc push`, dvc.lock to git
                        -> clone C: `git clone && dvc pull` gives B's exact files;
                           `seq2seq translate --model models:/...@champion` via the server
    two torchrun launchers (two "hosts") train on C's data with gloo.

Every service asks for credentials (tests/services.py, docs/security.md): the deploying
clone A has the Prefect auth string, the worker B its MLflow user, the auth string and the
bucket's key, C translates as the read-only MLflow user. The checks read the stores
themselves: the bucket with boto3, MLflow's tables with SQL, the flow run from the Prefect
API; the last test greps every log, tag, param, flow-run log, artifact, git history and
process argument seen during the run for each generated secret. Wall times per part are
printed at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.services import (
    BIN,
    Stack,
    clean_env,
    free_port,
    pg_bin,
    s3_objects,
    stop_group,
    tail,
)
from tests.services import start as start_process
from tests.support import GENESIS_TSV, REPO, tiny_params

pytestmark = pytest.mark.integration

POOL = "seq2seq-process"
NIGHTLY = "seq2seq-training-pipeline/nightly-retrain"
MODEL = "seq2seq-translator"
RAW = "data/raw/genesis_de_en.tsv"
SENTENCE = "Im Anfang schuf Gott die Himmel und die Erde."
GIT_ID = {
    "GIT_AUTHOR_NAME": "ci",
    "GIT_AUTHOR_EMAIL": "ci@example.invalid",
    "GIT_COMMITTER_NAME": "ci",
    "GIT_COMMITTER_EMAIL": "ci@example.invalid",
}
RUN_TIMEOUT_S = 200
DVC = [sys.executable, "-m", "dvc"]
PYTHON_CLI = [sys.executable, "-m", "flows.cli"]


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 180) -> str:
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{' '.join(cmd)} in {cwd}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


class Clock:
    """Wall seconds per part of the test, printed when the module ends."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t0 = time.monotonic()

    def part(self, name: str, since: float) -> None:
        self.seconds[name] = round(time.monotonic() - since, 1)


@pytest.fixture(scope="module")
def clock() -> Iterator[Clock]:
    clock = Clock()
    yield clock
    clock.part("total", clock._t0)
    print(f"\nscale-out test wall seconds: {json.dumps(clock.seconds)}")


class ArgvSampler:
    """Every process's command line on this host, sampled every 0.2 s while the module runs
    (what `ps -eo args` shows any user): a secret passed as an argument would be caught."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                with contextlib.suppress(OSError):  # the process ended
                    self.seen.add(
                        cmdline.read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
                    )

    def __enter__(self) -> ArgvSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, clock: Clock) -> Iterator[Stack]:
    if pg_bin() is None:
        pytest.skip("PostgreSQL server binaries not found (Debian: apt-get install postgresql)")
    t0 = time.monotonic()
    with Stack(tmp_path_factory.mktemp("services")) as services, ArgvSampler() as argv:
        services.up()
        services.argv = argv  # type: ignore[attr-defined]
        clock.part("services_up", t0)
        yield services
        t1 = time.monotonic()
    clock.part("services_stop", t1)
    clock.seconds["services"] = services.timings


@pytest.fixture(scope="module")
def origin(stack: Stack, tmp_path_factory: pytest.TempPathFactory, clock: Clock) -> Path:
    """A bare git repo: this checkout's tracked files, a tiny params.yaml reading the raw
    corpus from data/raw (tracked by DVC, pushed to s3://bucket/dvc), the S3 remote."""
    t0 = time.monotonic()
    tmp = tmp_path_factory.mktemp("git")
    seed = tmp / "seed"
    env = clean_env(**stack.s3_credentials, **GIT_ID)
    # Tracked files and new ones not yet committed (not the ignored ones): this checkout.
    listed = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    for name in _run(listed, REPO, env).split("\0"):
        if name and (REPO / name).is_file():
            (seed / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, seed / name)
    params = tiny_params()
    params["data"]["source"] = RAW
    (seed / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    (seed / RAW).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(GENESIS_TSV, seed / RAW)
    for cmd in (
        ["git", "init", "-q", "-b", "main"],
        # docs/scaling.md "DVC: a remote on S3", with the moto endpoint as the S3 server.
        [*DVC, "remote", "add", "-d", "s3", f"s3://{stack.bucket}/dvc"],
        [*DVC, "remote", "modify", "s3", "endpointurl", stack.s3_endpoint],
        [*DVC, "add", "--quiet", RAW],
        [*DVC, "push", "--quiet"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "tiny seq2seq project on an S3 DVC remote"],
        ["git", "clone", "-q", "--bare", str(seed), str(tmp / "origin.git")],
    ):
        _run(cmd, seed, env)
    clock.part("origin_repo", t0)
    return tmp / "origin.git"


def _prefect_env(stack: Stack) -> dict[str, str]:
    return {"PREFECT_API_URL": stack.prefect_api,
            "PREFECT_API_AUTH_STRING": stack.prefect_auth_string()}  # fmt: skip


def _prefect_settings(stack: Stack) -> dict[Any, Any]:
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

    return {
        PREFECT_API_URL: stack.prefect_api,
        PREFECT_API_AUTH_STRING: stack.prefect_auth_string(),
    }


def _clone(origin: Path, dest: Path) -> Path:
    _run(["git", "clone", "-q", str(origin), str(dest)], origin.parent, clean_env())
    return dest


@pytest.fixture(scope="module")
def nightly(
    stack: Stack, origin: Path, tmp_path_factory: pytest.TempPathFactory, clock: Clock
) -> dict[str, Any]:
    """Deploy from clone A; a worker in clone B runs nightly-retrain to completion."""
    from prefect.deployments import run_deployment
    from prefect.settings import temporary_settings

    tmp = tmp_path_factory.mktemp("clones")
    clone_a, clone_b = _clone(origin, tmp / "A"), _clone(origin, tmp / "B")
    assert not (clone_b / RAW).exists()  # only the .dvc pointer travels in git

    t0 = time.monotonic()
    # A needs the Prefect API and its auth string, nothing else. No SEQ2SEQ_PROJECT_DIR: the
    # worker's environment names its own clone when a run starts.
    env_a = clean_env(**_prefect_env(stack), PREFECT_HOME=str(tmp / "home-A"))
    _run([str(BIN / "prefect"), "work-pool", "create", POOL, "--type", "process"], clone_a, env_a)
    _run([str(BIN / "prefect"), "--no-prompt", "deploy", "--name", "nightly-retrain"],
         clone_a, env_a)  # fmt: skip
    clock.part("deploy_from_A", t0)

    env_b = clean_env(
        **stack.client_env,
        **GIT_ID,
        PREFECT_HOME=str(tmp / "home-B"),
        PREFECT_WORKER_QUERY_SECONDS="2",
        SEQ2SEQ_PROJECT_DIR=str(clone_b),
        SEQ2SEQ_DVC_GIT_PUSH="true",
    )
    stack.start_worker(clone_b, env_b, POOL)
    t0 = time.monotonic()
    with temporary_settings(updates=_prefect_settings(stack)):
        flow_run = run_deployment(NIGHTLY, timeout=RUN_TIMEOUT_S, poll_interval=2)
    clock.part("worker_flow_run", t0)
    assert flow_run.state is not None and flow_run.state.is_completed(), (
        f"{flow_run.state}\nworker log:\n{tail(stack.state / 'worker.log', 6000)}"
    )
    return {"A": clone_a, "B": clone_b, "flow_run_id": str(flow_run.id), "tmp": tmp}


def test_worker_clone_ran_the_flow_and_the_stores_hold_its_results(
    stack: Stack, origin: Path, nightly: dict[str, Any], clock: Clock
) -> None:
    import asyncio

    import sqlalchemy
    from prefect.client.orchestration import get_client
    from prefect.settings import temporary_settings

    t0 = time.monotonic()
    clone_a, clone_b = nightly["A"], nightly["B"]

    async def read_run() -> Any:
        async with get_client() as client:
            return await client.read_flow_run(nightly["flow_run_id"])

    with temporary_settings(updates=_prefect_settings(stack)):
        flow_run = asyncio.run(read_run())
    assert flow_run.state.type.value == "COMPLETED"
    assert flow_run.work_pool_name == POOL

    # The run happened in B (inputs pulled by DVC, outputs there); A only deployed.
    assert (clone_b / RAW).is_file()
    record = json.loads((clone_b / "reports" / "registration.json").read_text())
    assert (record["version"], record["promoted"]) == (1, True)
    assert not any((clone_a / p).exists() for p in ("data/prepared", "reports", "mlflow.db"))
    assert not (clone_b / "mlflow.db").exists()  # nothing fell back to a local store

    # PostgreSQL: MLflow's own tables hold the version, its aliases and proxied artifacts.
    engine = sqlalchemy.create_engine(
        stack.database_url("mlflow"), connect_args={"passfile": str(stack.pgpass("mlflow"))}
    )
    with engine.connect() as conn:
        sql = sqlalchemy.text
        versions = conn.execute(sql("SELECT name, version FROM model_versions")).fetchall()
        aliases = conn.execute(sql("SELECT alias, version FROM registered_model_aliases"))
        aliases = sorted((a, int(v)) for a, v in aliases)
        locations = conn.execute(sql("SELECT artifact_location FROM experiments")).fetchall()
    engine.dispose()
    assert [(n, int(v)) for n, v in versions] == [(MODEL, 1)]
    assert aliases == [("challenger", 1), ("champion", 1)]
    assert any(loc.startswith("mlflow-artifacts:") for (loc,) in locations), locations

    # The bucket: the model under the MLflow prefix, B's outputs under the DVC prefix.
    in_mlflow = s3_objects(stack.s3_endpoint, stack.bucket, "mlflow/", stack.s3_credentials)
    checkpoints = {k: etag for k, etag in in_mlflow.items() if k.endswith("/best.pt")}
    assert list(checkpoints.values()) == [_md5(clone_b / "models/checkpoints/best.pt")], checkpoints
    dvc_keys = set(s3_objects(stack.s3_endpoint, stack.bucket, "dvc/", stack.s3_credentials))
    for path in ("data/prepared/train.parquet", "models/checkpoints/best.pt", RAW):
        digest = _md5(clone_b / path)
        assert f"dvc/files/md5/{digest[:2]}/{digest[2:]}" in dvc_keys, path

    # git: B published its dvc.lock as a commit on the origin.
    subject = _run(["git", "--git-dir", str(origin), "log", "-1", "--format=%s"], origin,
                   clean_env())  # fmt: skip
    assert nightly["flow_run_id"] in subject
    clock.part("checks_B", t0)


@pytest.fixture(scope="module")
def clone_c(stack: Stack, origin: Path, nightly: dict[str, Any], clock: Clock) -> Path:
    t0 = time.monotonic()
    clone = _clone(origin, nightly["tmp"] / "C")
    # The data comes with the bucket's key; the model (below) with the reader's user only.
    _run([*DVC, "pull", "--quiet"], clone, clean_env(**stack.s3_credentials))
    clock.part("clone_C_dvc_pull", t0)
    return clone


def test_third_clone_pulls_the_exact_data_and_translates_with_the_champion(
    stack: Stack, nightly: dict[str, Any], clone_c: Path, clock: Clock
) -> None:
    for path in (
        RAW,
        "data/prepared/train.parquet",
        "data/prepared/test.parquet",
        "data/vocab/tokenizer.json",
        "models/checkpoints/best.pt",
    ):
        assert _md5(clone_c / path) == _md5(nightly["B"] / path), path

    t0 = time.monotonic()
    # Only the read-only MLflow user: the model comes from S3 through the MLflow server.
    reader = stack.role_env("reader")
    assert not any(k.startswith(("AWS_", "PREFECT_")) for k in reader)
    env = clean_env(**reader)
    translate = [*PYTHON_CLI, "translate", "--beam", "1", SENTENCE]
    served = _run([*translate, "--model", f"models:/{MODEL}@champion"], clone_c, env)
    local = _run([*translate, "--model", "models/checkpoints/best.pt"], clone_c, env)
    clock.part("translate_C", t0)
    assert served.strip() and served == local  # the champion is the checkpoint DVC restored


def test_torchrun_two_nodes_train_one_model(
    stack: Stack, clone_c: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    from seq2seq_core.model.checkpoint import load_model
    from seq2seq_core.runtime.distributed import weights_digest

    t0 = time.monotonic()
    uri = stack.client_env["MLFLOW_TRACKING_URI"]
    worker = {k: v for k, v in stack.role_env("worker").items() if k.startswith("MLFLOW_")}
    for name, value in worker.items():  # MLflow's client reads its user from the environment
        monkeypatch.setenv(name, value)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("seq2seq-pipeline")
    run_id = client.create_run(experiment.experiment_id, run_name="torchrun-2-nodes").info.run_id
    # One line selects torchrun (flows/distributed_train.py); the same on both "hosts".
    torchrun = (
        f"--nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:{free_port()}"
    )
    rdzv_id = secrets.token_hex(16)  # flows/rendezvous.py: in the environment, not argv
    env = clean_env(**worker, MLFLOW_RUN_ID=run_id, SEQ2SEQ_TORCHRUN=torchrun,
                    SEQ2SEQ_RDZV_ID=rdzv_id)  # fmt: skip
    # Next to the clones, so the secret check at the end reads the launchers' logs too.
    nodes = [clone_c.parent / "torchrun" / "node0", clone_c.parent / "torchrun" / "node1"]
    launchers = []
    try:
        for node in nodes:  # each host has the repo's params and the pulled data
            for part in ("params.yaml", "data/prepared", "data/vocab"):
                src, dst = clone_c / part, node / part
                dst.parent.mkdir(parents=True, exist_ok=True)
                (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
            cmd = [*PYTHON_CLI, "train", "--set", "train.threads=1"]
            launchers.append(start_process(cmd, env, node / "launcher.log", cwd=node))
        for proc, node in zip(launchers, nodes, strict=True):
            rc = proc.wait(timeout=180)
            assert rc == 0, f"{node.name}:\n{tail(node / 'launcher.log')}"
    finally:
        for proc in launchers:
            stop_group(proc.pid)
    clock.part("torchrun_2_nodes", t0)
    for node in nodes:  # the run id went through torchrun's environment, not its argv
        log = (node / "launcher.log").read_text().splitlines()
        launch = [line for line in log if line.startswith("seq2seq train: torchrun ")]
        assert len(launch) == 1 and rdzv_id not in launch[0] and "rdzv-id" not in launch[0]

    # Identical weights on both ranks, and they are the ones rank 0 saved.
    reports = {}
    for node in nodes:
        found = re.findall(r"rank (\d) of 2: replicas agree, weights sha256 (\w+)",
                           (node / "launcher.log").read_text())  # fmt: skip
        assert len(found) == 1, tail(node / "launcher.log")
        reports[node.name] = found[0]
    assert sorted(r for r, _ in reports.values()) == ["0", "1"]
    assert len({d for _, d in reports.values()}) == 1
    # Rank 0 alone wrote checkpoints and reports: one set, on its own node.
    writer = next(n for n in nodes if reports[n.name][0] == "0")
    other = next(n for n in nodes if n is not writer)
    assert sorted(p.name for p in (writer / "models/checkpoints").iterdir()) == [
        "best.pt", "history.json", "last.pt"
    ]  # fmt: skip
    assert not (other / "models").exists() and not (other / "reports").exists()
    model, _ = load_model(writer / "models/checkpoints/last.pt")
    assert weights_digest(model) == reports[writer.name][1]

    # MLflow: one writer, so one value per step and per epoch in the run.
    summary = json.loads((writer / "reports/train.json").read_text())
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert sorted(steps) == list(range(1, summary["steps"] + 1))
    epochs = [m.step for m in client.get_metric_history(run_id, "epoch/valid_bleu")]
    assert sorted(epochs) == list(range(1, summary["epochs"] + 1))
    assert os.environ.get("MLFLOW_RUN_ID") is None  # the test process itself logged nothing


def _mlflow_texts(stack: Stack) -> dict[str, str]:
    """Every run's params and tags, every model version's and logged model's tags and
    params, read as the admin: where a leaked credential would be kept for good."""
    from tests.stack_access import MLFLOW_ADMIN, basic_auth, mlflow_call

    auth = basic_auth(MLFLOW_ADMIN, stack.secrets.get("mlflow-admin"))

    def call(path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        status, reply = mlflow_call(stack.mlflow_url, path, body, auth=auth)
        assert status == 200, (path, status, reply)
        return reply

    experiments = call("/api/2.0/mlflow/experiments/search", {"max_results": 1000})
    ids = [e["experiment_id"] for e in experiments["experiments"]]
    runs = call("/api/2.0/mlflow/runs/search", {"experiment_ids": ids, "max_results": 1000})
    models = call("/api/2.0/mlflow/logged-models/search", {"experiment_ids": ids})
    versions = call("/api/2.0/mlflow/model-versions/search?max_results=1000")
    registered = call("/api/2.0/mlflow/registered-models/search?max_results=1000")
    texts = {f"run {r['info']['run_id']}": json.dumps(r["data"]) for r in runs["runs"]}
    texts |= {f"logged model {m['info']['model_id']}": json.dumps(m) for m in models["models"]}
    texts |= {f"version {v['version']}": json.dumps(v) for v in versions["model_versions"]}
    texts["registered models"] = json.dumps(registered)
    assert runs["runs"] and versions["model_versions"]  # there is something to search
    return texts


def _prefect_texts(stack: Stack, flow_run_id: str) -> dict[str, str]:
    """The flow run's logs and parameters and every Prefect artifact, from the API."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.settings import temporary_settings

    async def read() -> dict[str, str]:
        async with get_client() as client:
            run = await client.read_flow_run(flow_run_id)
            logs = await client.read_logs(
                LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])), limit=200
            )
            artifacts = await client.read_artifacts()
            deployments = await client.read_deployments()
        assert logs, "the flow run logged nothing?"
        return {
            "flow run": run.model_dump_json(),
            "flow run logs": "\n".join(log.message for log in logs),
            "artifacts": "\n".join(a.model_dump_json() for a in artifacts),
            "deployments": "\n".join(d.model_dump_json() for d in deployments),
        }

    with temporary_settings(updates=_prefect_settings(stack)):
        return asyncio.run(read())


def _files_under(*roots: Path, skip: tuple[Path, ...] = ()) -> Iterator[Path]:
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not any(path.is_relative_to(s) for s in skip):
                yield path


def test_no_secret_in_any_log_tag_param_artifact_git_history_or_argument(
    stack: Stack, origin: Path, nightly: dict[str, Any], clone_c: Path, clock: Clock
) -> None:
    """Runs last: after the whole night (deploy, flow run, DVC, translate, torchrun)."""
    t0 = time.monotonic()
    secrets = stack.secrets.values()
    assert sorted(secrets) == [
        "mlflow-admin", "mlflow-flask-secret-key", "mlflow-maintainer", "mlflow-reader",
        "mlflow-worker", "postgres-mlflow", "postgres-prefect", "postgres-superuser",
        "prefect-auth", "s3-access-key-id", "s3-secret-access-key",
    ]  # fmt: skip
    assert all(len(v) >= 16 for v in secrets.values())
    places: dict[str, bytes] = {}
    # Every file the services and the clones wrote (logs, reports, DVC and git internals,
    # the torchrun launchers' logs), except the secret files themselves.
    for path in _files_under(stack.state, nightly["tmp"], skip=(stack.secrets.folder,)):
        if path.stat().st_size < 50 * 2**20:
            places[str(path)] = path.read_bytes()
    assert any(p.endswith("worker.log") for p in places) and len(places) > 100
    for name, text in {**_mlflow_texts(stack),
                       **_prefect_texts(stack, nightly["flow_run_id"])}.items():  # fmt: skip
        places[name] = text.encode()
    for repo in (origin, nightly["A"], nightly["B"], clone_c):
        history = ["git", "--git-dir", str(repo if repo == origin else repo / ".git"), "log",
                   "-p", "--all"]  # fmt: skip
        places[f"git history of {repo.name}"] = _run(history, repo, clean_env()).encode()
    argv = stack.argv.seen  # type: ignore[attr-defined]
    assert any("mlflow" in a and "server" in a for a in argv)  # the sampler saw the servers
    places["process arguments"] = "\n".join(sorted(argv)).encode()

    leaks = [f"{name} in {place}" for name, value in secrets.items()
             for place, data in places.items() if value.encode() in data]  # fmt: skip
    clock.part("secret_grep", t0)
    print(f"\nsecret grep: {len(secrets)} secrets x {len(places)} places "
          f"({len(argv)} distinct command lines)")  # fmt: skip
    assert not leaks, "\n".join(leaks)
