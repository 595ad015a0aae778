"""What tests read back from a real Prefect server: flow-run logs, artifacts, a deployment's
runs. Each call goes to the server of the current ``PREFECT_API_URL`` setting."""

from __future__ import annotations

import asyncio
import time
from typing import Any

RUN_TIMEOUT_S = 240


def flow_run_log(flow_run_id: Any, min_level: int = 0) -> str:
    """The flow run's log messages at ``min_level`` or above, oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterLevel

    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_logs(
                log_filter=LogFilter(
                    flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]),
                    level=LogFilterLevel(ge_=min_level),
                ),
                limit=200,
                sort="TIMESTAMP_ASC",
            )

    return "\n".join(log.message for log in asyncio.run(read()))


def logged(flow_run_id: Any, text: str, timeout_s: float = 30, min_level: int = 0) -> bool:
    """Whether `text` shows in the flow run's log (the server stores the last lines a few
    seconds after the run ended)."""
    deadline = time.monotonic() + timeout_s
    while text not in flow_run_log(flow_run_id, min_level):
        if time.monotonic() > deadline:
            print(flow_run_log(flow_run_id))
            return False
        time.sleep(1)
    return True


def artifact(flow_run_id: Any, key: str) -> str:
    """The data of the one artifact ``key`` that the flow run left."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=[key]),
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                )
            )

    (found,) = asyncio.run(read())
    return found.data


def flow_run(flow_run_id: Any) -> Any:
    """The flow run as the server has it now."""
    from prefect.client.orchestration import get_client

    async def read() -> Any:
        async with get_client() as client:
            return await client.read_flow_run(flow_run_id)

    return asyncio.run(read())


def automations() -> list[Any]:
    """Every automation on the server."""
    from prefect.client.orchestration import get_client

    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_automations()

    return asyncio.run(read())


def deployment_runs(name: str) -> list[Any]:
    """Every flow run of deployment ``name`` (``flow/deployment``)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async def read() -> list[Any]:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name(name)
            return await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
            )

    return asyncio.run(read())


def wait_for_runs(name: str, count: int, timeout_s: float = RUN_TIMEOUT_S) -> list[Any]:
    """The flow runs of deployment `name` once `count` of them reached a final state."""
    deadline = time.monotonic() + timeout_s
    while True:
        runs = [r for r in deployment_runs(name) if r.state and r.state.is_final()]
        if len(runs) >= count or time.monotonic() > deadline:
            return runs
        time.sleep(2)
