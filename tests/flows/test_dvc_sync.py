"""flows/dvc_sync.py: which DVC-tracked inputs a clone lacks, and a failed pull that says
so (the pull from S3 and the published dvc.lock run in tests/test_scale_out.py)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from flows import dvc_sync

POINTER = "outs:\n- md5: 0123456789abcdef0123456789abcdef\n  size: 3\n  path: corpus.tsv\n"


def _repo(root: Path) -> Path:
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (root / "data" / "raw").mkdir(parents=True)
    (root / "data" / "raw" / "corpus.tsv.dvc").write_text(POINTER, encoding="utf-8")
    (root / "notes.dvc.txt").write_text("not a pointer\n", encoding="utf-8")
    subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
    return root


def test_missing_inputs_lists_pointers_without_their_file(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    assert dvc_sync.missing_inputs(repo) == [Path("data/raw/corpus.tsv.dvc")]
    (repo / "data" / "raw" / "corpus.tsv").write_text("a\tb\n", encoding="utf-8")
    assert dvc_sync.missing_inputs(repo) == []  # present, even if edited: left alone


def test_failed_pull_names_the_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = _repo(tmp_path)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True)
    monkeypatch.chdir(repo)
    with pytest.raises(dvc_sync.DvcPullError, match=r"data/raw/corpus\.tsv\.dvc"):
        dvc_sync.pull_inputs(logging.getLogger("test"))  # no remote configured


def test_publishing_is_off_unless_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(dvc_sync.GIT_PUSH_ENV, raising=False)
    monkeypatch.chdir(_repo(tmp_path))
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n", encoding="utf-8")
    assert dvc_sync.publish_lock(logging.getLogger("test"), "run-1") is None


def test_a_failed_push_is_remembered_and_the_next_run_retries_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A real DVC project whose local remote is unreachable (its parent is a file), then
    reachable: the marker holds what and when, the retry pushes and forgets it."""
    repo = tmp_path / "repo"
    repo.mkdir()
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([*dvc, "init", "-q"], cwd=repo, check=True)
    (tmp_path / "blocked").write_text("a file, so no remote can be made below it\n")
    down, up = tmp_path / "blocked" / "remote", tmp_path / "remote"
    subprocess.run([*dvc, "remote", "add", "-d", "store", str(down)], cwd=repo, check=True)
    (repo / "dvc.yaml").write_text(
        "stages:\n  make:\n    cmd: echo made > out.txt\n    outs: [out.txt]\n", encoding="utf-8"
    )
    subprocess.run([*dvc, "repro", "-q"], cwd=repo, check=True, capture_output=True)
    monkeypatch.chdir(repo)
    logger = logging.getLogger("test")

    with caplog.at_level(logging.INFO):
        assert dvc_sync.push_outputs(logger, "run-1") is False
        assert dvc_sync.retry_pending_push(logger) is False  # still down: one more try
    pending = dvc_sync.read_pending_push()
    md5 = dvc_sync.locked_outputs()["out.txt"]
    assert pending is not None and pending["outs"] == {"out.txt": md5}
    assert (pending["flow_run_id"], pending["attempts"]) == ("run-1", 2)
    assert pending["since"] <= pending["last_attempt"]
    assert pending["last_error"].startswith("ERROR")  # DVC's reason, not its support footer
    assert "the next run retries the push" in caplog.text

    subprocess.run([*dvc, "remote", "modify", "store", "url", str(up)], check=True)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert dvc_sync.retry_pending_push(logger) is True
    assert "pending dvc push done: the outputs of flow run run-1" in caplog.text
    assert dvc_sync.read_pending_push() is None
    assert (up / "files" / "md5" / md5[:2] / md5[2:]).is_file()
    assert dvc_sync.retry_pending_push(logger) is False  # nothing pending any more
