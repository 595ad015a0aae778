"""Thin Prefect tasks around the stage functions; paths and small values in and out.

Retries only where a failure can be transient (reading the corpus, talking to MLflow);
a training run that diverged will diverge again, so it is not retried.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from flows import tracking
from flows.registration import register_stage
from seq2seq_core import stages
from seq2seq_core.config import PipelineConfig


@task(name="ingest", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def ingest_task(cfg: PipelineConfig) -> dict[str, Any]:
    return asdict(stages.ingest(cfg))


@task(name="vocab", cache_policy=NO_CACHE)
def vocab_task(cfg: PipelineConfig) -> dict[str, Any]:
    return asdict(stages.build_vocab(cfg))


@task(name="train", cache_policy=NO_CACHE)
def train_task(cfg: PipelineConfig, run_id: str) -> dict[str, Any]:
    result = stages.train(cfg, callbacks=[tracking.MlflowTrainCallback(run_id)])
    return asdict(result)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(cfg: PipelineConfig) -> dict[str, Any]:
    return asdict(stages.evaluate(cfg))


@task(name="register", retries=2, retry_delay_seconds=10, cache_policy=NO_CACHE)
def register_task(cfg: PipelineConfig, run_id: str, trigger: str) -> dict[str, Any]:
    return register_stage(cfg, run_id=run_id, trigger=trigger)
