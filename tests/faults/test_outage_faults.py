"""Outages of the tracking server and of the object store, on the real stack
(tests/services.py: PostgreSQL, moto's S3 server with IAM keys, `mlflow server` with
basic auth, the Prefect server); docs/faults.md.

1. The MLflow server stopped for ``SEQ2SEQ_FAULT_OUTAGE_S`` (default 180) seconds while a
   pipeline trains, then started on the same port: the run completes, every step metric
   is in MLflow once (sent after the restart with its original step and timestamp), and
   one version is registered.
2. The object store shut during a run's `dvc push`: the run registers and remembers the
   push; the next run, up to date otherwise, pushes and publishes dvc.lock; a third
   clone's `git clone && dvc pull` gives files whose md5 equal the version's tags.

A pipeline runs as `python -m flows.cli pipeline` in a clone of a bare origin (this
checkout plus a tiny params.yaml on an S3 DVC remote, as in the scale-out test), with the
worker's credentials.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows.lineage import file_md5
from tests.integration import test_scale_out
from tests.integration.test_scale_out import (
    DVC,
    GIT_ID,
    MODEL,
    PYTHON_CLI,
    RAW,
    Clock,
    _clone,
    _run,
)
from tests.services import Stack, clean_env, pg_bin, tail

pytestmark = [pytest.mark.faults, pytest.mark.integration]

OUTAGE_S = float(os.environ.get("SEQ2SEQ_FAULT_OUTAGE_S", "180"))
# Training runs this much longer than the outage: it starts before and ends after it.
TRAINING_PAST_OUTAGE_S = 60
# The scale-out test's fixture: a bare origin with this checkout and a tiny params.yaml, its
# DVC remote at `stack.s3_endpoint` (here: the gate).
origin = test_scale_out.origin
STEP_METRICS = ("loss", "lr", "grad_norm", "tokens_per_s")
EPOCH_METRICS = ("train_loss", "valid_loss", "valid_bleu")


@pytest.fixture(scope="module")
def clock() -> Iterator[Clock]:
    clock = Clock()
    yield clock
    clock.part("total", clock._t0)
    print(f"\noutage test wall seconds: {json.dumps(clock.seconds)}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, clock: Clock) -> Iterator[Stack]:
    """The stack, with DVC's clients behind a gate to the object store (the origin's
    remote uses ``stack.s3_endpoint``, the gate's)."""
    if pg_bin() is None:
        pytest.skip("PostgreSQL server binaries not found (Debian: apt-get install postgresql)")
    t0 = time.monotonic()
    with Stack(tmp_path_factory.mktemp("services")) as services:
        services.up()
        services.gate_object_store()
        clock.part("services_up", t0)
        yield services


def _pipeline(stack: Stack, clone: Path, *overrides: str) -> subprocess.Popen:
    """`seq2seq pipeline` in ``clone`` as the worker, its output in clone/pipeline.log."""
    env = clean_env(**stack.client_env, **GIT_ID, PREFECT_HOME=str(clone / ".prefect-home"),
                    SEQ2SEQ_DVC_GIT_PUSH="true")  # fmt: skip
    cmd = [*PYTHON_CLI, "pipeline", *(arg for o in overrides for arg in ("--set", o))]
    with (clone / "pipeline.log").open("ab") as log:
        return subprocess.Popen(cmd, cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, clone: Path, timeout_s: float) -> str:
    rc = proc.wait(timeout=timeout_s)
    log = (clone / "pipeline.log").read_text(errors="replace")
    assert rc == 0, log[-6000:]
    return log


def _mlflow_client(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Any:
    from mlflow import MlflowClient

    for name, value in stack.role_env("worker").items():
        if name.startswith("MLFLOW_"):  # MLflow's client reads its user from the environment
            monkeypatch.setenv(name, value)
    return MlflowClient(tracking_uri=stack.mlflow_url)


def _first_training_run(client: Any, proc: subprocess.Popen, clone: Path) -> str:
    """The id of the pipeline's MLflow run once its first step metrics arrived."""
    experiment = client.get_experiment_by_name("seq2seq-pipeline")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        assert proc.poll() is None, tail(clone / "pipeline.log", 6000)
        for run in client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'"):
            if client.get_metric_history(run.info.run_id, "train/loss"):
                return run.info.run_id
        time.sleep(1)
    raise AssertionError(f"no training metrics after 600 s:\n{tail(clone / 'pipeline.log')}")


def test_tracking_server_down_mid_training_loses_no_metric_and_registers_once(
    stack: Stack,
    origin: Path,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t0 = time.monotonic()
    clone = _clone(origin, origin.parent / "tracking-outage")
    client = _mlflow_client(stack, monkeypatch)
    budget_min = (OUTAGE_S + TRAINING_PAST_OUTAGE_S) / 60
    proc = _pipeline(stack, clone, "train.max_epochs=100000", f"train.time_budget_min={budget_min}")
    try:
        run_id = _first_training_run(client, proc, clone)
        clock.part("tracking_until_training", t0)
        down_ms = int(time.time() * 1000)
        stack.stop_service("mlflow")
        time.sleep(OUTAGE_S)
        up_ms = int(time.time() * 1000)
        clock.seconds["mlflow_restart_s"] = round(stack.restart_mlflow(), 1)
        log = _finish(proc, clone, timeout_s=OUTAGE_S + 600)
    finally:
        if proc.poll() is None:
            proc.kill()
    clock.part("tracking_outage_run", t0)

    # The run finished and every step and epoch metric is in MLflow exactly once.
    assert client.get_run(run_id).info.status == "FINISHED"
    summary = json.loads((clone / "reports" / "train.json").read_text())
    assert summary["steps"] > 0 and summary["epochs"] > 1
    for name in STEP_METRICS:
        steps = [m.step for m in client.get_metric_history(run_id, f"train/{name}")]
        assert sorted(steps) == list(range(1, summary["steps"] + 1)), name
    for name in EPOCH_METRICS:
        epochs = [m.step for m in client.get_metric_history(run_id, f"epoch/{name}")]
        assert sorted(epochs) == list(range(1, summary["epochs"] + 1)), name
    # Metrics made while the server was down went out later with their own timestamps.
    stamps = [m.timestamp for m in client.get_metric_history(run_id, "train/loss")]
    during = [t for t in stamps if down_ms < t < up_ms]
    assert len(during) >= 3, (down_ms, up_ms, stamps[:5], stamps[-5:])
    assert "tracking server unreachable" in log and "tracking server back after" in log
    assert not any((clone / ".state" / "metric-spool").glob("*.jsonl"))

    # One version, from this run.
    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert [(v.version, v.run_id) for v in versions] == [("1", run_id)]
    clock.seconds["tracking_outage_steps"] = summary["steps"]


def test_object_store_down_during_push_is_pushed_by_the_next_run(
    stack: Stack,
    origin: Path,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t0 = time.monotonic()
    clone = _clone(origin, origin.parent / "store-outage")
    worker = clean_env(**stack.s3_credentials)
    _run([*DVC, "pull", "--quiet", RAW], clone, worker)  # the input, while the store is up
    origin_head = _run(["git", "--git-dir", str(origin), "rev-parse", "HEAD"], origin, worker)

    assert stack.s3_gate is not None
    stack.s3_gate.shut()
    # Another seed than the first test's run: new inputs, so this run trains and registers.
    log = _finish(_pipeline(stack, clone, "train.seed=7"), clone, timeout_s=600)
    clock.part("store_outage_run", t0)
    pending = json.loads((clone / ".state" / "pending-push.json").read_text())
    assert pending["attempts"] == 1 and pending["since"] and pending["last_error"]
    train_split = "data/prepared/train.parquet"
    assert pending["outs"][train_split] == file_md5(clone / train_split)
    assert pending["outs"]["models/checkpoints"].endswith(".dir")
    assert pending["last_error"].startswith("ERROR")  # DVC's reason, not its footer
    assert "dvc push failed" in log and "the next run retries the push" in log
    # Nothing was published: a lock naming data the remote lacks would break every clone.
    assert _run(["git", "--git-dir", str(origin), "rev-parse", "HEAD"], origin, worker) == (
        origin_head
    )

    stack.s3_gate.open()
    t1 = time.monotonic()
    log = _finish(_pipeline(stack, clone, "train.seed=7"), clone, timeout_s=600)
    clock.part("store_retry_run", t1)
    assert "Nothing to do" in log  # up to date, and yet it pushed
    assert "a dvc push of flow run" in log and "pending dvc push done" in log
    assert not (clone / ".state" / "pending-push.json").exists()

    # A third clone gets exactly the data the version's lineage tags name.
    t2 = time.monotonic()
    third = _clone(origin, origin.parent / "store-outage-third")
    _run([*DVC, "pull", "--quiet"], third, worker)
    clock.part("third_clone_pull", t2)
    client = _mlflow_client(stack, monkeypatch)
    version = max(client.search_model_versions(f"name = '{MODEL}'"), key=lambda v: int(v.version))
    tags = {k[len("dvc.") : -len(".md5")]: v for k, v in version.tags.items()
            if k.startswith("dvc.") and k.endswith(".md5")}  # fmt: skip
    files = {path: md5 for path, md5 in tags.items() if not md5.endswith(".dir")}
    assert files, version.tags
    for path, md5 in files.items():
        assert file_md5(third / path) == md5, path
    for path in ("models/checkpoints/best.pt", RAW):
        assert file_md5(third / path) == file_md5(clone / path), path
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--quiet"], cwd=third,
                            env=worker, capture_output=True, check=False)  # fmt: skip
    assert status.returncode == 0, status.stdout  # every output matches dvc.lock
