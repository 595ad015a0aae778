"""prefect.yaml end to end: a real Prefect server, `prefect deploy`, a process worker.

The project's code and prefect.yaml are copied into a temp directory with a tiny
params.yaml (relative output paths) and deployed from there, the way `make deploy` does
it from a clone. The flow runs must start in that copy: their outputs and the default
MLflow store (``sqlite:///mlflow.db`` in the working directory) land there, never in the
repo. Worker, then server, are stopped by process group at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.prefect_api import RUN_TIMEOUT_S, artifact, logged, wait_for_runs
from tests.support import GENESIS_TSV, REPO, tiny_params

pytestmark = pytest.mark.integration

POOL = "seq2seq-process"
NIGHTLY = "seq2seq-training-pipeline/nightly-retrain"
WEEKLY = "seq2seq-champion-eval/weekly-champion-eval"
PREFECT = str(Path(sys.executable).with_name("prefect"))
SERVER_START_TIMEOUT_S = 120
CORPUS = "corpus.tsv"
NEW_PAIRS = 30  # held back from the corpus until night 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(cmd: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen:
    """A process in its own group (so that its children stop with it), output to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(log: Path, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


def _wait_healthy(api_url: str, proc: subprocess.Popen, log: Path) -> float:
    start = time.monotonic()
    while time.monotonic() - start < SERVER_START_TIMEOUT_S:
        if proc.poll() is not None:
            pytest.fail(f"prefect server exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"prefect server not healthy after {SERVER_START_TIMEOUT_S} s:\n{_tail(log)}")


def _copy_project(dest: Path) -> Path:
    """The code a worker needs, prefect.yaml, a user TSV corpus and a tiny params.yaml with
    relative paths (resolved in the flow run's working directory)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("flows", "seq2seq_core"):
        shutil.copytree(REPO / package, dest / package, ignore=ignore)
    shutil.copy2(REPO / "prefect.yaml", dest / "prefect.yaml")
    lines = GENESIS_TSV.read_text(encoding="utf-8").splitlines(keepends=True)
    (dest / CORPUS).write_text("".join(lines[:-NEW_PAIRS]), encoding="utf-8")
    params = tiny_params(Path(CORPUS))
    params["train"]["max_epochs"] = 1
    (dest / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    return dest


@pytest.fixture(scope="module")
def prefect_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Server + deployments + worker for the module; yields paths, env and timings."""
    tmp = tmp_path_factory.mktemp("prefect-deployments")
    project = _copy_project(tmp / "project")
    port = str(_free_port())
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"))
        and k != "SEQ2SEQ_PROJECT_DIR"
    }
    env |= {
        "PREFECT_HOME": str(tmp / "prefect-home"),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "2",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        # The `prefect` CLI and the flow-run subprocesses find the venv's tools first.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    timings: dict[str, float] = {}
    server = worker = None
    server_log, worker_log = tmp / "server.log", tmp / "worker.log"
    try:
        server = _start(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", port],
            env,
            server_log,
            cwd=tmp,
        )
        timings["server_start_s"] = round(_wait_healthy(api_url, server, server_log), 1)

        start = time.monotonic()
        pool = [PREFECT, "work-pool", "create", POOL, "--type", "process"]
        deploy = [PREFECT, "--no-prompt", "deploy", "--name"]
        for cmd, project_dir in (
            (pool, None),
            # As `make deploy` does it: the clone's directory is written into the deployment.
            ([*deploy, "nightly-retrain"], str(project)),
            # A bare `prefect deploy`: the worker's environment fills the directory in later.
            ([*deploy, "weekly-champion-eval"], None),
            ([*deploy, "on-call-notice"], str(project)),
        ):
            deploy_env = env | ({"SEQ2SEQ_PROJECT_DIR": project_dir} if project_dir else {})
            proc = subprocess.run(
                cmd, cwd=project, env=deploy_env, capture_output=True, text=True, timeout=180
            )
            assert proc.returncode == 0, f"{cmd[1:]} failed:\n{proc.stdout}\n{proc.stderr}"
        timings["deploy_s"] = round(time.monotonic() - start, 1)

        # As `make worker` starts it, but from another directory than the project.
        worker = _start(
            [PREFECT, "worker", "start", "--pool", POOL, "--type", "process"],
            env | {"SEQ2SEQ_PROJECT_DIR": str(project)},
            worker_log,
            cwd=tmp,
        )
        yield {
            "tmp": tmp,
            "project": project,
            "api_url": api_url,
            "timings": timings,
            "worker_log": worker_log,
            "server_log": server_log,
        }
    finally:
        for name, proc in (("worker", worker), ("server", server)):
            start = time.monotonic()
            _stop(proc)
            timings[f"{name}_stop_s"] = round(time.monotonic() - start, 1)
        print(f"prefect deployment test timings: {json.dumps(timings)}")


@pytest.fixture
def prefect_client_settings(prefect_stack: dict[str, Any]) -> Iterator[None]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_stack["api_url"]}):
        yield


def _run(name: str, stack: dict[str, Any], timing: str, **parameters: Any) -> Any:
    from prefect.deployments import run_deployment

    start = time.monotonic()
    flow_run = run_deployment(name, parameters=parameters, timeout=RUN_TIMEOUT_S, poll_interval=2)
    stack["timings"][f"{timing}_run_s"] = round(time.monotonic() - start, 1)
    assert flow_run.state is not None and flow_run.state.is_completed(), (
        f"{name}: {flow_run.state}\nworker log:\n{_tail(stack['worker_log'])}"
    )
    return flow_run


def _pull_directory(name: str) -> str:
    import asyncio

    from prefect.client.orchestration import get_client

    async def read() -> Any:
        async with get_client() as client:
            return await client.read_deployment_by_name(name)

    (step,) = asyncio.run(read()).pull_steps
    return step["prefect.deployments.steps.set_working_directory"]["directory"]


def test_three_nights_train_skip_and_warm_start(
    prefect_stack: dict[str, Any], prefect_client_settings: None
) -> None:
    """Night 1 trains and promotes; night 2, with nothing changed, registers nothing and
    says why; night 3, after pairs are appended to the corpus, warm-starts from the
    champion and the gate decides. Each completed night triggers a champion evaluation."""
    from mlflow import MlflowClient

    project = prefect_stack["project"]
    assert _pull_directory(NIGHTLY) == str(project)
    assert _pull_directory(WEEKLY) == "{{ $SEQ2SEQ_PROJECT_DIR }}"
    store = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)

    night1 = _run(NIGHTLY, prefect_stack, timing="night1")
    # Relative paths resolved inside the deployed copy: the working directory was set there.
    record = json.loads((project / "reports" / "registration.json").read_text())
    name = record["model_name"]
    v1 = client.get_model_version(name, "1")
    assert set(v1.aliases) == {"challenger", "champion"}
    assert v1.tags["prefect.flow_run_id"] == str(night1.id)
    assert logged(night1.id, "has no champion yet; training from scratch")
    assert logged(night1.id, "epoch 1/1: train loss")  # the core's line reached the log

    night2 = _run(NIGHTLY, prefect_stack, timing="night2")
    assert [int(v.version) for v in client.search_model_versions(f"name = '{name}'")] == [1]
    assert logged(night2.id, f"up to date with version 1 of {name}")
    assert "Up to date with version 1" in artifact(night2.id, "pipeline-summary")
    # The run's own time on the worker: the wall time above also counts the wait behind night
    # 1's champion evaluation, which the automation queued on the same worker.
    night2_own_s = (night2.end_time - night2.start_time).total_seconds()
    prefect_stack["timings"]["night2_own_s"] = round(night2_own_s, 1)
    assert night2_own_s < 60

    held_back = GENESIS_TSV.read_text(encoding="utf-8").splitlines(keepends=True)[-NEW_PAIRS:]
    with (project / CORPUS).open("a", encoding="utf-8") as corpus:
        corpus.writelines(held_back)
    night3 = _run(NIGHTLY, prefect_stack, timing="night3")
    v2 = client.get_model_version(name, "2")
    assert v2.tags["prefect.flow_run_id"] == str(night3.id)
    assert logged(night3.id, f"warm start from {name} v1 (champion)")
    assert v2.tags["promotion.decision"] in {"promoted", "kept_challenger"}
    assert v2.tags["promotion.previous_champion"] == "1"
    assert "promotion.reason" in v2.tags

    evaluations = wait_for_runs(WEEKLY, count=3)
    assert all(r.state.is_completed() for r in evaluations), [r.state for r in evaluations]
    runs = client.search_runs(
        [client.get_run(v1.run_id).info.experiment_id],
        filter_string="tags.`evaluation.model_uri` LIKE 'models:/%'",
    )
    assert {r.data.tags["prefect.flow_run_id"] for r in runs} == {str(r.id) for r in evaluations}
    assert all(set(r.data.metrics) >= {"champion/bleu", "champion/chrf"} for r in runs)


def test_cron_schedules_create_scheduled_runs(
    prefect_stack: dict[str, Any], prefect_client_settings: None
) -> None:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    async def scheduled(name: str) -> tuple[Any, list[Any]]:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name(name)
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])
                    )
                ),
            )
        return deployment, runs

    for name, cron, weekday in ((NIGHTLY, "0 2 * * *", None), (WEEKLY, "0 3 * * 0", 6)):
        deadline = time.monotonic() + 60  # the scheduler picks up new deployments in a loop
        while True:
            deployment, runs = asyncio.run(scheduled(name))
            if any(r.auto_scheduled for r in runs) or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert [(s.schedule.cron, s.schedule.timezone) for s in deployment.schedules] == [
            (cron, "UTC")
        ]
        assert deployment.work_pool_name == POOL
        assert runs, f"{name}: no scheduled runs after 60 s"
        hour = int(cron.split()[1])
        # Only the scheduler's runs: an event trigger's run (a champion evaluation queued by a
        # finished night) waits in Scheduled too, at the time it was triggered.
        runs = [r for r in runs if r.auto_scheduled]
        assert runs, f"{name}: no runs from the cron schedule after 60 s"
        for flow_run in runs:
            start = flow_run.expected_start_time.astimezone(UTC)
            assert (start.hour, start.minute) == (hour, 0)
            if weekday is not None:
                assert start.weekday() == weekday  # cron's 0 is Sunday, Python's is 6


def test_deployed_and_served_deployments_agree(
    prefect_stack: dict[str, Any], prefect_client_settings: None
) -> None:
    """What `prefect deploy` registered on the server from prefect.yaml equals what
    `flows.deploy` serves: parameters, schedules, concurrency limit and event triggers."""
    import asyncio

    from prefect.client.orchestration import get_client

    from flows.deploy import build_deployments

    async def deployed(name: str) -> tuple[Any, list[Any]]:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name(name)
            automations = await client.read_resource_related_automations(
                f"prefect.deployment.{deployment.id}"
            )
        return deployment, automations

    for served in build_deployments():
        name = f"{served.flow_name}/{served.name}"
        deployment, automations = asyncio.run(deployed(name))
        assert deployment.parameters == served.parameters, name
        assert [s.schedule.cron for s in deployment.schedules] == [
            s.schedule.cron for s in served.schedules
        ]
        limit, options = deployment.global_concurrency_limit, deployment.concurrency_options
        assert (limit and limit.limit) == served.concurrency_limit, name
        assert (options and options.collision_strategy) == (
            served.concurrency_options and served.concurrency_options.collision_strategy
        ), name
        triggers = [a.trigger for a in automations]
        assert [(t.expect, t.match_related.root) for t in triggers] == [
            (t.expect, t.match_related.root) for t in served.triggers
        ], name
