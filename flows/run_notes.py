"""The markdown a flow run leaves in Prefect: summary, promotion, failure, up to date.

Every value quoted in a table goes through `seq2seq_core.runtime.markdown` (a `|` in a sacrebleu
signature or an exception message would split the table).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from flows.gate import SIGNATURE_TAG_PREFIX, TEST_BLEU_TAG
from seq2seq_core.data.report import report_markdown
from seq2seq_core.runtime.markdown import cell, code_cell

log = logging.getLogger(__name__)

FAILURE_KEY = "pipeline-failure"


def failure_markdown(
    stage: str,
    exc: BaseException | str,
    seconds: dict[str, float],
    registered: dict[str, Any] | None = None,
) -> str:
    """The failure note. `registered` is flows/registry.py's `registration_state` of this
    run when the failure came in or after `register` (None before it: nothing registered)."""
    done = ", ".join(seconds) or "none"
    what = f"**{type(exc).__name__}**: {exc}" if isinstance(exc, BaseException) else str(exc)
    return (
        f"# Pipeline failed in stage `{stage}`\n\n{what}\n\n"
        f"Stages completed before it: {done}. {registration_sentence(registered)}\n"
    )


def registration_sentence(registered: dict[str, Any] | None) -> str:
    """What the registry holds after the failure: nothing, a version without or with its
    aliases, or a champion move that was started and is finished by the next registry
    operation (a retry, `seq2seq promote` or `seq2seq rollback`)."""
    if registered is None or not registered.get("version"):
        return "Nothing was registered in this run, so the `champion` alias was not touched."
    name, version = registered["model_name"], registered["version"]
    champion = registered.get("champion")
    aliases = ", ".join(registered.get("aliases") or []) or "none"
    text = f"Version {version} of `{name}` was created from this run (aliases: {aliases}); "
    pending = registered.get("pending_move")
    if pending and str(pending.get("to")) == str(version):
        return text + (
            f"its promotion over v{pending.get('from')} was decided and recorded but not "
            f"finished (`champion` is on v{champion}): the retry, or the next `seq2seq "
            "promote`/`rollback`, finishes it."
        )
    if champion == str(version):
        return text + "it is the champion: the `champion` alias moved to it."
    return text + (
        f"the `champion` alias was not moved to it (champion: "
        f"{('v' + champion) if champion else 'none'})."
    )


def crash_note(flow: Any, flow_run: Any, state: Any) -> None:
    """`on_crashed` hook: a run killed from outside (SIGTERM from a cancelled worker, the
    infrastructure gone) leaves the same failure artifact an exception does."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate

    note = failure_markdown(
        "unknown (the run crashed)",
        f"**Crashed**: {state.message or 'the flow run process ended unexpectedly'}",
        {},
    )
    try:
        with get_client(sync_client=True) as client:
            client.create_artifact(
                ArtifactCreate(key=FAILURE_KEY, type="markdown", data=note, flow_run_id=flow_run.id)
            )
    except Exception as exc:  # a hook must not mask the crash it reports
        log.warning("could not leave the crash note for flow run %s: %s", flow_run.id, exc)


def promotion_markdown(registration: dict[str, Any]) -> str:
    tags = registration.get("tags") or {}
    rows = "\n".join(f"| {code_cell(k)} | {cell(v)} |" for k, v in sorted(tags.items()))
    verdict = "promoted to champion" if registration["promoted"] else "kept as challenger"
    return (
        f"# `{registration['model_name']}` v{registration['version']}: {verdict}\n\n"
        f"{registration['reason']}\n\nChampion now: v{registration['champion_version']}\n\n"
        f"| tag | value |\n| --- | --- |\n{rows}\n"
    )


def data_report_markdown(data: dict[str, Any]) -> str:
    report = json.loads(Path(data["report_path"]).read_text(encoding="utf-8"))
    return report_markdown(report)


def summary_markdown(test: dict, registration: dict, seconds: dict[str, float]) -> str:
    sig = test["signatures"]
    rows = [
        "| metric | score | sacrebleu signature |",
        "| --- | --- | --- |",
        f"| BLEU | {test['bleu']:.2f} | {code_cell(sig['bleu'])} |",
        f"| chrF | {test['chrf']:.2f} | {code_cell(sig['chrf'])} |",
        f"| TER | {test['ter']:.2f} | {code_cell(sig['ter'])} |",
    ]
    aliases = ", ".join(registration["aliases"]) or "none"
    lines = [
        "# seq2seq pipeline run",
        "",
        *rows,
        "",
        f"Registered `{registration['model_name']}` version {registration['version']} "
        f"(aliases: {aliases}). Promotion: {registration['reason']}",
        "",
        "Stage seconds: " + json.dumps(seconds),
    ]
    return "\n".join(lines)


def up_to_date_markdown(version: Any, champion: str | None, message: str) -> str:
    tags = version.tags
    rows = [
        "| | |",
        "| --- | --- |",
        f"| version | {version.version} |",
        f"| champion | {('v' + champion) if champion else 'none'} |",
        f"| test BLEU | {cell(tags.get(TEST_BLEU_TAG, '-'))} |",
        f"| BLEU signature | {code_cell(tags.get(f'{SIGNATURE_TAG_PREFIX}bleu', '-'))} |",
        f"| inputs sha256 | {code_cell(tags.get('pipeline.inputs_sha256', '-'))} |",
        f"| source run | {code_cell(tags.get('source.run_id', '-'))} |",
    ]
    return "\n".join(
        [f"# Up to date with version {version.version} of `{version.name}`", "", message, "",
         *rows]
    ) + "\n"  # fmt: skip
