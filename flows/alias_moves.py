"""Alias moves in the registry: the `alias_move.*` record each move leaves, the history
read back from them, and the crash-safe move of `champion`.

A champion move writes its intent first, as the registered model's tag `promotion.intent`
(from, to, kind, trigger, reason, the tags each side gets), then carries it out step by
step, each step idempotent: the new champion's tags, the alias, the old champion's tags, one
`alias_move` record (it names the intent, so a finished move is never recorded twice), and
last the intent is cleared. Whoever takes the registry lock next finishes a pending intent
first (flows/registry.py), so a kill at any point leaves one champion chain.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from flows.lineage import operator_identity

log = logging.getLogger(__name__)

CHAMPION = "champion"
INTENT_TAG = "promotion.intent"  # on the registered model: the champion move under way
# Test-only: `after_version` or `after_alias` kills this process there (tests/faults/).
FAULT_KILL_ENV = "SEQ2SEQ_FAULT_KILL_AT"


def move_champion(
    client: MlflowClient,
    name: str,
    champion: ModelVersion | None,
    version: str,
    trigger: str,
    reason: str,
    details: Mapping[str, Any],
) -> None:
    """Write the intent to move `champion` from `champion` to `version` (with the tags
    each side gets in `details`), then carry it out."""
    intent = {
        "alias": CHAMPION,
        "from": str(champion.version) if champion else None,
        "to": str(version),
        "trigger": trigger,
        "reason": reason,
        "at": utc_now(precise=True),
        **details,
    }
    client.set_registered_model_tag(name, INTENT_TAG, json.dumps(intent))
    _carry_out(client, name, intent)


def finish_pending_move(client: MlflowClient, name: str) -> dict[str, Any] | None:
    """Carry out a champion move whose holder died half-way (its intent is still on the
    model); returns that intent, or None when nothing was pending. Call under the lock."""
    intent = pending_move(client, name)
    if intent is None:
        return None
    log.warning(
        "%s: finishing the %s of champion v%s -> v%s that an earlier run started at %s "
        "and did not finish (killed or crashed)",
        name, intent.get("kind", "move"), intent["from"], intent["to"], intent["at"],
    )  # fmt: skip
    _carry_out(client, name, intent)
    return intent


def pending_move(client: MlflowClient, name: str) -> dict[str, Any] | None:
    """The champion move recorded on `name` and not yet finished, or None."""
    try:
        raw = client.get_registered_model(name).tags.get(INTENT_TAG)
    except MlflowException:
        return None
    return json.loads(raw) if raw else None


def _carry_out(client: MlflowClient, name: str, intent: Mapping[str, Any]) -> None:
    """Each step is idempotent, so a retry after a kill anywhere in here ends the same:
    the gate's record on the new champion, the alias, the old champion's replaced tags,
    one alias_move record, the intent cleared."""
    source, target = intent["from"], str(intent["to"])
    for key, value in intent.get("version_tags", {}).items():
        client.set_model_version_tag(name, target, key, value)
    holder = alias_holder(client, name, CHAMPION)
    current = str(holder.version) if holder else None
    if current not in (source, target):  # cannot happen under the lock; never guess
        log.error("%s: champion is v%s, neither end of the pending move %s -> %s: dropped",
                  name, current, source, target)  # fmt: skip
        client.delete_registered_model_tag(name, INTENT_TAG)
        return
    if current != target:
        client.set_registered_model_alias(name, CHAMPION, target)
    fault_point("after_alias")
    if source is not None:
        for key, value in intent.get("from_tags", {}).items():
            client.set_model_version_tag(name, source, key, value)
    if not _move_recorded(client, name, target, intent["at"]):
        record_move(client, name, CHAMPION, source, target, intent["trigger"],
                     intent["reason"], intent)  # fmt: skip
    client.delete_registered_model_tag(name, INTENT_TAG)


def _move_recorded(client: MlflowClient, name: str, version: str, intent_at: str) -> bool:
    tags = client.get_model_version(name, version).tags
    return any(
        json.loads(v).get("intent") == intent_at
        for k, v in tags.items()
        if k.startswith("alias_move.") and k.endswith(f".{CHAMPION}")
    )


def fault_point(where: str) -> None:
    """Test-only: die here, as a SIGKILL would, when SEQ2SEQ_FAULT_KILL_AT says so."""
    if os.environ.get(FAULT_KILL_ENV) == where:
        os.kill(os.getpid(), signal.SIGKILL)


def record_move(
    client: MlflowClient,
    name: str,
    alias: str,
    previous: ModelVersion | str | None,
    to_version: str,
    trigger: str,
    reason: str,
    intent: Mapping[str, Any] | None = None,
) -> None:
    """The `alias_move.<time>.<alias>` tag on `to_version`; a champion move carries its
    intent's time (`intent`), which is how a finished move is not recorded twice."""
    at = utc_now(precise=True)
    intent = intent or {}
    source = previous.version if isinstance(previous, ModelVersion) else previous
    move = {
        "alias": alias,
        "from": str(source) if source is not None else None,
        "to": str(to_version),
        "at": at,
        "seq": int(datetime.now(UTC).timestamp() * 1e6),
        "trigger": trigger,
        "by": operator_identity(),
        "reason": reason,
        "bleu_delta": intent.get("bleu_delta"),
        "chrf_delta": intent.get("chrf_delta"),
        "p_value": intent.get("p_value"),
        "intent": intent.get("at"),
    }
    key = f"alias_move.{at.replace(':', '-').replace('+', '_')}.{alias}"
    client.set_model_version_tag(name, str(to_version), key, json.dumps(move))


def history(model_name: str) -> list[dict[str, Any]]:
    """Every recorded alias move of `model_name`, oldest first."""
    client = MlflowClient()
    moves = []
    for mv in client.search_model_versions(f"name='{model_name}'"):
        for key, value in mv.tags.items():
            if key.startswith("alias_move."):
                moves.append(json.loads(value))
    return sorted(moves, key=lambda m: (m["at"], m["seq"]))


def alias_holder(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version holding `alias`, or None when the model or the alias does not exist."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def utc_now(precise: bool = False) -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds" if precise else "seconds")
