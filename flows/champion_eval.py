"""The weekly check on the registry: score the champion on the current prepared test split.

Reads the model by alias (``models:/<register.model_name>@champion``), checked against its
recorded sha256 digests (flows/model_integrity.py) before it is loaded, translates the test
split that ingest wrote last, scores it with the same sacrebleu metrics as the evaluate
stage, logs the scores to a new MLflow run and leaves a markdown artifact in Prefect.
It changes no alias: a drop in the score is for a person (or the nightly gate) to act on.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows import registry, tracking
from flows.gate import TEST_BLEU_TAG, TEST_SET_TAG
from flows.model_integrity import fetch_verified_model
from seq2seq_core.config import load_config
from seq2seq_core.data.prepare import read_prepared_split
from seq2seq_core.evaluation.metrics import eval_set_digest, score_translations
from seq2seq_core.runtime.markdown import code_cell


class NoChampionError(LookupError):
    """The registry has no version under the alias; names the model and the alias."""


@flow(name="seq2seq-champion-eval")
def evaluate_champion(
    params_path: str = "params.yaml",
    overrides: list[str] | None = None,
    alias: str = registry.CHAMPION,
) -> dict[str, Any]:
    logger = get_run_logger()
    cfg = load_config(params_path, overrides or [])
    tracking.configure_tracking(Path.cwd())
    name = cfg.register.model_name
    champion = _version_by_alias(MlflowClient(), name, alias)
    model_uri = f"models:/{name}@{alias}"

    test = read_prepared_split(Path(cfg.data.prepared_dir), "test")
    sources, references = test["src"].tolist(), test["tgt"].tolist()
    hypotheses = translate_verified(name, champion.version, sources)
    scores = score_translations(hypotheses, references)
    test_sha = eval_set_digest(sources, references)
    logger.info(
        "%s v%s on %d test sentences: BLEU %.2f, chrF %.2f, TER %.2f",
        name,
        champion.version,
        len(sources),
        scores["bleu"],
        scores["chrf"],
        scores["ter"],
    )

    tags = {
        "prefect.flow_run_id": str(flow_run.id or ""),
        "trigger": "prefect",
        "evaluation.model_uri": model_uri,
        "evaluation.model_version": champion.version,
        "evaluation.test_set_sha256": test_sha,
    }
    with tracking.pipeline_run(cfg, run_name=f"eval-{alias}-v{champion.version}", tags=tags) as run:
        tracking.log_metrics({f"{alias}/{k}": scores[k] for k in ("bleu", "chrf", "ter")})

    summary = {
        "model_name": name,
        "alias": alias,
        "version": int(champion.version),
        "sentences": len(sources),
        "test_set_sha256": test_sha,
        "same_test_set_as_registration": champion.tags.get(TEST_SET_TAG) == test_sha,
        "registered_bleu": _float_or_none(champion.tags.get(TEST_BLEU_TAG)),
        "scores": scores,
        "mlflow_run_id": run.info.run_id,
    }
    create_markdown_artifact(key="champion-eval", markdown=_markdown(summary))
    return summary


def translate_verified(name: str, version: str | int, sources: list[str]) -> list[str]:
    """``sources`` translated by ``name`` v``version``, the version the alias named a moment
    ago, checked against its recorded digests before its code is imported: a tampered
    champion raises ``ModelIntegrityError`` and fails the flow run, unscored."""
    with tempfile.TemporaryDirectory(prefix="seq2seq-champion-eval-") as tmp:
        model_dir = fetch_verified_model(f"models:/{name}/{version}", Path(tmp) / "model")
        translator = mlflow.pyfunc.load_model(str(model_dir))
        return list(translator.predict(pd.DataFrame({"src": sources})))


def _version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion:
    found = registry.alias_holder(client, name, alias)
    if found is None:
        raise NoChampionError(f"registered model {name!r} has no version with alias {alias!r}")
    return found


def _float_or_none(value: str | None) -> float | None:
    return None if value is None else float(value)


def _markdown(summary: dict[str, Any]) -> str:
    scores, sig = summary["scores"], summary["scores"]["signatures"]
    registered = summary["registered_bleu"]
    then = "unknown" if registered is None else f"{registered:.2f}"
    same = (
        "the same test set" if summary["same_test_set_as_registration"] else "a different test set"
    )
    return "\n".join(
        [
            f"# {summary['model_name']}@{summary['alias']} (version {summary['version']})",
            "",
            "| metric | score | sacrebleu signature |",
            "| --- | --- | --- |",
            f"| BLEU | {scores['bleu']:.2f} | {code_cell(sig['bleu'])} |",
            f"| chrF | {scores['chrf']:.2f} | {code_cell(sig['chrf'])} |",
            f"| TER | {scores['ter']:.2f} | {code_cell(sig['ter'])} |",
            "",
            f"{summary['sentences']} test sentences (sha256 {summary['test_set_sha256'][:12]}), "
            f"{same} as at registration, where its test BLEU was {then}.",
        ]
    )
