"""The training pipeline as one Prefect flow: ingest -> vocab -> train -> evaluate -> register.

One MLflow run spans the whole flow run; the stage functions themselves know nothing of
either tool. A run first takes the workspace lock (one writer per clone), then asks the
registry whether a version was already made from exactly these inputs: if so it ends
Completed with nothing trained or registered and says "up to date with version N". Before
that check it pushes what an earlier run's failed `dvc push` left behind (docs/faults.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.utilities.timeout import timeout

from flows import dvc_sync, freshness, registry, tracking
from flows.init_from import resolve_warm_start
from flows.register_stage import log_stage_reports
from flows.run_logging import project_logs_to_prefect
from flows.run_notes import (
    crash_note,
    data_report_markdown,
    failure_markdown,
    promotion_markdown,
    summary_markdown,
    up_to_date_markdown,
)
from flows.tasks import (
    cached_call,
    evaluate_task,
    ingest_task,
    register_task,
    train_task,
    vocab_task,
)
from flows.workspace_lock import workspace_lock
from seq2seq_core.config import PipelineConfig, load_config
from seq2seq_core.evaluation.metrics import metrics_markdown

# Room for everything but training: the flow's start, ingest, vocab, evaluation and
# registration took ~2 min on the full Bible; a slow disk or a large corpus gets 30.
NON_TRAINING_ALLOWANCE_S = 30 * 60
# Stages whose dvc.lock entries must be current before registering (lineage tags).
STAGES_BEFORE_REGISTER = ("ingest", "vocab", "train", "evaluate")


class PipelineTimeoutError(TimeoutError):
    """The flow ran past the limit derived from its time budget (see pipeline_timeout_s)."""


def pipeline_timeout_s(cfg: PipelineConfig) -> float:
    """The flow run's limit: the lock wait, 1.5x the training budget (validation and the
    last epoch overrun it), and the allowance for the other stages."""
    budget_s = cfg.train.time_budget_min * 60.0
    return cfg.pipeline.lock_timeout_min * 60.0 + 1.5 * budget_s + NON_TRAINING_ALLOWANCE_S


@flow(name="seq2seq-training-pipeline", on_crashed=[crash_note])
def training_pipeline(
    params_path: str = "params.yaml",
    overrides: list[str] | None = None,
    dvc_commit: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Run every stage unless a registered version already has these inputs (`force`
    runs anyway). Returns a summary whose `status` is `registered` or `up_to_date`."""
    cfg = load_config(params_path, overrides or [])
    limit_s = pipeline_timeout_s(cfg)
    with project_logs_to_prefect():
        try:
            with (
                timeout(limit_s, PipelineTimeoutError),
                workspace_lock(
                    timeout_min=cfg.pipeline.lock_timeout_min,
                    command="seq2seq pipeline",
                    flow_run=flow_run.name or "",
                ),
            ):
                return _run_pipeline(cfg, dvc_commit=dvc_commit, force=force)
        except PipelineTimeoutError:
            raise PipelineTimeoutError(
                f"the pipeline ran past its limit of {limit_s:.0f} s (lock wait "
                f"{cfg.pipeline.lock_timeout_min:g} min + 1.5 x train.time_budget_min "
                f"{cfg.train.time_budget_min:g} min + {NON_TRAINING_ALLOWANCE_S // 60} min)"
            ) from None


def _run_pipeline(cfg: PipelineConfig, *, dvc_commit: bool, force: bool) -> dict[str, Any]:
    logger = get_run_logger()
    dvc_sync.pull_inputs(logger)  # a worker's fresh clone: the .dvc-tracked inputs
    dvc_sync.retry_pending_push(logger)  # an earlier run's outputs, if its push failed
    tracking.configure_tracking(Path.cwd())
    fingerprint = freshness.inputs_fingerprint(cfg)
    done = freshness.registered_with(cfg.register.model_name, fingerprint)
    if done is not None and not force:
        return _up_to_date(cfg, done, logger)
    if done is not None:
        logger.info("force: running although version %s has these inputs", done.version)
    warm = resolve_warm_start(cfg)  # the train stage logs what it starts from
    stages = _StageRunner(logger)
    flow_run_id = str(flow_run.id) if flow_run.id else ""
    tags = {"prefect.flow_run_id": flow_run_id, "trigger": "prefect"}
    with tracking.pipeline_run(cfg, run_name=flow_run.name or None, tags=tags) as run:
        run_id = run.info.run_id
        data = stages.run("ingest", cached_call, ingest_task, "ingest", cfg)
        logger.info("ingest: %s", data["counts"])
        create_markdown_artifact(key="data-report", markdown=data_report_markdown(data))
        vocab = stages.run("vocab", cached_call, vocab_task, "vocab", cfg, warm)
        trained = stages.run("train", train_task, cfg, run_id, warm)
        evaluated = stages.run("evaluate", evaluate_task, cfg)
        test = evaluated["metrics"]["test"]
        tracking.wait_for_tracking("the test metrics, reports and registration")
        create_markdown_artifact(key="evaluation", markdown=metrics_markdown(evaluated["metrics"]))
        tracking.log_metrics({f"test/{k}": test[k] for k in ("bleu", "chrf", "ter")})
        log_stage_reports(cfg)
        if dvc_commit:  # lineage: the version's dvc.* tags are read from dvc.lock
            dvc_sync.run_dvc(logger, "commit", "--force", "--quiet", *STAGES_BEFORE_REGISTER)
        trigger = f"prefect:{flow_run_id}"
        stages.registered = lambda: registry.registration_state(cfg.register.model_name, run_id)
        registration = stages.run("register", register_task, cfg, run_id, trigger, fingerprint)
        tracking.log_metrics({f"seconds/{k}": v for k, v in stages.seconds.items()})
    _report_registration(logger, test, registration, stages.seconds)
    if dvc_commit and _record_in_dvc(logger, flow_run_id):
        dvc_sync.publish_lock(logger, flow_run_id)
    return {
        "status": "registered",
        "data": data,
        "vocab": vocab,
        "train": {k: v for k, v in trained.items() if k != "history"},
        "test": test,
        "registration": registration,
        "seconds": stages.seconds,
        "reused": stages.reused,
        "mlflow_run_id": run_id,
        "warm_start": warm.label if warm else None,
    }


class _StageRunner:
    """Times each stage and, when one fails, leaves the failure note before re-raising."""

    def __init__(self, logger: Any) -> None:
        self.logger = logger
        self.seconds: dict[str, float] = {}
        self.reused: dict[str, bool] = {}
        # From `register` on: what the registry holds for this run, for the failure note.
        self.registered: Callable[[], dict[str, Any]] | None = None

    def run(self, name: str, fn: Any, *args: Any) -> Any:
        start = time.perf_counter()
        try:
            result = fn(*args)
        except Exception as exc:
            # The champion alias only moves in `register`, after every stage passed: a
            # failure before it leaves the previous champion untouched. Say so and why.
            self.logger.error("stage %s failed: %s", name, exc)
            note = failure_markdown(name, exc, self.seconds, self._registration_state())
            create_markdown_artifact(key="pipeline-failure", markdown=note)
            raise
        if fn is cached_call:
            result, self.reused[name] = result
            if self.reused[name]:
                self.logger.info("%s: inputs unchanged, reusing the cached outputs", name)
        self.seconds[name] = round(time.perf_counter() - start, 2)
        return result

    def _registration_state(self) -> dict[str, Any] | None:
        if self.registered is None:
            return None
        try:
            return self.registered()
        except (MlflowException, OSError) as exc:  # the note must not mask the failure
            self.logger.warning("could not read the registry for the failure note: %s", exc)
            return None


def _up_to_date(cfg: PipelineConfig, version: Any, logger: Any) -> dict[str, Any]:
    holder = registry.alias_holder(MlflowClient(), cfg.register.model_name, registry.CHAMPION)
    champion = str(holder.version) if holder else None
    message = freshness.up_to_date_message(version, champion)
    logger.info(message)
    create_markdown_artifact(
        key="pipeline-summary", markdown=up_to_date_markdown(version, champion, message)
    )
    return {
        "status": "up_to_date",
        "model_name": version.name,
        "version": int(version.version),
        "champion_version": int(champion) if champion else None,
        "message": message,
    }


def _report_registration(
    logger: Any, test: dict[str, Any], registration: dict[str, Any], seconds: dict[str, float]
) -> None:
    logger.info(
        "registered %s v%s (aliases: %s): %s",
        registration["model_name"], registration["version"],
        ", ".join(registration["aliases"]) or "none", registration["reason"],
    )  # fmt: skip
    create_markdown_artifact(
        key="pipeline-summary", markdown=summary_markdown(test, registration, seconds)
    )
    create_markdown_artifact(key="promotion-decision", markdown=promotion_markdown(registration))


def _record_in_dvc(logger: Any, flow_run_id: str) -> bool:
    """Record the register stage in dvc.lock too (`dvc repro` then sees everything up to
    date) and push the data to the default remote; whether both succeeded. A failed push
    is remembered and retried by the next run (dvc_sync.retry_pending_push)."""
    return dvc_sync.run_dvc(logger, "commit", "--force", "--quiet", "register") and (
        dvc_sync.push_outputs(logger, flow_run_id)
    )
