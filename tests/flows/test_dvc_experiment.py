"""A stage inside a DVC experiment's copy: its workspace, its tags, one SQLite writer."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
import yaml

from flows.dvc_experiment import (
    EXP_BASELINE_TAG,
    EXP_NAME_TAG,
    experiment_tags,
    store_writer,
    workspace_of,
)
from flows.freshness import CODE_PACKAGES
from flows.tracking import tracking_uri
from tests.support import REPO


def test_a_copy_belongs_to_its_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DVC_ROOT", raising=False)
    queued = tmp_path / "ws" / ".dvc" / "tmp" / "exps" / "tmpab12"
    temp = tmp_path / "ws" / ".dvc" / "tmp" / "exps" / "standalone" / "tmpcd34"
    for copy in (queued, temp):
        copy.mkdir(parents=True)
        assert workspace_of(copy) == (tmp_path / "ws").resolve()
    assert workspace_of(tmp_path / "ws") == (tmp_path / "ws").resolve()
    # DVC names the parent repo of a copy in DVC_ROOT; a plain run's own root stays itself.
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "ws"))
    assert workspace_of(queued) == (tmp_path / "ws").resolve()
    assert workspace_of(tmp_path / "other") == (tmp_path / "other").resolve()


def test_a_copy_tracks_into_its_workspace_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmpab12"
    copy.mkdir(parents=True)
    assert tracking_uri(copy) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(copy) == "http://127.0.0.1:5000"


def test_experiment_tags_name_the_experiment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    assert experiment_tags() == {}
    monkeypatch.setenv("DVC_EXP_NAME", "lr-0.001")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "abc123")
    assert experiment_tags() == {EXP_NAME_TAG: "lr-0.001", EXP_BASELINE_TAG: "abc123"}


def test_sqlite_writers_take_turns_and_say_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spans: list[tuple[str, float, float]] = []

    def write(name: str) -> None:
        with store_writer(uri):
            start = time.monotonic()
            time.sleep(0.3)
            spans.append((name, start, time.monotonic()))

    with caplog.at_level(logging.INFO, logger="flows.dvc_experiment"):
        first = threading.Thread(target=write, args=("a",))
        first.start()
        time.sleep(0.1)
        write("b")
        first.join()
    (_, _, a_end), (_, b_start, _) = sorted(spans, key=lambda s: s[1])
    assert a_end <= b_start
    assert "tracking server" in caplog.text and "SQLite takes one writer" in caplog.text
    assert (tmp_path / "mlflow.db.writer.lock").exists()


def test_a_server_store_takes_no_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with store_writer("http://127.0.0.1:5000"), store_writer("http://127.0.0.1:5000"):
        pass  # nested: a lock would deadlock here
    assert not list(tmp_path.iterdir())


def test_each_stage_runs_its_own_checkout_and_lists_its_code() -> None:
    """`python -m flows.cli` (the checkout's code first on sys.path), and code deps that
    exist and lie inside what the pipeline's freshness check hashes."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    for name, stage in stages.items():
        assert stage["cmd"] == f"python -m flows.cli {name}"
        code = [d for d in stage["deps"] if d.split("/")[0] in CODE_PACKAGES]
        assert "flows/cli.py" in code, name
        for dep in code:
            assert (REPO / dep).exists(), f"{name}: {dep} does not exist"
    training = {n for n, s in stages.items() if "seq2seq_core/training" in s["deps"]}
    assert training == {"train"}
    assert "seq2seq_core" in stages["register"]["deps"]
