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
from flows.register_stage import register_stage
from seq2seq_core import stages
from seq2seq_core.config import PipelineConfig
from seq2seq_core.runtime.files import FileWriteError
from seq2seq_core.training.warm_start import WarmStartSource

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
    except FileWriteError as exc:  # a full disk stays full for the seconds of a backoff
        return not exc.disk_full
    except Exception:
        return True
    return True


def _ingest_key(context: Any, parameters: dict[str, Any]) -> str:
    return f"ingest-{caching.ingest_key(parameters['cfg'])}"


def _vocab_key(context: Any, parameters: dict[str, Any]) -> str:
    return f"vocab-{caching.vocab_key(parameters['cfg'], parameters.get('warm_start'))}"


@task(
    name="ingest", retries=3, retry_delay_seconds=BACKOFF, retry_jitter_factor=0.5,
    retry_condition_fn=transient_failure, cache_key_fn=_ingest_key,
    cache_expiration=CACHE_FOR, persist_result=True, result_storage=RESULTS,
)  # fmt: skip
def ingest_task(cfg: PipelineConfig) -> dict[str, Any]:
    result = asdict(stages.ingest(cfg))
    caching.write_stamp("ingest", caching.ingest_key(cfg), caching.ingest_outputs(cfg))
    return result


@task(
    name="vocab", cache_key_fn=_vocab_key, cache_expiration=CACHE_FOR,
    persist_result=True, result_storage=RESULTS,
)  # fmt: skip
def vocab_task(cfg: PipelineConfig, warm_start: WarmStartSource | None = None) -> dict[str, Any]:
    """Train the vocabulary, or copy the warm-start source's (its embeddings need it)."""
    result = asdict(stages.build_vocab(cfg, warm_start=warm_start))
    key = caching.vocab_key(cfg, warm_start)
    caching.write_stamp("vocab", key, caching.vocab_outputs(cfg))
    return result


@task(name="train", cache_policy=NO_CACHE)
def train_task(
    cfg: PipelineConfig, run_id: str, warm_start: WarmStartSource | None = None
) -> dict[str, Any]:
    """Never retried, so a tracking-server outage must not fail it: step metrics wait in
    the callback's spool and go out when the server is back; ``close`` waits for it (up
    to ``tracking.tracking_wait_s()``, logged) before the end-of-training logging. A
    spool an earlier, crashed training left behind goes to its own run first."""
    tracking.send_spooled_metrics()
    callback = tracking.MlflowTrainCallback(run_id, flush_every_steps=cfg.train.log_every_steps)
    result = asdict(stages.train(cfg, callbacks=[callback], warm_start=warm_start))
    callback.close()
    tracking.log_checkpoint_choice(result, run_id=run_id)
    return result


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(cfg: PipelineConfig) -> dict[str, Any]:
    return asdict(stages.evaluate(cfg))


@task(
    name="register", retries=3, retry_delay_seconds=BACKOFF, retry_jitter_factor=0.5,
    retry_condition_fn=transient_failure, cache_policy=NO_CACHE,
)  # fmt: skip
def register_task(
    cfg: PipelineConfig, run_id: str, trigger: str, fingerprint: str
) -> dict[str, Any]:
    """Retried by Prefect: registration is keyed on the MLflow run, so a retry after a
    failure half-way reuses the version the first attempt created."""
    return register_stage(cfg, run_id=run_id, trigger=trigger, fingerprint=fingerprint)


def cached_call(
    stage_task: Task, stage: str, cfg: PipelineConfig, warm_start: WarmStartSource | None = None
) -> tuple[dict[str, Any], bool]:
    """Run an ingest/vocab task, forcing a recompute when the outputs on disk are not the
    ones its cached result describes. Returns (result, whether the outputs were reused)."""
    if stage == "ingest":
        key, outputs, args = caching.ingest_key(cfg), caching.ingest_outputs(cfg), (cfg,)
    else:
        key, outputs = caching.vocab_key(cfg, warm_start), caching.vocab_outputs(cfg)
        args = (cfg, warm_start)
    current = caching.outputs_current(stage, key, outputs)
    state = stage_task.with_options(refresh_cache=not current)(*args, return_state=True)
    return state.result(), state.name == "Cached"
