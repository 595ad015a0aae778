"""Shared test set-up (quiet tools, one torch thread) and the fixtures; helpers: support.py."""

from __future__ import annotations

import os

# Before any import of prefect/mlflow: no telemetry, and a patient ephemeral API start.
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# `make test` runs the files on several pytest-xdist workers at once: each gets a Prefect
# home (and so an ephemeral API database) of its own, so two workers' temporary servers
# never write one SQLite file (which can answer "database is locked").
if os.environ.get("PYTEST_XDIST_WORKER"):
    import atexit
    import shutil
    import tempfile

    _prefect_home = tempfile.mkdtemp(prefix=f"seq2seq-prefect-{os.environ['PYTEST_XDIST_WORKER']}-")
    os.environ["PREFECT_HOME"] = _prefect_home
    atexit.register(shutil.rmtree, _prefect_home, ignore_errors=True)

import torch

# Two OpenMP threads on a 2-core machine running other work are several times slower.
torch.set_num_threads(1)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

from tests.support import TrainedWorkspace, tiny_params, train_workspace  # noqa: E402


@pytest.fixture
def tiny_params_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny params.yaml in a fresh working directory (all outputs land under tmp_path)."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_params()), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _no_store_from_an_earlier_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """`mlflow.set_tracking_uri` exports MLFLOW_TRACKING_URI (and the registry's) to the
    environment for child processes: without this, one test's store would read as the
    user's choice in every later test and in the subprocesses they start."""
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def trained_workspace(tmp_path_factory: pytest.TempPathFactory) -> TrainedWorkspace:
    """The one trained tiny model of the session (see support.TrainedWorkspace): read it,
    or copy it (support.copy_workspace, support.copy_model) to change or register it."""
    return train_workspace(tmp_path_factory.mktemp("trained"))


@pytest.fixture(scope="session", autouse=True)
def _compiled_decoding_step_built() -> None:
    """The compiled decoding step's extension built (once per source hash, a minute or two;
    later sessions find it) before any test: not inside a served model's load in a
    subprocess, whose start a test waits on with a timeout. Each xdist worker asks; one
    builds, the others wait for its lock and load the result."""
    from seq2seq_core.kernels import step_extension

    step_extension.load()
