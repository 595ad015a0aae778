"""The automation that is not a deployment's own trigger: crash zombie flow runs.

Created by `make deploy` and `python -m flows.deploy` (flows/deploy.py reads the heartbeat
from prefect.yaml).

A worker or flow-run process killed with SIGKILL (or lost with its machine) never reports a
final state: its run stays Running and keeps its deployment's one concurrency slot, so every
later night queues behind it. Flow runs send a heartbeat event every
``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds (set for the deployments in prefect.yaml); this
automation marks a run Crashed when ``MISSED_HEARTBEATS`` beats in a row do not come, which
releases the slot, and the Crashed event reaches the on-call notice (prefect.yaml's
``on-call-notice`` triggers). Prefect's recipe: "Detect zombie flows" in its docs.

Created or updated by name, so deploying twice leaves one automation.
"""

from __future__ import annotations

from datetime import timedelta

from prefect.automations import Automation
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification

ZOMBIE_AUTOMATION = "seq2seq-crash-zombie-flow-runs"
# Beats a run may miss (a busy machine, a slow event stream) before it counts as dead.
MISSED_HEARTBEATS = 3
FINAL_STATES = ("Completed", "Failed", "Cancelled", "Crashed")
HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"


def zombie_automation(heartbeat_s: int) -> Automation:
    """After a run's heartbeat, expect another beat or a final state within
    ``MISSED_HEARTBEATS`` beats; otherwise set the run Crashed (one bucket per run)."""
    silence = heartbeat_s * MISSED_HEARTBEATS
    return Automation(
        name=ZOMBIE_AUTOMATION,
        description=(
            f"Mark a flow run Crashed when its heartbeat (every {heartbeat_s} s) stops for "
            f"{silence} s, so its deployment's concurrency slot is released."
        ),
        trigger=EventTrigger(
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            after={HEARTBEAT_EVENT},
            expect={HEARTBEAT_EVENT, *(f"prefect.flow-run.{state}" for state in FINAL_STATES)},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=silence),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=(
                    f"no heartbeat for {silence} s: the worker or the flow-run process died "
                    f"(marked Crashed by the {ZOMBIE_AUTOMATION} automation)"
                ),
            )
        ],
    )


def apply_automation(automation: Automation) -> Automation:
    """Create ``automation`` on the server of ``PREFECT_API_URL``, or update the one of the
    same name; returns it with its id."""
    try:
        existing = Automation.read(name=automation.name)
    except ValueError:  # Prefect's "not found"
        return automation.create()
    automation.id = existing.id
    automation.update()
    return automation
