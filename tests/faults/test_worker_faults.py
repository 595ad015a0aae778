"""A worker killed mid-run: the run is marked Crashed, someone hears of it, the next run resumes.

A real Prefect server (SQLite) and process workers run the deployments of prefect.yaml from
a copy of the project with a tiny params.yaml, deployed as `make deploy` does it (`prefect
deploy`, then `python -m flows.deploy --automations-only`, twice: one automation stays). The
copy's heartbeat is Prefect's minimum, 30 s, so the zombie automation crashes a silent run
after 90 s instead of 3 minutes. The 26 h "no Completed night" automation is checked as
deployed, and a copy of it with a short window is shown to fire.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from tests.prefect_api import artifact, automations, deployment_runs, flow_run, logged
from tests.services import clean_env, free_port, http_ok, start, stop_group, tail, wait_until
from tests.support import GENESIS_TSV, REPO, tiny_params

pytestmark = [pytest.mark.faults, pytest.mark.integration]

POOL = "seq2seq-process"
NIGHTLY = "seq2seq-training-pipeline/nightly-retrain"
NOTICE = "seq2seq-on-call-notice/on-call-notice"
PREFECT = str(Path(sys.executable).with_name("prefect"))
HEARTBEAT_S = 30  # Prefect's minimum
SHORT_WINDOW_S = 20  # the test copy of the 26 h automation
SHORT_WINDOW_TAG = f" ({SHORT_WINDOW_S} s window, test copy)"
RUN_TIMEOUT_S = 420
CORPUS = "corpus.tsv"


def _copy_project(dest: Path) -> Path:
    """Code, prefect.yaml with a 30 s heartbeat, the Genesis corpus and a tiny params.yaml
    whose training writes last.pt every 2 steps and runs for half a minute."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("flows", "seq2seq_core"):
        shutil.copytree(REPO / package, dest / package, ignore=ignore)
    spec = (REPO / "prefect.yaml").read_text(encoding="utf-8")
    beat = 'PREFECT_FLOWS_HEARTBEAT_FREQUENCY: "60"'
    assert beat in spec, "prefect.yaml's heartbeat moved: update this test"
    spec = spec.replace(beat, f'PREFECT_FLOWS_HEARTBEAT_FREQUENCY: "{HEARTBEAT_S}"')
    (dest / "prefect.yaml").write_text(spec, encoding="utf-8")
    shutil.copy2(GENESIS_TSV, dest / CORPUS)
    params = tiny_params(Path(CORPUS))
    params["train"] |= {"max_epochs": 1000, "time_budget_min": 0.5, "checkpoint_every_steps": 2}
    (dest / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    return dest


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Server, deployments, automations (and the short copy of the 26 h one), one worker."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    tmp = tmp_path_factory.mktemp("worker-faults")
    project = _copy_project(tmp / "project")
    port = str(free_port())
    api_url = f"http://127.0.0.1:{port}/api"
    env = clean_env(
        PREFECT_HOME=str(tmp / "prefect-home"),
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_UI_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="2",
        # A run refused a deployment slot retries after 5 s, not 30 s.
        PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS="5",
    )
    timings: dict[str, float] = {}
    state: dict[str, Any] = {
        "tmp": tmp, "project": project, "env": env, "timings": timings, "workers": []
    }  # fmt: skip
    server_log = tmp / "server.log"
    server = start([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", port], env,
                   server_log, cwd=tmp)  # fmt: skip
    try:
        timings["server_start_s"] = round(
            wait_until(lambda: http_ok(f"{api_url}/health"), server, server_log, "prefect server"),
            1,
        )
        t0 = time.monotonic()
        deploy_env = env | {"SEQ2SEQ_PROJECT_DIR": str(project)}
        for cmd in (
            [PREFECT, "work-pool", "create", POOL, "--type", "process"],
            [PREFECT, "--no-prompt", "deploy", "--all"],
            [sys.executable, "-m", "flows.deploy", "--automations-only"],
            [sys.executable, "-m", "flows.deploy", "--automations-only"],  # a second deploy
        ):
            proc = subprocess.run(
                cmd, cwd=project, env=deploy_env, capture_output=True, text=True, timeout=300
            )
            assert proc.returncode == 0, f"{cmd[1:]} failed:\n{proc.stdout}\n{proc.stderr}"
        timings["deploy_s"] = round(time.monotonic() - t0, 1)
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            state["short_window"] = _short_window_copy()
            state["workers"].append(_start_worker(state, "worker1"))
            yield state
    finally:
        for proc in [*state["workers"], server]:
            stop_group(proc.pid)
        print(f"worker fault test timings: {json.dumps(timings)}")


def _start_worker(state: dict[str, Any], name: str) -> subprocess.Popen:
    """`make worker` in another directory than the project (its env carries the project)."""
    env = state["env"] | {"SEQ2SEQ_PROJECT_DIR": str(state["project"])}
    log = state["tmp"] / f"{name}.log"
    state[f"{name}_log"] = log
    return start([PREFECT, "worker", "start", "--pool", POOL, "--type", "process"], env, log,
                 cwd=state["tmp"])  # fmt: skip


def _notice_automations() -> list[Any]:
    import asyncio

    from prefect.client.orchestration import get_client

    async def read() -> list[Any]:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name(NOTICE)
            return await client.read_resource_related_automations(
                f"prefect.deployment.{deployment.id}"
            )

    return asyncio.run(read())


def _missing_night_automation() -> Any:
    from prefect.events.schemas.automations import Posture

    (found,) = [
        a
        for a in _notice_automations()
        if a.trigger.posture == Posture.Proactive and not a.name.endswith(SHORT_WINDOW_TAG)
    ]
    return found


def _short_window_copy() -> Any:
    """The deployed 26 h automation with a 20 s window, under another name."""
    from prefect.automations import Automation

    deployed = _missing_night_automation()
    trigger = deployed.trigger.model_copy(update={"within": timedelta(seconds=SHORT_WINDOW_S)})
    return Automation(
        name=f"{deployed.name}{SHORT_WINDOW_TAG}",
        trigger=trigger,
        actions=deployed.actions,
    ).create()


def _wait_state(flow_run_id: Any, done: Any, timeout_s: float, what: str, log: Path) -> Any:
    deadline = time.monotonic() + timeout_s
    while not done(run := flow_run(flow_run_id)):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: still {run.state} after {timeout_s} s\n{tail(log)}")
        time.sleep(1)
    return run


def _notices(match: dict[str, str], timeout_s: float, log: Path) -> list[Any]:
    """The completed on-call notice runs whose parameters include ``match``."""
    deadline = time.monotonic() + timeout_s
    while True:
        runs = [
            r
            for r in deployment_runs(NOTICE)
            if match.items() <= r.parameters.items() and r.state and r.state.is_completed()
        ]
        if runs:
            return runs
        if time.monotonic() > deadline:
            states = [(r.parameters, r.state and r.state.name) for r in deployment_runs(NOTICE)]
            pytest.fail(f"no completed notice for {match} in {timeout_s} s: {states}\n{tail(log)}")
        time.sleep(2)


def _kill_worker(worker: subprocess.Popen) -> list[int]:
    """SIGKILL the worker and every process under it (its flow-run process), by pid."""
    procs = [psutil.Process(worker.pid), *psutil.Process(worker.pid).children(recursive=True)]
    for proc in procs:
        os.kill(proc.pid, signal.SIGKILL)
    worker.wait(timeout=30)
    psutil.wait_procs(procs, timeout=30)
    return [p.pid for p in procs]


def test_killed_worker_run_is_crashed_noticed_and_the_next_night_resumes(
    stack: dict[str, Any],
) -> None:
    """SIGKILL the worker and its flow-run process mid-training: the zombie automation marks
    the run Crashed within 3 heartbeats (which frees the deployment's one slot), the Crashed
    automation leaves an on-call notice, and the next night, queued behind the dead run, is
    picked up by a new worker and resumes from last.pt."""
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment

    from flows.automations import ZOMBIE_AUTOMATION

    timings, project = stack["timings"], stack["project"]
    worker1_log = stack["worker1_log"]
    # Deployed twice, one automation.
    assert [a.name for a in automations()].count(ZOMBIE_AUTOMATION) == 1

    night1 = run_deployment(NIGHTLY, timeout=0)
    last = project / "models" / "checkpoints" / "last.pt"
    t0 = time.monotonic()
    while not last.is_file():
        assert time.monotonic() - t0 < RUN_TIMEOUT_S, f"no last.pt yet:\n{tail(worker1_log)}"
        time.sleep(0.5)
    timings["to_first_last_pt_s"] = round(time.monotonic() - t0, 1)
    assert flow_run(night1.id).state.type == StateType.RUNNING
    killed = _kill_worker(stack["workers"][0])
    assert len(killed) >= 2, f"the worker had no flow-run process: {killed}"
    killed_at = time.monotonic()

    # The next night is due while the dead run still holds the slot; a new worker comes up.
    night2 = run_deployment(NIGHTLY, timeout=0)
    stack["workers"].append(_start_worker(stack, "worker2"))
    worker2_log = stack["worker2_log"]

    crashed = _wait_state(
        night1.id, lambda r: r.state.is_final(), 3 * HEARTBEAT_S + 120, "killed run", worker2_log
    )
    timings["kill_to_crashed_s"] = round(time.monotonic() - killed_at, 1)
    assert crashed.state.type == StateType.CRASHED, crashed.state
    assert f"no heartbeat for {3 * HEARTBEAT_S} s" in crashed.state.message
    assert ZOMBIE_AUTOMATION in crashed.state.message

    (notice,) = _notices({"flow_run_id": str(night1.id)}, 120, worker2_log)
    assert notice.parameters["outcome"] == "Crashed"
    assert notice.parameters["deployment"] == "nightly-retrain"
    text = artifact(notice.id, "on-call-notice")
    assert "# nightly-retrain: Crashed" in text and crashed.name in text
    assert "resumes training from models/checkpoints/last.pt" in text
    assert logged(
        notice.id,
        f"on-call: deployment nightly-retrain, flow run {crashed.name} ({night1.id}): Crashed",
        min_level=40,  # ERROR
    )

    resumed = _wait_state(
        night2.id, lambda r: r.state.is_final(), RUN_TIMEOUT_S, "next night", worker2_log
    )
    timings["kill_to_next_night_done_s"] = round(time.monotonic() - killed_at, 1)
    assert resumed.state.is_completed(), f"{resumed.state}\n{tail(worker2_log)}"
    # It waited for the slot the dead run held: it started only after the run was crashed.
    assert resumed.start_time >= crashed.state.timestamp
    assert logged(night2.id, "resuming from models/checkpoints/last.pt")
    from mlflow import MlflowClient

    store = f"sqlite:///{project / 'mlflow.db'}"
    (version,) = MlflowClient(store, store).search_model_versions()
    assert version.tags["prefect.flow_run_id"] == str(night2.id)  # the resumed night registered


def test_no_completed_night_in_26_h_is_noticed(stack: dict[str, Any]) -> None:
    """The deployed automation expects a Completed nightly-retrain within 26 h of the last
    one; its copy with a 20 s window leaves an on-call notice 20 s after a night completes."""
    from prefect.deployments import run_deployment
    from prefect.events.schemas.automations import Posture

    deployed = _missing_night_automation().trigger
    assert deployed.posture == Posture.Proactive
    assert deployed.within == timedelta(hours=26)
    assert deployed.after == deployed.expect == {"prefect.flow-run.Completed"}
    assert deployed.for_each == {"related:deployment:prefect.resource.id"}
    assert deployed.match_related.root == {
        "prefect.resource.role": "deployment", "prefect.resource.name": "nightly-retrain"
    }  # fmt: skip

    log = stack.get("worker2_log", stack["worker1_log"])
    nights = [r for r in deployment_runs(NIGHTLY) if r.state and r.state.is_completed()]
    if not nights:  # run alone: a night has to complete first
        nights = [run_deployment(NIGHTLY, timeout=RUN_TIMEOUT_S)]
        assert nights[0].state.is_completed(), f"{nights[0].state}\n{tail(log)}"
    completed_at = max(r.end_time for r in nights)

    (notice,) = _notices({"outcome": "Missing"}, SHORT_WINDOW_S + 120, log)
    assert notice.parameters["deployment"] == "nightly-retrain"
    # Fired by the window's end, not by the Completed event itself.
    assert notice.created >= completed_at + timedelta(seconds=SHORT_WINDOW_S)
    text = artifact(notice.id, "on-call-notice")
    assert "# nightly-retrain: Missing" in text and "no Completed run in the 26 h" in text
    assert logged(notice.id, "on-call: deployment nightly-retrain, flow run -", min_level=40)
