"""flows.deploy: the served deployments are the ones prefect.yaml declares."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.support import REPO

POOL = "seq2seq-process"


def test_served_deployments_match_prefect_yaml() -> None:
    from flows.deploy import build_deployments

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text(encoding="utf-8"))
    served = {d.name: d for d in build_deployments()}
    assert set(served) == {d["name"] for d in spec["deployments"]}
    for entry in spec["deployments"]:
        deployment = served[entry["name"]]
        assert deployment.entrypoint == entry["entrypoint"]
        assert deployment.parameters == entry["parameters"]
        assert [(s.schedule.cron, s.schedule.timezone) for s in deployment.schedules] == [
            (s["cron"], s["timezone"]) for s in entry["schedules"]
        ]
        assert entry["work_pool"]["name"] == POOL
        if entry["schedules"]:  # scheduled: one run at a time, later ones wait their turn
            options = deployment.concurrency_options
            assert (deployment.concurrency_limit, options.collision_strategy) == (1, "ENQUEUE")
    nightly, weekly = served["nightly-retrain"], served["weekly-champion-eval"]
    assert nightly.parameters["overrides"] == ["train.init_from=champion"]
    assert nightly.triggers == []
    (trigger,) = weekly.triggers
    assert trigger.expect == {"prefect.flow-run.Completed"}
    assert trigger.match_related.root == {
        "prefect.resource.role": "deployment", "prefect.resource.name": "nightly-retrain"
    }  # fmt: skip


def test_on_call_notice_runs_on_failed_crashed_and_missing_nights() -> None:
    from prefect.events.schemas.automations import Posture

    from flows.deploy import build_deployments

    (notice,) = [d for d in build_deployments() if d.name == "on-call-notice"]
    assert notice.entrypoint == "flows/on_call.py:on_call_notice"
    assert notice.concurrency_limit is None  # a notice never queues behind another
    failed, missing = notice.triggers
    assert (failed.posture, failed.expect) == (
        Posture.Reactive, {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    )  # fmt: skip
    assert failed.match_related.root["prefect.resource.name"] == [
        "nightly-retrain", "weekly-champion-eval"
    ]  # fmt: skip
    # Rendered by the server from the run that failed.
    assert failed.parameters["outcome"] == "{{ flow_run.state.name }}"
    assert (missing.posture, missing.within.total_seconds()) == (Posture.Proactive, 26 * 3600)
    assert missing.after == missing.expect == {"prefect.flow-run.Completed"}
    assert missing.for_each == {"related:deployment:prefect.resource.id"}
    assert missing.match_related.root["prefect.resource.name"] == "nightly-retrain"
    assert missing.parameters["outcome"] == "Missing"


def test_zombie_automation_crashes_a_run_after_three_missed_heartbeats() -> None:
    from prefect.client.schemas.objects import StateType
    from prefect.events.schemas.automations import Posture

    from flows.automations import zombie_automation
    from flows.deploy import heartbeat_seconds

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text(encoding="utf-8"))
    for entry in spec["deployments"]:  # every deployed run beats
        assert entry["work_pool"]["job_variables"]["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"]
    assert heartbeat_seconds() == 60
    automation = zombie_automation(60)
    trigger = automation.trigger
    assert trigger.posture == Posture.Proactive
    assert trigger.within.total_seconds() == 180
    assert trigger.after == {"prefect.flow-run.heartbeat"}
    assert trigger.expect == {"prefect.flow-run.heartbeat"} | {
        f"prefect.flow-run.{s}" for s in ("Completed", "Failed", "Cancelled", "Crashed")
    }
    assert trigger.for_each == {"prefect.resource.id"}  # one window per flow run
    (action,) = automation.actions
    assert action.state == StateType.CRASHED and "no heartbeat for 180 s" in action.message


def test_heartbeat_missing_from_prefect_yaml_is_named(tmp_path: Path) -> None:
    from flows.deploy import DeploymentSpecError, heartbeat_seconds

    bare = tmp_path / "prefect.yaml"
    bare.write_text("deployments:\n  - name: x\n    entrypoint: a.py:f\n", encoding="utf-8")
    with pytest.raises(DeploymentSpecError, match="PREFECT_FLOWS_HEARTBEAT_FREQUENCY"):
        heartbeat_seconds(bare)


def test_on_call_notice_says_what_to_do() -> None:
    from flows.on_call import notice_markdown

    crashed = notice_markdown("nightly-retrain", "Crashed", "red-fox", "1234", "no heartbeat")
    assert crashed.startswith("# nightly-retrain: Crashed\n")
    assert "| nightly-retrain | `red-fox` (1234) | Crashed | no heartbeat |" in crashed
    assert "resumes training from models/checkpoints/last.pt" in crashed
    missing = notice_markdown("nightly-retrain", "Missing", "", "", "")
    assert "| nightly-retrain | none | Missing | - |" in missing
    assert "`prefect deployment run` starts one now" in missing
    failed = notice_markdown("weekly-champion-eval", "Failed", "a", "b", "boom")
    assert "`pipeline-failure` artifact" in failed


@pytest.mark.parametrize("message", [None, 'no heartbeat for 90 s: "the worker" {died}'])
def test_failed_run_notice_parameters_render_as_the_server_renders_them(
    message: str | None,
) -> None:
    """The server upgrades each `{{ x }}` to `{{ x | tojson }}`: a UUID or a None there fails
    the action (no notice at all), so the templates must yield strings."""
    import copy
    import uuid
    from types import SimpleNamespace

    from prefect.server.events.actions import RunDeployment
    from prefect.utilities.schema_tools.hydration import HydrationContext, hydrate

    from flows.deploy import build_deployments

    (notice,) = [d for d in build_deployments() if d.name == "on-call-notice"]
    parameters = copy.deepcopy(notice.triggers[0].parameters)
    RunDeployment._upgrade_v1_templates(parameters)
    run_id = uuid.uuid4()
    state = SimpleNamespace(name="Crashed", message=message)
    context = {
        "flow_run": SimpleNamespace(id=run_id, name="red-fox", state=state),
        "deployment": SimpleNamespace(name="nightly-retrain"),
    }
    rendered = hydrate(
        parameters, HydrationContext(raise_on_error=True, render_jinja=True, jinja_context=context)
    )
    assert rendered == {
        "deployment": "nightly-retrain",
        "outcome": "Crashed",
        "flow_run_name": "red-fox",
        "flow_run_id": str(run_id),
        "message": message or "",
    }
