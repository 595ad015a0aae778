"""The training pipeline as one Prefect flow: ingest -> vocab -> train -> evaluate -> register.

One MLflow run spans the whole flow run; the stage functions themselves know nothing of
either tool.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows import dvc_sync, tracking
from flows.registration import log_stage_reports
from flows.tasks import (
    cached_call,
    evaluate_task,
    ingest_task,
    register_task,
    train_task,
    vocab_task,
)
from seq2seq_core.config import load_config
from seq2seq_core.data_report import report_markdown
from seq2seq_core.evaluation import metrics_markdown


@flow(name="seq2seq-training-pipeline")
def training_pipeline(
    params_path: str = "params.yaml",
    overrides: list[str] | None = None,
    dvc_commit: bool = True,
) -> dict[str, Any]:
    logger = get_run_logger()
    cfg = load_config(params_path, overrides or [])
    dvc_sync.pull_inputs(logger)  # a worker's fresh clone: the .dvc-tracked inputs
    tracking.configure_tracking(Path.cwd())
    flow_run_id = str(flow_run.id) if flow_run.id else ""
    timings: dict[str, float] = {}
    reused: dict[str, bool] = {}

    def timed(name: str, fn: Any, *args: Any) -> Any:
        start = time.perf_counter()
        try:
            result = fn(*args)
        except Exception as exc:
            # The champion alias only moves in `register`, after every stage passed: a
            # failure before it leaves the previous champion untouched. Say so and why.
            logger.error("stage %s failed: %s", name, exc)
            create_markdown_artifact(
                key="pipeline-failure", markdown=_failure_markdown(name, exc, timings)
            )
            raise
        timings[name] = round(time.perf_counter() - start, 2)
        return result

    def cached(name: str, stage_task: Any) -> dict[str, Any]:
        result, reused[name] = cached_call(stage_task, name, cfg)
        if reused[name]:
            logger.info("%s: inputs unchanged, reusing the cached result and outputs", name)
        return result

    tags = {"prefect.flow_run_id": flow_run_id, "trigger": "prefect"}
    with tracking.pipeline_run(cfg, run_name=flow_run.name or None, tags=tags) as run:
        run_id = run.info.run_id
        data = timed("ingest", cached, "ingest", ingest_task)
        logger.info("ingest: %s", data["counts"])
        create_markdown_artifact(key="data-report", markdown=_data_report_markdown(data))
        vocab = timed("vocab", cached, "vocab", vocab_task)
        trained = timed("train", train_task, cfg, run_id)
        logger.info(
            "train: %d epochs, stop=%s, best valid BLEU %.2f, %.0f target tokens/s",
            trained["epochs"],
            trained["stop_reason"],
            trained["best_valid_bleu"],
            trained["train_tokens_per_s"],
        )
        evaluated = timed("evaluate", evaluate_task, cfg)
        test = evaluated["metrics"]["test"]
        create_markdown_artifact(key="evaluation", markdown=metrics_markdown(evaluated["metrics"]))
        tracking.log_metrics({f"test/{k}": test[k] for k in ("bleu", "chrf", "ter")})
        log_stage_reports(cfg)
        registration = timed("register", register_task, cfg, run_id, f"prefect:{flow_run_id}")
        tracking.log_metrics({f"seconds/{k}": v for k, v in timings.items()})

    create_markdown_artifact(
        key="pipeline-summary", markdown=_summary_markdown(test, registration, timings)
    )
    create_markdown_artifact(key="promotion-decision", markdown=_promotion_markdown(registration))
    if dvc_commit:
        _record_in_dvc(logger)
        dvc_sync.publish_lock(logger, flow_run_id)  # SEQ2SEQ_DVC_GIT_PUSH=true: git push
    return {
        "data": data,
        "vocab": vocab,
        "train": {k: v for k, v in trained.items() if k != "history"},
        "test": test,
        "registration": registration,
        "seconds": timings,
        "reused": reused,
        "mlflow_run_id": run_id,
    }


def _failure_markdown(stage: str, exc: BaseException, timings: dict[str, float]) -> str:
    done = ", ".join(timings) or "none"
    return (
        f"# Pipeline failed in stage `{stage}`\n\n"
        f"**{type(exc).__name__}**: {exc}\n\n"
        f"Stages completed before it: {done}. Nothing was registered in this run, so the "
        "`champion` alias was not touched.\n"
    )


def _promotion_markdown(registration: dict[str, Any]) -> str:
    tags = registration.get("tags") or {}
    rows = "\n".join(f"| `{k}` | {v} |" for k, v in sorted(tags.items()))
    verdict = "promoted to champion" if registration["promoted"] else "kept as challenger"
    return (
        f"# `{registration['model_name']}` v{registration['version']}: {verdict}\n\n"
        f"{registration['reason']}\n\nChampion now: v{registration['champion_version']}\n\n"
        f"| tag | value |\n| --- | --- |\n{rows}\n"
    )


def _data_report_markdown(data: dict[str, Any]) -> str:
    report = json.loads(Path(data["report_path"]).read_text(encoding="utf-8"))
    return report_markdown(report)


def _summary_markdown(test: dict, registration: dict, timings: dict[str, float]) -> str:
    sig = test["signatures"]
    rows = [
        "| metric | score | sacrebleu signature |",
        "| --- | --- | --- |",
        f"| BLEU | {test['bleu']:.2f} | `{sig['bleu']}` |",
        f"| chrF | {test['chrf']:.2f} | `{sig['chrf']}` |",
        f"| TER | {test['ter']:.2f} | `{sig['ter']}` |",
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
        "Stage seconds: " + json.dumps(timings),
    ]
    return "\n".join(lines)


def _record_in_dvc(logger: Any) -> None:
    """Record the flow's outputs in dvc.lock so `dvc repro` sees them as up to date."""
    if not (Path("dvc.yaml").exists() and Path(".dvc").is_dir()):
        return
    for cmd in (["commit", "--force", "--quiet"], ["push", "--quiet"]):
        proc = subprocess.run(
            [sys.executable, "-m", "dvc", *cmd], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            logger.warning("dvc %s failed: %s", " ".join(cmd), proc.stderr.strip()[-500:])
            return
