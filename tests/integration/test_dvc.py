"""A real `dvc repro` of dvc.yaml in a temporary git repository, on tiny parameters."""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from flows.lineage import dvc_lock_tags, file_md5
from tests.support import dvc_git_repo, run_in, tiny_params

pytestmark = pytest.mark.integration


def test_repro_then_nothing_to_do_then_only_train_onwards(tmp_path: Path) -> None:
    repo = dvc_git_repo(tmp_path / "repo", tiny_params())
    dvc = [sys.executable, "-m", "dvc"]

    first = run_in([*dvc, "repro"], repo)
    for stage in ("ingest", "vocab", "train", "evaluate", "register"):
        assert f"Running stage '{stage}'" in first
    assert (repo / "reports" / "metrics.json").exists()
    assert (repo / "dvc.lock").exists()

    second = run_in([*dvc, "repro"], repo)
    assert "Running stage" not in second
    assert "up to date" in second

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["lr"] = 0.003  # a new fingerprint: training starts over
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    third = run_in([*dvc, "repro"], repo)
    assert "Running stage 'ingest'" not in third
    assert "Running stage 'vocab'" not in third
    for stage in ("train", "evaluate", "register"):
        assert f"Running stage '{stage}'" in third

    # Lineage: the registered version's dvc.* tags are dvc.lock's hashes, and
    # `dvc checkout` restores files with exactly those hashes (docs/lineage.md).
    lock_tags = dvc_lock_tags(repo)
    assert set(lock_tags) >= {
        "dvc.data/prepared/train.parquet.md5", "dvc.data/prepared/test.parquet.md5",
        "dvc.data/vocab.md5",
    }  # fmt: skip
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    try:
        latest = MlflowClient().get_model_version_by_alias("seq2seq-translator", "challenger")
    finally:
        mlflow.set_tracking_uri(None)
    assert {k: latest.tags[k] for k in lock_tags} == lock_tags
    assert (
        latest.tags["params.sha256"]
        == hashlib.sha256((repo / "params.yaml").read_bytes()).hexdigest()
    )
    train_parquet = repo / "data" / "prepared" / "train.parquet"
    train_parquet.unlink()
    shutil.rmtree(repo / "data" / "vocab")
    run_in([*dvc, "checkout"], repo)
    assert file_md5(train_parquet) == lock_tags["dvc.data/prepared/train.parquet.md5"]
    assert "up to date" in run_in([*dvc, "status"], repo).lower()

    # An experiment: only train and what follows re-run; exp show has the test BLEU.
    run_in(["git", "add", "-A"], repo)
    run_in(["git", "commit", "-qm", "lr 0.003"], repo)
    exp = run_in([*dvc, "exp", "run", "-S", "model.hidden_size=48"], repo)
    assert "Running stage 'ingest'" not in exp and "Running stage 'vocab'" not in exp
    for stage in ("train", "evaluate", "register"):
        assert f"Running stage '{stage}'" in exp
    shown = run_in([*dvc, "exp", "show", "--json"], repo)
    assert '"bleu"' in shown and '"chrf"' in shown and '"hidden_size": 48' in shown
    # The experiment against the last commit: metrics by name, plots rendered to a folder.
    assert "test.bleu" in run_in([*dvc, "metrics", "diff", "--all"], repo)
    run_in([*dvc, "plots", "diff", "-o", "plots-diff"], repo)
    assert (repo / "plots-diff" / "index.html").stat().st_size > 0
