"""The model registry: register a version, the promotion gate, rollback, alias history.

Every registered version gets the `challenger` alias. The gate gives it `champion` only
when, on the same test set (sha256) scored the same way (sacrebleu signatures), its BLEU
beats the champion's by at least `register.min_bleu_gain`, a paired bootstrap test on the
two systems' test hypotheses gives p < `register.p_value`, and chrF drops by at most
`register.max_chrf_drop`. `force` overrides and says so.

Every alias move is written to the version that receives the alias as a tag
`alias_move.<UTC time>` holding JSON (alias, from, to, trigger, deltas, p-value, reason),
so `seq2seq registry history` can list them. Moves are serialised by a lock file next to
the tracking store, and the champion is re-read under the lock: when two promotions
race, the second re-decides against whatever the first left behind.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

from flows.tracking import MetricsFormatError, _retry, read_test_scores, store_lock
from seq2seq_core.config import PipelineConfig, RegisterConfig
from seq2seq_core.significance import IncomparableScoresError, paired_bootstrap

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
HYPOTHESES_ARTIFACT = "artifacts/eval/test_hypotheses.txt"
REFERENCES_ARTIFACT = "artifacts/eval/test_references.txt"
LINEAGE_PREFIXES = ("git.", "dvc.", "params.", "config.", "prefect.", "torch.", "python.", "host.")


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


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    bleu_delta: float | None = None
    chrf_delta: float | None = None
    p_value: float | None = None


# --------------------------------------------------------------------------- the gate


def score_tags(metrics: Mapping[str, Any]) -> dict[str, str]:
    """Model-version tags the gate reads back from the registry."""
    test = read_test_scores(metrics)
    tags = {
        "test.bleu": str(float(test["bleu"])),
        "test.chrf": str(float(test["chrf"])),
        "test.ter": str(float(test["ter"])),
        "test.test_set_sha256": str(test["test_set_sha256"]),
    }
    if "sentences" in test:
        tags["test.sentences"] = str(test["sentences"])
    for metric, sig in test["signatures"].items():
        tags[f"test.signature.{metric}"] = str(sig)
    return tags


def _bleu_tokenize(signature: str) -> str:
    parts = dict(p.split(":", 1) for p in signature.split("|") if ":" in p)
    return parts.get("tok", "13a")


def decide_promotion(
    challenger: Mapping[str, str],
    champion: Mapping[str, str] | None,
    *,
    champion_version: str | int | None,
    settings: RegisterConfig,
    systems: tuple[list[str], list[str], list[str]] | None = None,
    resamples: int = 1000,
) -> GateDecision:
    """The gate on two versions' tags (as `score_tags` writes them) and, for the
    significance test, `systems` = (champion hyps, challenger hyps, references)."""
    if champion is None:
        return GateDecision(True, "no champion yet")
    who = f"champion v{champion_version}"
    if "test.bleu" not in champion or "test.test_set_sha256" not in champion:
        return GateDecision(False, f"not comparable: {who} has no recorded test BLEU/test set")
    if champion["test.test_set_sha256"] != challenger["test.test_set_sha256"]:
        return GateDecision(
            False,
            f"not comparable: different test set (sha256 {challenger['test.test_set_sha256'][:12]}"
            f" vs {who}'s {champion['test.test_set_sha256'][:12]})",
        )
    for metric in ("bleu", "chrf", "ter"):
        ours, theirs = (t.get(f"test.signature.{metric}") for t in (challenger, champion))
        if ours != theirs:
            return GateDecision(
                False,
                f"not comparable: different {metric.upper() if metric != 'chrf' else 'chrF'} "
                f"signature ({ours!r} vs {who}'s {theirs!r})",
            )
    new, old = float(challenger["test.bleu"]), float(champion["test.bleu"])
    bleu_delta = round(new - old, 4)
    chrf_delta = round(float(challenger["test.chrf"]) - float(champion["test.chrf"]), 4)
    deltas = {"bleu_delta": bleu_delta, "chrf_delta": chrf_delta}
    if bleu_delta <= 0 or bleu_delta < settings.min_bleu_gain:
        return GateDecision(
            False,
            f"test BLEU {new:.2f} vs {who}'s {old:.2f}: gain {bleu_delta:.2f} is not a gain of "
            f"at least min_bleu_gain {settings.min_bleu_gain:g}",
            **deltas,
        )
    if -chrf_delta > settings.max_chrf_drop:
        return GateDecision(
            False,
            f"chrF drops by {-chrf_delta:.2f} (> max_chrf_drop {settings.max_chrf_drop:g})",
            **deltas,
        )
    if systems is None:
        return GateDecision(
            False, f"no significance test possible: {who} has no test hypotheses", **deltas
        )
    try:
        test = paired_bootstrap(
            *systems,
            resamples=resamples,
            tokenize=_bleu_tokenize(challenger.get("test.signature.bleu", "")),
        )
    except IncomparableScoresError as exc:
        return GateDecision(False, f"not comparable: {exc}", **deltas)
    if not test.significant(settings.p_value):
        return GateDecision(
            False,
            f"BLEU gain {bleu_delta:.2f} over {who} is not significant "
            f"(paired bootstrap p={test.p_value:.4f} >= {settings.p_value:g})",
            **deltas,
            p_value=test.p_value,
        )
    return GateDecision(
        True,
        f"test BLEU {new:.2f} beats {who}'s {old:.2f} by {bleu_delta:.2f} "
        f"(>= min_bleu_gain {settings.min_bleu_gain:g}; paired bootstrap p={test.p_value:.4f}"
        f" < {settings.p_value:g}; chrF {chrf_delta:+.2f})",
        **deltas,
        p_value=test.p_value,
    )


# --------------------------------------------------------------------------- registry


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
    _retry(_ensure_registered_model, client, name)
    existing = version_of_run(client, name, run_id) if run_id else None
    if existing is None:
        version_tags = score_tags(metrics)
        if run_id:
            run_tags = _retry(client.get_run, run_id).data.tags
            version_tags |= {k: v for k, v in run_tags.items() if k.startswith(LINEAGE_PREFIXES)}
            version_tags["source.run_id"] = run_id
        version_tags |= dict(extra_tags or {})
        created = _retry(
            client.create_model_version,
            name,
            model_uri,
            run_id=run_id,
            tags=version_tags,
            model_id=_model_id(model_uri),
        )
        version = str(created.version)
    else:
        version = str(existing.version)
        log.info("run %s is already registered as %s v%s: reusing it", run_id, name, version)
        if "promotion.decision" in existing.tags:
            return _recorded_result(client, existing)
    with registry_lock():
        previous = alias_holder(client, name, CHALLENGER)
        if previous is None or str(previous.version) != version:
            _retry(client.set_registered_model_alias, name, CHALLENGER, version)
            _record_move(client, name, CHALLENGER, previous, version, trigger, "registered")
    return promote(
        cfg,
        version=version,
        trigger=trigger,
        resamples=resamples or cfg.evaluate.bootstrap_resamples,
        client=client,
    )


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
    with registry_lock():
        if version is None:
            holder = alias_holder(client, name, CHALLENGER)
            if holder is None:
                raise RegistryError(f"{name}: no version has the {CHALLENGER!r} alias")
            version = holder.version
        version = str(version)
        candidate = _retry(client.get_model_version, name, version)
        champion = alias_holder(client, name, CHAMPION)
        if champion is not None and str(champion.version) == version:
            decision = GateDecision(False, f"v{version} is already the champion")
        else:
            systems = _systems(name, champion, version) if champion is not None else None
            decision = decide_promotion(
                candidate.tags,
                champion.tags if champion else None,
                champion_version=champion.version if champion else None,
                settings=cfg.register,
                systems=systems,
                resamples=resamples or cfg.evaluate.bootstrap_resamples,
            )
        promote_now = decision.promote or (
            force and (champion is None or str(champion.version) != version)
        )
        reason = decision.reason
        if force and not decision.promote and promote_now:
            reason = f"forced over the gate's decision: {decision.reason}"
        now = _now()
        record = {
            "promotion.decision": "promoted" if promote_now else "kept_challenger",
            "promotion.reason": reason,
            "promotion.at": now,
            "promotion.previous_champion": str(champion.version) if champion else "none",
            "promotion.min_bleu_gain": f"{cfg.register.min_bleu_gain:g}",
            "promotion.p_value_threshold": f"{cfg.register.p_value:g}",
            "promotion.forced": str(bool(force and promote_now and not decision.promote)).lower(),
        }
        for key in ("bleu_delta", "chrf_delta", "p_value"):
            value = getattr(decision, key)
            if value is not None:
                record[f"promotion.{key}"] = f"{value:.4f}"
        if trigger:
            record["promotion.trigger"] = trigger
        if promote_now:
            _retry(client.set_registered_model_alias, name, CHAMPION, version)
            if champion is not None:
                for key, value in (("replaced_by", version), ("replaced_at", now)):
                    _retry(
                        client.set_model_version_tag,
                        name,
                        champion.version,
                        f"promotion.{key}",
                        value,
                    )
            _record_move(client, name, CHAMPION, champion, version, trigger, reason, decision)
        for key, value in record.items():
            _retry(client.set_model_version_tag, name, version, key, value)
        final = _retry(client.get_model_version, name, version)
        holder = alias_holder(client, name, CHAMPION)
    return RegistrationResult(
        model_name=name,
        version=int(version),
        aliases=sorted(final.aliases),
        promoted=promote_now,
        reason=reason,
        champion_version=int(holder.version) if holder else None,
        tags=record,
    )


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
    with registry_lock():
        champion = alias_holder(client, name, CHAMPION)
        if champion is None:
            raise RegistryError(f"{name}: there is no champion to roll back")
        previous = champion.tags.get("promotion.previous_champion", "none")
        if previous in ("", "none"):
            raise RegistryError(
                f"{name}: champion v{champion.version} replaced no earlier champion"
            )
        target = _retry(client.get_model_version, name, previous)
        reason = f"rollback from v{champion.version} to v{previous}"
        _retry(client.set_registered_model_alias, name, CHAMPION, previous)
        _retry(
            client.set_model_version_tag, name, champion.version, "promotion.rolled_back_at", _now()
        )
        _record_move(client, name, CHAMPION, champion, previous, trigger, reason)
        final = _retry(client.get_model_version, name, previous)
    return RegistrationResult(
        model_name=name,
        version=int(target.version),
        aliases=sorted(final.aliases),
        promoted=True,
        reason=reason,
        champion_version=int(previous),
    )


def history(model_name: str) -> list[dict[str, Any]]:
    """Every recorded alias move of `model_name`, oldest first."""
    client = MlflowClient()
    moves = []
    for mv in _retry(client.search_model_versions, f"name='{model_name}'"):
        for key, value in mv.tags.items():
            if key.startswith("alias_move."):
                moves.append(json.loads(value))
    return sorted(moves, key=lambda m: (m["at"], m["seq"]))


def history_table(moves: list[dict[str, Any]]) -> str:
    lines = [
        f"{'when (UTC)':25} {'alias':10} {'from':>5} {'to':>4} {'dBLEU':>7} {'dchrF':>7} "
        f"{'p':>7}  trigger / reason"
    ]
    for m in moves:
        lines.append(
            f"{m['at'][:25]:25} {m['alias']:10} {m['from'] or '-':>5} {m['to']:>4} "
            f"{_num(m, 'bleu_delta', 2):>7} {_num(m, 'chrf_delta', 2):>7} "
            f"{_num(m, 'p_value', 4):>7}  {m['trigger'] or '-'}: {m['reason']}"
        )
    return "\n".join(lines)


def _num(move: Mapping[str, Any], key: str, digits: int) -> str:
    value = move.get(key)
    return "-" if value is None else f"{value:.{digits}f}"


def _record_move(
    client: MlflowClient,
    name: str,
    alias: str,
    previous: ModelVersion | None,
    to_version: str,
    trigger: str,
    reason: str,
    decision: GateDecision | None = None,
) -> None:
    at = _now(precise=True)
    move = {
        "alias": alias,
        "from": str(previous.version) if previous else None,
        "to": str(to_version),
        "at": at,
        "seq": int(datetime.now(UTC).timestamp() * 1e6),
        "trigger": trigger,
        "by": _who(),
        "reason": reason,
        "bleu_delta": decision.bleu_delta if decision else None,
        "chrf_delta": decision.chrf_delta if decision else None,
        "p_value": decision.p_value if decision else None,
    }
    key = f"alias_move.{at.replace(':', '-').replace('+', '_')}.{alias}"
    _retry(client.set_model_version_tag, name, str(to_version), key, json.dumps(move))


def _systems(
    name: str, champion: ModelVersion, version: str
) -> tuple[list[str], list[str], list[str]] | None:
    """(champion hyps, challenger hyps, references) from the two models' artifacts."""
    try:
        base = _artifact_lines(f"models:/{name}/{champion.version}/{HYPOTHESES_ARTIFACT}")
        cand = _artifact_lines(f"models:/{name}/{version}/{HYPOTHESES_ARTIFACT}")
        refs = _artifact_lines(f"models:/{name}/{version}/{REFERENCES_ARTIFACT}")
    except (MlflowException, OSError):
        return None
    return base, cand, refs


def _artifact_lines(uri: str) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="seq2seq-gate-") as tmp:
        path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
        return Path(path).read_text(encoding="utf-8").splitlines()


def registry_lock() -> AbstractContextManager[None]:
    """An exclusive lock for alias moves, shared by every process using this store.

    For SQLite it sits next to the database; for a remote store (PostgreSQL server) it is
    per machine, so schedule promotions from one place (one Prefect work pool)."""
    return store_lock(mlflow.get_tracking_uri(), "registry")


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise


def alias_holder(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version holding `alias`, or None when the model or the alias does not exist."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


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


def _now(precise: bool = False) -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds" if precise else "seconds")


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{os.uname().nodename}"


__all__ = [
    "CHALLENGER", "CHAMPION", "GateDecision", "MetricsFormatError", "RegistrationResult",
    "RegistryError", "decide_promotion", "history", "history_table", "promote",
    "register_and_promote", "registry_lock", "rollback", "score_tags",
]  # fmt: skip
