"""The model registry's I/O: register a version, run the promotion gate, roll back, list
the alias history. The decision itself is flows/gate.py's, a pure function of two scored
systems; this module reads them from MLflow and writes the outcome back.

Every registered version gets the `challenger` alias; the gate gives it `champion` (or
`force` does, and says so). Every alias move is written to the version that receives the
alias as a tag `alias_move.<UTC time>` holding JSON (alias, from, to, trigger, deltas,
p-value, reason), so `seq2seq registry history` can list them. Moves are serialised by the
registry lock (flows/registry_lock.py: one for every machine sharing the store), and the
champion is re-read under it: when two promotions race, the second re-decides against
whatever the first left behind.

A `champion` move is crash-safe (flows/alias_moves.py: its intent is written first): every
operation here finishes a pending move as soon as it holds the lock, so a kill at any point
leaves one champion chain and `rollback` returns to the champion before the last promotion.

A new version records the sha256 of its files (flows/model_integrity.py), and `champion`
moves (promotion, rollback) only onto a version whose files in the store still match.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

from flows import model_integrity
from flows import registry_lock as locks
from flows.alias_moves import (
    CHAMPION,
    alias_holder,
    fault_point,
    finish_pending_move,
    history,
    move_champion,
    pending_move,
    record_move,
    utc_now,
)
from flows.gate import (
    GateDecision,
    Systems,
    decide_promotion,
    decision_tags,
    overrule,
    score_tags,
)
from seq2seq_core.config import PipelineConfig

log = logging.getLogger(__name__)

CHALLENGER = "challenger"
HYPOTHESES_ARTIFACT = "artifacts/eval/test_hypotheses.txt"
REFERENCES_ARTIFACT = "artifacts/eval/test_references.txt"
LINEAGE_PREFIXES = (
    "git.", "dvc.", "code.", "params.", "config.", "prefect.", "torch.", "python.", "host."
)  # fmt: skip


class RegistryError(ValueError):
    """A registry operation cannot be done (no champion to roll back, unknown version)."""


@dataclass
class RegistrationResult:
    model_name: str
    version: int
    aliases: list[str]
    promoted: bool
    reason: str
    champion_version: int | None
    tags: dict[str, str] = field(default_factory=dict)


def register_and_promote(
    cfg: PipelineConfig,
    *,
    model_uri: str,
    run_id: str | None,
    metrics: Mapping[str, Any],
    trigger: str = "",
    resamples: int | None = None,
    extra_tags: Mapping[str, str] | None = None,
) -> RegistrationResult:
    """Register `model_uri`, move `challenger` to it, and run the promotion gate.

    Keyed on the MLflow run: when `run_id` already has a version (a retry after a failure
    half-way), that version is reused, and a gate decision already recorded on it stands.
    `extra_tags` (fresh lineage, the inputs fingerprint) override the run's tags."""
    name = cfg.register.model_name
    client = MlflowClient()
    _ensure_registered_model(client, name)
    existing = version_of_run(client, name, run_id) if run_id else None
    if existing is None:
        version = _create_version(client, name, model_uri, run_id, metrics, extra_tags)
        fault_point("after_version")
    else:
        version = str(existing.version)
        log.info("run %s is already registered as %s v%s: reusing it", run_id, name, version)
    with registry_lock(cfg):
        finish_pending_move(client, name)
        current = client.get_model_version(name, version)
        if "promotion.decision" in current.tags:
            return _recorded_result(client, current)
        previous = alias_holder(client, name, CHALLENGER)
        if previous is None or str(previous.version) != version:
            client.set_registered_model_alias(name, CHALLENGER, version)
            record_move(client, name, CHALLENGER, previous, version, trigger, "registered")
    return promote(
        cfg,
        version=version,
        trigger=trigger,
        resamples=resamples or cfg.evaluate.bootstrap_resamples,
        client=client,
    )


def _create_version(
    client: MlflowClient,
    name: str,
    model_uri: str,
    run_id: str | None,
    metrics: Mapping[str, Any],
    extra_tags: Mapping[str, str] | None,
) -> str:
    """A new version of `name` tagged with its test scores, the run's lineage and the
    sha256 digests of its files as the store holds them now (model_integrity)."""
    version_tags = score_tags(metrics)
    if run_id:
        run_tags = client.get_run(run_id).data.tags
        version_tags |= {k: v for k, v in run_tags.items() if k.startswith(LINEAGE_PREFIXES)}
        version_tags["source.run_id"] = run_id
    version_tags |= dict(extra_tags or {})
    version_tags |= model_integrity.digest_tags_of(model_uri)
    created = client.create_model_version(
        name, model_uri, run_id=run_id, tags=version_tags, model_id=_model_id(model_uri)
    )
    return str(created.version)


def promote(
    cfg: PipelineConfig,
    *,
    version: str | int | None = None,
    force: bool = False,
    trigger: str = "",
    resamples: int | None = None,
    client: MlflowClient | None = None,
) -> RegistrationResult:
    """Run the gate for `version` (default: the challenger) against the champion, under
    the registry lock, and move `champion` if it passes (or `force`)."""
    name = cfg.register.model_name
    client = client or MlflowClient()
    with registry_lock(cfg):
        finish_pending_move(client, name)
        version = str(_challenger_version(client, name) if version is None else version)
        candidate = client.get_model_version(name, version)
        champion = alias_holder(client, name, CHAMPION)
        already_champion = champion is not None and str(champion.version) == version
        if already_champion:
            gate_says = GateDecision(False, f"v{version} is already the champion")
        else:
            gate_says = _judge(cfg, candidate, champion, resamples)
        decision = overrule(gate_says, force=force, already_champion=already_champion)
        now = utc_now()
        record = decision_tags(
            decision,
            forced=decision.promote and not gate_says.promote,
            previous_champion=str(champion.version) if champion else None,
            settings=cfg.register,
            trigger=trigger,
            now=now,
        )
        if decision.promote:
            # A version whose files differ from its recorded digests never becomes champion.
            model_integrity.verify_registered_version(name, version)
            replaced = {"promotion.replaced_by": version, "promotion.replaced_at": now}
            move_champion(client, name, champion, version, trigger, decision.reason, {
                "kind": "promotion", "version_tags": record,
                "from_tags": replaced if champion else {},
                **{k: getattr(decision, k) for k in ("bleu_delta", "chrf_delta", "p_value")},
            })  # fmt: skip
        else:
            for key, value in record.items():
                client.set_model_version_tag(name, version, key, value)
        final = client.get_model_version(name, version)
        holder = alias_holder(client, name, CHAMPION)
    return RegistrationResult(
        model_name=name,
        version=int(version),
        aliases=sorted(final.aliases),
        promoted=decision.promote,
        reason=decision.reason,
        champion_version=int(holder.version) if holder else None,
        tags=record,
    )


def _judge(
    cfg: PipelineConfig,
    candidate: ModelVersion,
    champion: ModelVersion | None,
    resamples: int | None,
) -> GateDecision:
    """The gate on the two versions' score tags and test hypotheses."""
    return decide_promotion(
        candidate.tags,
        champion.tags if champion else None,
        champion_version=champion.version if champion else None,
        settings=cfg.register,
        systems=_systems(candidate.name, champion, candidate.version) if champion else None,
        resamples=resamples or cfg.evaluate.bootstrap_resamples,
    )


def _challenger_version(client: MlflowClient, name: str) -> str:
    holder = alias_holder(client, name, CHALLENGER)
    if holder is None:
        raise RegistryError(f"{name}: no version has the {CHALLENGER!r} alias")
    return str(holder.version)


def _recorded_result(client: MlflowClient, version: ModelVersion) -> RegistrationResult:
    """The outcome an earlier attempt already recorded on `version` (no second gate run,
    which would rewrite its promotion tags)."""
    tags = version.tags
    champion = alias_holder(client, version.name, CHAMPION)
    return RegistrationResult(
        model_name=version.name,
        version=int(version.version),
        aliases=sorted(version.aliases),
        promoted=tags.get("promotion.decision") == "promoted",
        reason=tags.get("promotion.reason", ""),
        champion_version=int(champion.version) if champion else None,
        tags={k: v for k, v in tags.items() if k.startswith("promotion.")},
    )


def rollback(cfg: PipelineConfig, *, trigger: str = "") -> RegistrationResult:
    """Move `champion` back to the version the current champion replaced."""
    name = cfg.register.model_name
    client = MlflowClient()
    with registry_lock(cfg):
        finished = finish_pending_move(client, name)
        if finished is not None and finished.get("kind") == "rollback":
            # The rollback asked for again is the one a killed attempt started: done now.
            return _rollback_result(client, name, finished["to"], finished["reason"])
        champion = alias_holder(client, name, CHAMPION)
        if champion is None:
            raise RegistryError(f"{name}: there is no champion to roll back")
        previous = champion.tags.get("promotion.previous_champion", "none")
        if previous in ("", "none"):
            raise RegistryError(
                f"{name}: champion v{champion.version} replaced no earlier champion"
            )
        client.get_model_version(name, previous)  # an unknown version raises here
        # Refuse to roll back onto a tampered version: the alias stays where it is.
        model_integrity.verify_registered_version(name, previous)
        reason = f"rollback from v{champion.version} to v{previous}"
        move_champion(client, name, champion, previous, trigger, reason, {
            "kind": "rollback", "from_tags": {"promotion.rolled_back_at": utc_now()},
        })  # fmt: skip
        return _rollback_result(client, name, previous, reason)


def _rollback_result(
    client: MlflowClient, name: str, target: str, reason: str
) -> RegistrationResult:
    final = client.get_model_version(name, target)
    return RegistrationResult(
        model_name=name,
        version=int(target),
        aliases=sorted(final.aliases),
        promoted=True,
        reason=reason,
        champion_version=int(target),
    )


def _systems(name: str, champion: ModelVersion, version: str) -> Systems | None:
    """(champion hyps, challenger hyps, references) from the two models' artifacts, each
    checked against its version's recorded digests (a mismatch raises, never decides)."""
    candidate = MlflowClient().get_model_version(name, version)
    try:
        base = _artifact_lines(champion, HYPOTHESES_ARTIFACT)
        cand = _artifact_lines(candidate, HYPOTHESES_ARTIFACT)
        refs = _artifact_lines(candidate, REFERENCES_ARTIFACT)
    except (MlflowException, OSError):
        return None
    return base, cand, refs


def _artifact_lines(version: ModelVersion, rel: str) -> list[str]:
    uri = f"models:/{version.name}/{version.version}/{rel}"
    with tempfile.TemporaryDirectory(prefix="seq2seq-gate-") as tmp:
        path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
        checked = model_integrity.verify_file(version, rel, Path(path))
        return checked.read_text(encoding="utf-8").splitlines()


def registry_lock(cfg: PipelineConfig) -> AbstractContextManager[None]:
    """An exclusive lock for alias moves, shared by every process (on every machine) that
    uses this store, waiting up to `pipeline.lock_timeout_min` (flows/registry_lock.py)."""
    return locks.registry_lock(mlflow.get_tracking_uri(), timeout_min=cfg.pipeline.lock_timeout_min)


def registration_state(name: str, run_id: str | None) -> dict[str, Any]:
    """What the registry holds for MLflow run `run_id` now: its version (None when none
    was created), that version's aliases, the champion and a pending champion move. The
    failure note (flows/run_notes.py) says from it what was and was not registered."""
    client = MlflowClient()
    version = version_of_run(client, name, run_id) if run_id else None
    champion = alias_holder(client, name, CHAMPION)
    return {
        "model_name": name,
        "version": str(version.version) if version else None,
        "aliases": sorted(version.aliases) if version else [],
        "champion": str(champion.version) if champion else None,
        "pending_move": pending_move(client, name),
    }


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise


def version_of_run(client: MlflowClient, name: str, run_id: str) -> ModelVersion | None:
    """The version of `name` registered from MLflow run `run_id` (the oldest if several):
    what makes a retried registration create no second version."""
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return min(found, key=lambda mv: int(mv.version), default=None)


def _model_id(model_uri: str) -> str | None:
    """`models:/m-<id>` (a logged model) -> `m-<id>`; other URIs carry none."""
    prefix = "models:/m-"
    if model_uri.startswith(prefix) and "/" not in model_uri[len(prefix) :]:
        return model_uri[len("models:/") :]
    return None


__all__ = [
    "CHALLENGER", "CHAMPION", "RegistrationResult", "RegistryError", "alias_holder",
    "finish_pending_move", "history", "pending_move", "promote", "register_and_promote",
    "registration_state", "registry_lock", "rollback", "version_of_run",
]  # fmt: skip
