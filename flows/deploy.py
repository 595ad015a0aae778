"""Serve the deployments of prefect.yaml from this process: schedules without a work pool.

    python -m flows.deploy                      # or: make serve-flows
    python -m flows.deploy --automations-only   # what `make deploy` adds to `prefect deploy`

Names, entrypoints, parameters, cron schedules, concurrency limits and event triggers are
read from prefect.yaml, so the served deployments and the ones `prefect deploy` creates for
a worker cannot drift apart.
Flow runs start in this process's working directory (run it from the clone's root).
Both first create (or update) the zombie-run automation (flows/automations.py) for the
heartbeat the deployments' job variables set, and served runs beat at that frequency too.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

import yaml
from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentTriggerTypes
from prefect.flows import Flow
from prefect.schedules import Cron
from pydantic import TypeAdapter

from flows.automations import apply_automation, zombie_automation

PREFECT_YAML = Path(__file__).resolve().parents[1] / "prefect.yaml"
# Trigger specs as `prefect deploy` reads them from prefect.yaml.
TRIGGERS: TypeAdapter[DeploymentTriggerTypes] = TypeAdapter(DeploymentTriggerTypes)
HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"


class DeploymentSpecError(ValueError):
    """prefect.yaml lacks something a served deployment needs; names the deployment."""


def build_deployments(prefect_yaml: Path = PREFECT_YAML) -> list[RunnerDeployment]:
    """One ``RunnerDeployment`` per entry under ``deployments:`` in ``prefect_yaml``."""
    spec = yaml.safe_load(prefect_yaml.read_text(encoding="utf-8"))
    return [_to_deployment(entry, prefect_yaml) for entry in spec.get("deployments") or []]


def _to_deployment(entry: dict[str, Any], source: Path) -> RunnerDeployment:
    name = entry.get("name")
    if not name or not entry.get("entrypoint"):
        raise DeploymentSpecError(f"{source}: every deployment needs a name and an entrypoint")
    schedules = [
        Cron(s["cron"], timezone=s.get("timezone", "UTC"))
        for s in entry.get("schedules") or []
        if "cron" in s
    ]
    limit = entry.get("concurrency_limit")
    return _load_flow(entry["entrypoint"], name).to_deployment(
        name=name,
        parameters=entry.get("parameters") or {},
        description=entry.get("description"),
        tags=entry.get("tags"),
        schedules=schedules,
        concurrency_limit=ConcurrencyLimitConfig(**limit) if isinstance(limit, dict) else limit,
        triggers=[
            TRIGGERS.validate_python({"name": f"{name}__automation_{i}", **spec})
            for i, spec in enumerate(entry.get("triggers") or [], start=1)
        ],
    )


def heartbeat_seconds(prefect_yaml: Path = PREFECT_YAML) -> int:
    """The deployments' heartbeat: the largest ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` in their
    job variables (the slowest beat decides when silence means a dead run)."""
    spec = yaml.safe_load(prefect_yaml.read_text(encoding="utf-8"))
    beats = [
        int(env[HEARTBEAT_ENV])
        for entry in spec.get("deployments") or []
        if HEARTBEAT_ENV in (env := _job_env(entry))
    ]
    if not beats:
        raise DeploymentSpecError(
            f"{prefect_yaml}: no deployment sets {HEARTBEAT_ENV} in work_pool.job_variables.env"
        )
    return max(beats)


def _job_env(entry: dict[str, Any]) -> dict[str, str]:
    return ((entry.get("work_pool") or {}).get("job_variables") or {}).get("env") or {}


def _load_flow(entrypoint: str, deployment: str) -> Flow:
    """``flows/pipeline.py:training_pipeline`` -> the flow object, imported as a module
    (so that served runs import ``flows.pipeline`` just as the worker's runs do)."""
    path, _, attr = entrypoint.partition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    found = getattr(module, attr, None)
    if not isinstance(found, Flow):
        raise DeploymentSpecError(f"deployment {deployment!r}: {entrypoint} is not a Prefect flow")
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__)
    parser.add_argument("--prefect-file", type=Path, default=PREFECT_YAML)
    parser.add_argument(
        "--automations-only", action="store_true", help="create the automations, serve nothing"
    )
    args = parser.parse_args(argv)
    heartbeat_s = heartbeat_seconds(args.prefect_file)
    automation = apply_automation(zombie_automation(heartbeat_s))
    print(f"automation {automation.name!r}: {automation.id}")
    if not args.automations_only:
        serve(*build_deployments(args.prefect_file), heartbeat_seconds=heartbeat_s)


if __name__ == "__main__":
    main()
