"""The splits as MLflow dataset inputs of the registering run: real MLflow on SQLite, the
register stage run on a copy of the session's trained workspace."""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from flows import dataset_inputs
from flows.lineage import file_md5
from flows.register_stage import register_stage
from seq2seq_core.config import load_config
from tests.support import METRICS, TrainedWorkspace, copy_workspace

SPLIT_FILES = {s: f"data/prepared/{s}.parquet" for s in ("train", "valid", "test")}


def test_registering_run_lists_the_three_splits_with_dvc_digests_and_sources(
    tmp_path: Path, trained_workspace: TrainedWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = copy_workspace(trained_workspace, tmp_path / "ws", register={"model_name": "ds-test"})
    monkeypatch.chdir(root)
    cfg = load_config(root / "params.yaml")
    reports = root / cfg.evaluate.reports_dir
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "metrics.json").write_text(json.dumps(METRICS), encoding="utf-8")
    # dvc.lock as `dvc repro` writes it, with train and valid only: test falls back to
    # the file's own md5 (what DVC would record), and says so.
    md5 = {s: file_md5(root / path) for s, path in SPLIT_FILES.items()}
    assert len(set(md5.values())) == 3
    outs = [{"path": SPLIT_FILES[s], "md5": md5[s], "size": 1} for s in ("train", "valid")]
    (root / "dvc.lock").write_text(
        yaml.safe_dump({"schema": "2.0", "stages": {"ingest": {"cmd": "x", "outs": outs}}})
    )
    previous = mlflow.get_tracking_uri()
    try:
        record = register_stage(cfg, trigger="test", root=root)
        client = MlflowClient()
        run = client.get_run(record["run_id"])
        inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
        assert sorted(inputs) == ["test", "train", "valid"]
        contexts = {n: {t.key: t.value for t in i.tags} for n, i in inputs.items()}
        assert {n: t["mlflow.data.context"] for n, t in contexts.items()} == {
            "train": "training", "valid": "validation", "test": "test"
        }  # fmt: skip
        assert {n: t[dataset_inputs.DIGEST_FROM_TAG] for n, t in contexts.items()} == {
            "train": "dvc.lock", "valid": "dvc.lock", "test": "file"
        }  # fmt: skip
        for name, found in inputs.items():
            dataset = found.dataset
            assert dataset.digest == md5[name]
            assert dataset.source_type == "local"
            assert json.loads(dataset.source) == {
                "uri": SPLIT_FILES[name],
                "corpus": cfg.data.source,
            }
            assert json.loads(dataset.schema)["mlflow_colspec"] == [
                {"name": c, "type": "string"} for c in ("id", "src", "tgt")
            ]
        rows = {n: json.loads(i.dataset.profile)["num_rows"] for n, i in inputs.items()}
        report = json.loads((root / "data/prepared/report.json").read_text())
        assert rows == {s: report["splits"][s]["pairs"] for s in rows}
        # The registered version's run is this run: its page leads to the same datasets.
        version = client.get_model_version("ds-test", str(record["version"]))
        assert version.run_id == run.info.run_id

        # A retried registration logs them again: still three inputs, not six.
        start = time.perf_counter()
        dataset_inputs.log_split_inputs(cfg, root=root, run_id=run.info.run_id)
        seconds = time.perf_counter() - start
        assert len(client.get_run(run.info.run_id).inputs.dataset_inputs) == 3
        assert seconds < 2.0, seconds  # footer reads and one REST call, no data loaded
    finally:
        mlflow.set_tracking_uri(previous)


def test_missing_splits_are_left_out(
    tmp_path: Path, trained_workspace: TrainedWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = copy_workspace(trained_workspace, tmp_path / "ws")
    (root / SPLIT_FILES["valid"]).unlink()
    cfg = load_config(root / "params.yaml", ["data.source=corpus.tsv", "data.test_source=t.tsv"])
    found = dataset_inputs.split_inputs(cfg, root)
    assert [(s.name, s.corpus) for s in found] == [("train", "corpus.tsv"), ("test", "t.tsv")]
