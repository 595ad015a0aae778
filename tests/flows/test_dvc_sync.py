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
