"""The whole Prefect flow against a real (temporary) Prefect server and MLflow on SQLite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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

    good = training_pipeline(params_path=str(tiny_params_file), dvc_commit=False)
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
