"""The on-call notice: what a person reads when a scheduled run failed, crashed or never ran.

Prefect's automations (the triggers of the ``on-call-notice`` deployment in prefect.yaml)
run this flow with the deployment, the flow run and its outcome. It leaves one markdown
artifact (key ``on-call-notice``) and logs one ERROR line naming all three and what to do,
so a notification block (Slack, e-mail, PagerDuty) on this flow's runs or log has one thing
to forward, and the UI lists every notice under one artifact key.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

NOTICE_KEY = "on-call-notice"
# The outcome the proactive trigger reports: no Completed run in its window.
MISSING = "Missing"

WHAT_TO_DO = {
    "Failed": (
        "read the run's `pipeline-failure` artifact and log (they name the stage and the "
        "error), fix the cause, then start it again with `prefect deployment run`; the "
        "champion was left alone"
    ),
    "Crashed": (
        "the worker or the flow-run process died (killed, out of memory, machine lost); "
        "check that a worker is polling the pool (`make worker`). The next run starts on "
        "its own and resumes training from models/checkpoints/last.pt"
    ),
    MISSING: (
        "no run completed in the expected window: check that the Prefect server's "
        "scheduler is up, that a worker is polling the pool (`make worker`) and that the "
        "deployment's schedule is active; `prefect deployment run` starts one now"
    ),
}


def notice_markdown(
    deployment: str, outcome: str, flow_run_name: str, flow_run_id: str, message: str
) -> str:
    """The artifact's text: what happened to which run, and the next step."""
    run = f"`{flow_run_name}` ({flow_run_id})" if flow_run_id else "none"
    lines = [
        f"# {deployment}: {outcome}",
        "",
        "| deployment | flow run | outcome | state message |",
        "| --- | --- | --- | --- |",
        f"| {deployment} | {run} | {outcome} | {message or '-'} |",
        "",
        f"**What to do:** {what_to_do(outcome)}.",
    ]
    return "\n".join(lines) + "\n"


def what_to_do(outcome: str) -> str:
    """The next step for ``outcome`` (a state name, or ``Missing``)."""
    return WHAT_TO_DO.get(outcome, WHAT_TO_DO["Failed"])


@flow(name="seq2seq-on-call-notice")
def on_call_notice(
    deployment: str,
    outcome: str,
    flow_run_name: str = "",
    flow_run_id: str = "",
    message: str = "",
) -> str:
    """Leave the notice as an artifact and one ERROR log line; returns the markdown."""
    markdown = notice_markdown(deployment, outcome, flow_run_name, flow_run_id, message)
    create_markdown_artifact(
        markdown, key=NOTICE_KEY, description=f"{deployment}: {outcome} {flow_run_name}".strip()
    )
    get_run_logger().error(
        "on-call: deployment %s, flow run %s (%s): %s%s; what to do: %s",
        deployment,
        flow_run_name or "-",
        flow_run_id or "-",
        outcome,
        f" ({message})" if message else "",
        what_to_do(outcome),
    )
    return markdown
