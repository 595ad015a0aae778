"""The whole Prefect flow against a real (temporary) Prefect server and MLflow on SQLite."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def test_flow_runs_all_stages_and_gates_the_registry(prefect_server, tiny_params_file: Path):
    from mlflow import MlflowClient

    from flows.pipeline import training_pipeline
    from flows.tracking import configure_tracking

    first = training_pipeline(params_path=str(tiny_params_file), dvc_commit=False)

    assert set(first["seconds"]) == {"ingest", "vocab", "train", "evaluate", "register"}
    assert first["data"]["counts"]["train"] > 150
    metrics = json.loads(Path("reports/metrics.json").read_text())
    assert metrics["test"]["signatures"]["bleu"].startswith("nrefs:1|")
    assert Path("reports/plots/loss.png").stat().st_size > 1000
    reg = first["registration"]
    assert str(reg["version"]) == "1"
    assert set(reg["aliases"]) == {"challenger", "champion"}

    configure_tracking(Path.cwd())
    client = MlflowClient()
    run = client.get_run(first["mlflow_run_id"])
    assert run.data.params["model.hidden_size"] == "32"
    assert "test/bleu" in run.data.metrics
    assert run.data.tags["prefect.flow_run_id"]
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) > 0

    assert first["reused"] == {"ingest": False, "vocab": False}
    # Cached task results live in the run's project directory, not in ~/.prefect.
    assert any(p.is_file() for p in Path(".state/prefect-results").iterdir())
    stamps = {p: p.stat().st_mtime_ns for p in (Path("data/prepared/train.parquet"),
                                                Path("data/vocab/tokenizer.json"))}  # fmt: skip

    # Same data, same seed: an equal score must not take the champion alias.
    second = training_pipeline(params_path=str(tiny_params_file), dvc_commit=False)
    # Unchanged inputs: ingest and vocab come from the cache, their outputs untouched.
    assert second["reused"] == {"ingest": True, "vocab": True}
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    name = second["registration"]["model_name"]
    assert second["registration"]["aliases"] == ["challenger"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "2"


def test_failed_run_leaves_the_champion_and_says_why(prefect_server, tiny_params_file: Path):
    import asyncio

    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.pipeline import training_pipeline
    from flows.tracking import configure_tracking

    # A DVC project with a local default remote: a finished run leaves `dvc status` clean
    # and its data pushed (the flow's `dvc commit --force` + `dvc push`).
    shutil.copy(REPO / "dvc.yaml", "dvc.yaml")
    remote = tiny_params_file.parent.parent / f"{tiny_params_file.parent.name}-remote"
    _dvc("init", "--no-scm", "-q")
    _dvc("remote", "add", "-d", "local", str(remote))
    good = training_pipeline(params_path=str(tiny_params_file), dvc_commit=True)
    assert "Data and pipelines are up to date" in _dvc("status")
    assert "in sync" in _dvc("status", "--cloud")
    assert any(p.is_file() for p in remote.rglob("*"))
    name = good["registration"]["model_name"]
    configure_tracking(Path.cwd())
    champion = MlflowClient().get_model_version_by_alias(name, "champion").version

    broken = ["train.max_len=0"]  # passes config checks, then train finds no usable pair
    state = training_pipeline(
        params_path=str(tiny_params_file), overrides=broken, dvc_commit=False,
        return_state=True,
    )  # fmt: skip
    assert state.is_failed()
    assert MlflowClient().get_model_version_by_alias(name, "champion").version == champion

    async def failure_note() -> str:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["pipeline-failure"]))
            )
        return found[-1].data

    note = asyncio.run(failure_note())
    assert "Pipeline failed in stage `train`" in note and "champion` alias was not touched" in note


def _dvc(*args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr
