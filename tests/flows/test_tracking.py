"""flows.tracking against a real MLflow store (SQLite in a temp dir): the run, the training
callback, artifacts, registration and the promotion gate. No MLflow mocks."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from flows import gate, registry, tracking
from seq2seq_core.config import PipelineConfig, config_from_dict
from seq2seq_core.training.loop import TrainResult
from tests.support import REPO, TrainedWorkspace

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

SHA_A, SHA_B = "a" * 64, "b" * 64
SIG = "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"


def tiny_cfg(**register: object) -> PipelineConfig:
    return config_from_dict(
        {
            "vocab": {"size": 100},
            "model": {"hidden_size": 16, "emb_size": 8, "dropout": 0.0, "tie_embeddings": "none"},
            "train": {"max_epochs": 2, "batch_tokens": 400, "valid_bleu_sentences": 5},
            "decode": {"max_len_ratio": 1.0, "max_len_extra": 5},
            "register": {"model_name": "gate-test", **register},
        }
    )


def scores(bleu: float, sha: str = SHA_A, bleu_sig: str = SIG) -> dict:
    """A metrics.json as the evaluate stage writes it (the gate reads only these keys)."""
    return {
        "test": {
            "bleu": bleu,
            "chrf": 40.0,
            "ter": 70.0,
            "signatures": {"bleu": bleu_sig, "chrf": "nrefs:1|chrf", "ter": "nrefs:1|ter"},
            "sentences": 21,
            "test_set_sha256": sha,
        }
    }


@dataclass
class Trained:
    root: Path
    cfg: PipelineConfig
    run_id: str
    result: TrainResult
    model_uri: str


@pytest.fixture(scope="module")
def tracking_root(trained_workspace: TrainedWorkspace):
    """The MLflow store the session's tiny model was trained in: only these tests use it
    (the others register copies of the model in stores of their own)."""
    previous = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        tracking.configure_tracking(trained_workspace.store)
        yield trained_workspace.store
    mlflow.set_tracking_uri(previous)


@pytest.fixture
def store(tracking_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point MLflow (back) at the module's store; a test may have moved it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.configure_tracking(tracking_root)
    return tracking_root


@pytest.fixture(scope="module")
def trained(tracking_root: Path, trained_workspace: TrainedWorkspace) -> Trained:
    """A real tiny training run inside `pipeline_run` (named "tiny", tagged with a flow run
    id and an empty tag), metrics through the callback flushing every 7 steps, its model
    logged to the run: the session's shared training (support.train_workspace)."""
    w = trained_workspace
    return Trained(tracking_root, w.cfg, w.run_id, w.result, w.model_uri)


# --------------------------------------------------------------------------- store


def test_configure_tracking_defaults_to_sqlite_and_artifacts_under_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY")
    uri = tracking.configure_tracking(tmp_path)
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert mlflow.get_tracking_uri() == uri and (tmp_path / "mlflow.db").is_file()
    experiment = MlflowClient().get_experiment_by_name(tracking.DEFAULT_EXPERIMENT)
    assert experiment.artifact_location == (tmp_path.resolve() / "mlartifacts").as_uri()
    assert tracking.configure_tracking(tmp_path) == uri  # idempotent: the experiment exists

    other = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    assert tracking.configure_tracking(tmp_path) == other
    assert mlflow.get_tracking_uri() == other


def test_import_has_no_side_effects(tmp_path: Path) -> None:
    code = (
        "import os, mlflow, flows.tracking, flows.pyfunc\n"
        "assert not mlflow.is_tracking_uri_set()\n"
        "assert 'MLFLOW_TRACKING_URI' not in os.environ\n"
        "assert 'prefect' not in __import__('sys').modules\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True, timeout=120)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- runs


def test_pipeline_run_logs_every_param_and_lineage_tags(trained: Trained, store: Path) -> None:
    run = MlflowClient().get_run(trained.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    expected = {k: "None" if v is None else str(v) for k, v in trained.cfg.flat().items()}
    assert run.data.params == expected
    assert run.data.params["model.hidden_size"] == "16"
    assert run.data.params["data.valid_source"] == "None"
    tags = run.data.tags
    assert tags["prefect.flow_run_id"] == "flow-run-123"
    assert "empty" not in tags  # empty values are not worth a tag
    assert tags["torch.version"].startswith("2.") and tags["python.version"].startswith("3.")
    assert tags["host.device"] and len(tags["config.sha256"]) == 64
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode == 0:
        assert tags["git.commit"] == head.stdout.strip()
        assert tags["git.dirty"] in {"true", "false"}


def test_callback_logs_step_and_epoch_metrics(trained: Trained, store: Path) -> None:
    client = MlflowClient()
    steps = trained.result.steps
    for name in ("loss", "lr", "grad_norm", "tokens_per_s"):
        history = client.get_metric_history(trained.run_id, f"train/{name}")
        assert sorted(m.step for m in history) == list(range(1, steps + 1)), name
    for name in ("train_loss", "valid_loss", "valid_ppl", "valid_bleu"):
        history = client.get_metric_history(trained.run_id, f"epoch/{name}")
        assert sorted(m.step for m in history) == [1, 2], name
    logged = {
        m.step: m.value for m in client.get_metric_history(trained.run_id, "epoch/valid_loss")
    }
    assert logged == {h["epoch"]: pytest.approx(h["valid_loss"]) for h in trained.result.history}


def test_logging_from_another_thread_reaches_the_pipeline_run(store: Path, tmp_path: Path) -> None:
    """A Prefect task may run in a worker thread, where MLflow has no active run."""
    report = tmp_path / "report.json"
    report.write_text("{}")
    seen: dict[str, object] = {}

    def task() -> None:
        seen["active_run"] = mlflow.active_run()
        callback = tracking.MlflowTrainCallback()  # no run id: the pipeline run is found
        callback.on_step(1, {"loss": 2.5})
        callback.on_epoch(1, {"valid_bleu": 1.5})
        callback.close()
        tracking.log_metrics({"test/bleu": 3.0})
        tracking.log_files([report], "data")

    with tracking.pipeline_run(PipelineConfig()) as run:
        worker = threading.Thread(target=task)
        worker.start()
        worker.join()
    client = MlflowClient()
    assert seen["active_run"] is None
    metrics = client.get_run(run.info.run_id).data.metrics
    assert metrics == {"train/loss": 2.5, "epoch/valid_bleu": 1.5, "test/bleu": 3.0}
    assert [f.path for f in client.list_artifacts(run.info.run_id, "data")] == ["data/report.json"]


def test_failed_body_fails_the_run_and_no_run_means_a_clear_error(store: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), tracking.pipeline_run(PipelineConfig()) as run:
        raise RuntimeError("boom")
    assert MlflowClient().get_run(run.info.run_id).info.status == "FAILED"
    with pytest.raises(tracking.NoActiveRunError, match="pipeline_run"):
        tracking.log_metrics({"x": 1.0})


def test_log_files_logs_files_and_directory_contents_and_skips_missing(
    store: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "loss.png").write_bytes(b"png")
    (tmp_path / "metrics.json").write_text("{}")
    missing = tmp_path / "samples.csv"
    with tracking.pipeline_run(PipelineConfig()) as run, caplog.at_level(logging.WARNING):
        logged = tracking.log_files([tmp_path / "metrics.json", missing], "reports")
        tracking.log_files([tmp_path / "plots"], "plots")
    assert logged == [tmp_path / "metrics.json"]
    assert str(missing) in caplog.text
    client = MlflowClient()
    assert [f.path for f in client.list_artifacts(run.info.run_id, "reports")] == [
        "reports/metrics.json"
    ]
    assert [f.path for f in client.list_artifacts(run.info.run_id, "plots")] == ["plots/loss.png"]


# --------------------------------------------------------------------------- registry


def test_register_refuses_metrics_without_a_test_set_hash(trained: Trained, store: Path) -> None:
    metrics = scores(50.0)
    del metrics["test"]["test_set_sha256"]
    cfg = tiny_cfg(model_name="refused")
    with pytest.raises(gate.MetricsFormatError, match=r"test\.test_set_sha256"):
        registry.register_and_promote(
            cfg, model_uri=trained.model_uri, run_id=trained.run_id, metrics=metrics
        )
    assert MlflowClient().search_model_versions("name='refused'") == []


def test_checkpoint_choice_is_a_tag_and_metrics(store: Path) -> None:
    choice = {"kept_checkpoint": "averaged", "average_checkpoints": 5, "snapshots": 4,
              "averaged_valid_bleu": 21.5, "single_valid_bleu": 20.25}  # fmt: skip
    with mlflow.start_run() as run:
        tracking.log_checkpoint_choice({"kept_checkpoint": "averaged", "averaging": choice})
    logged = MlflowClient().get_run(run.info.run_id).data
    assert logged.tags["kept_checkpoint"] == "averaged"
    assert logged.metrics == {
        "averaging/valid_bleu_averaged": 21.5,
        "averaging/valid_bleu_single": 20.25,
        "averaging/snapshots": 4,
    }
    with mlflow.start_run() as off:
        tracking.log_checkpoint_choice({"kept_checkpoint": "single", "averaging": None})
    logged = MlflowClient().get_run(off.info.run_id).data
    assert logged.tags["kept_checkpoint"] == "single" and logged.metrics == {}
