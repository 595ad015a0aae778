"""flows.tasks' retry policy on real Prefect states: Prefect retries a failure that may be
transient (the store, the network) and fails bad input at once."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from prefect.client.schemas.objects import TaskRun
from prefect.states import Failed

from flows import tasks
from flows.gate import MetricsFormatError
from flows.register_stage import MissingStageOutputError
from seq2seq_core.config import ConfigError
from seq2seq_core.data.prepare import DataError
from seq2seq_core.runtime.files import FileWriteError

# A stage output that could not be written: a full disk stays full through a backoff's
# seconds; an I/O error (a network filesystem's hiccup) may pass.
DISK_FULL = FileWriteError(Path("data/prepared"), OSError(errno.ENOSPC, "No space left"))
DISK_ERROR = FileWriteError(Path("data/prepared"), OSError(errno.EIO, "Input/output error"))


def retried(exc: BaseException) -> bool:
    """What Prefect asks the register task's condition about a run that raised `exc`."""
    run = TaskRun(task_key="register", dynamic_key="0")
    return tasks.transient_failure(tasks.register_task, run, Failed(data=exc))


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bad value"),
        FileNotFoundError("data/raw/corpus.tsv"),
        KeyError("test"),
        TypeError("wrong type"),
        ConfigError("register.p_value must be in (0, 1)"),
        DataError("corpus.tsv line 3: no tab"),
        MetricsFormatError("metrics: 'test.bleu' is missing"),
        MissingStageOutputError("reports/metrics.json not found: run `seq2seq evaluate` first"),
        DISK_FULL,
    ],
    ids=lambda e: type(e).__name__,
)
def test_bad_input_is_not_retried(exc: BaseException) -> None:
    assert not retried(exc)


@pytest.mark.parametrize(
    "exc",
    [
        MlflowException("(sqlite3.OperationalError) database is locked"),
        MlflowException("API request failed: connection reset by peer"),
        ConnectionError("registry unreachable"),
        TimeoutError("read timed out"),
        OSError(28, "No space left on device"),
        RuntimeError("worker lost"),
        DISK_ERROR,
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_failure_that_may_pass_is_retried(exc: BaseException) -> None:
    assert retried(exc)


def test_only_the_io_tasks_retry_and_on_this_condition() -> None:
    for io_task in (tasks.ingest_task, tasks.register_task):
        assert io_task.retries == 3 and io_task.retry_condition_fn is tasks.transient_failure
    for task in (tasks.vocab_task, tasks.train_task, tasks.evaluate_task):
        assert task.retries == 0, task.name
