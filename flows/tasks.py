"""Thin Prefect tasks around the stage functions; paths and small values in and out.

Retries, with exponential backoff and jitter, only where a failure can be transient:
reading the corpus and talking to MLflow/the registry. Bad input (a DataError, a
ConfigError, a missing file: ValueError/FileNotFoundError) fails at once, and a training
run that diverged would diverge again, so train is never retried.

Ingest and vocab results are cached by content (flows/caching.py): a rerun with the same
parameters and input files returns the previous result without recomputing.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State
from prefect.tasks import exponential_backoff

from flows import caching, tracking
from flows.registration import register_stage
from seq2seq_core import stages
from seq2seq_core.config import PipelineConfig

BACKOFF = exponential_backoff(backoff_factor=2)  # 2 s, 4 s, 8 s
CACHE_FOR = timedelta(days=30)
# Relative, so resolved in the flow run's working directory (the clone, or a deployment's
# project dir): cached results sit in the project's ignored .state/ next to the stamps of
# flows/caching.py, never in ~/.prefect, and one clone's cache never serves another's.
RESULTS = Path(".state") / "prefect-results"


def transient_failure(task: Task, task_run: TaskRun, state: State) -> bool:
    """Retry unless the error says the input is wrong (retrying cannot fix that)."""
    try:
        state.result()
    except (ValueError, FileNotFoundError, KeyError, TypeError):
        return False
    except Exception:
        return True
    return True


def _cfg_key(stage: str):
    keys = {"ingest": caching.ingest_key, "vocab": caching.vocab_key}

    def key(context: Any, parameters: dict[str, Any]) -> str:
        return f"{stage}-{keys[stage](parameters['cfg'])}"

    return key


@task(
    name="ingest", retries=3, retry_delay_seconds=BACKOFF, retry_jitter_factor=0.5,
    retry_condition_fn=transient_failure, cache_key_fn=_cfg_key("ingest"),
    cache_expiration=CACHE_FOR, persist_result=True, result_storage=RESULTS,
)  # fmt: skip
def ingest_task(cfg: PipelineConfig) -> dict[str, Any]:
    result = asdict(stages.ingest(cfg))
    caching.write_stamp("ingest", caching.ingest_key(cfg), caching.ingest_outputs(cfg))
    return result


@task(
    name="vocab", cache_key_fn=_cfg_key("vocab"), cache_expiration=CACHE_FOR,
    persist_result=True, result_storage=RESULTS,
)  # fmt: skip
def vocab_task(cfg: PipelineConfig) -> dict[str, Any]:
    result = asdict(stages.build_vocab(cfg))
    caching.write_stamp("vocab", caching.vocab_key(cfg), caching.vocab_outputs(cfg))
    return result


@task(name="train", cache_policy=NO_CACHE)
def train_task(cfg: PipelineConfig, run_id: str) -> dict[str, Any]:
    callback = tracking.MlflowTrainCallback(run_id, flush_every_steps=cfg.train.log_every_steps)
    result = stages.train(cfg, callbacks=[callback])
    return asdict(result)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(cfg: PipelineConfig) -> dict[str, Any]:
    return asdict(stages.evaluate(cfg))


@task(
    name="register", retries=3, retry_delay_seconds=BACKOFF, retry_jitter_factor=0.5,
    retry_condition_fn=transient_failure, cache_policy=NO_CACHE,
)  # fmt: skip
def register_task(cfg: PipelineConfig, run_id: str, trigger: str) -> dict[str, Any]:
    return register_stage(cfg, run_id=run_id, trigger=trigger)


def cached_call(stage_task: Task, stage: str, cfg: PipelineConfig) -> tuple[dict[str, Any], bool]:
    """Run an ingest/vocab task, forcing a recompute when the outputs on disk are not the
    ones its cached result describes. Returns (result, whether the outputs were reused)."""
    key = {"ingest": caching.ingest_key, "vocab": caching.vocab_key}[stage](cfg)
    outputs = {"ingest": caching.ingest_outputs, "vocab": caching.vocab_outputs}[stage](cfg)
    current = caching.outputs_current(stage, key, outputs)
    state = stage_task.with_options(refresh_cache=not current)(cfg, return_state=True)
    return state.result(), state.name == "Cached"
