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


GIT_ID = {
    "GIT_AUTHOR_NAME": "worker", "GIT_AUTHOR_EMAIL": "worker@example.invalid",
    "GIT_COMMITTER_NAME": "worker", "GIT_COMMITTER_EMAIL": "worker@example.invalid",
}  # fmt: skip


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def _clone_with_remote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A bare remote with one commit on main, and a worker's clone of it (the cwd) that
    has a local-only commit and a new dvc.lock in its working tree."""
    for key, value in GIT_ID.items():
        monkeypatch.setenv(key, value)
    remote, seed, clone = tmp_path / "remote.git", tmp_path / "seed", tmp_path / "clone"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
    subprocess.run(["git", "clone", "-q", str(remote), str(seed)], check=True)
    _git(seed, "checkout", "-q", "-b", "main")
    (seed / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n", encoding="utf-8")
    (seed / "README").write_text("project\n", encoding="utf-8")
    _git(seed, "add", "-A")
    _git(seed, "commit", "-q", "-m", "seed")
    _git(seed, "push", "-q", "origin", "main")
    subprocess.run(["git", "clone", "-q", str(remote), str(clone)], check=True)
    (clone / "notes.txt").write_text("work in progress\n", encoding="utf-8")
    _git(clone, "add", "notes.txt")
    _git(clone, "commit", "-q", "-m", "local only")
    (clone / "dvc.lock").write_text("schema: '2.0'\nstages: {train: {}}\n", encoding="utf-8")
    monkeypatch.chdir(clone)
    monkeypatch.setenv(dvc_sync.GIT_PUSH_ENV, "true")
    return remote, seed


def _remote_files(remote: Path) -> list[str]:
    return _git(remote, "ls-tree", "--name-only", "main").split()


def test_publish_pushes_dvc_lock_alone_on_the_remote_tip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    remote, _ = _clone_with_remote(tmp_path, monkeypatch)
    caplog.set_level(logging.INFO)
    local_head = _git(Path.cwd(), "rev-parse", "HEAD")
    commit = dvc_sync.publish_lock(logging.getLogger("test"), "run-1")
    assert commit == _git(remote, "rev-parse", "main")
    assert _git(remote, "show", "main:dvc.lock") == "schema: '2.0'\nstages: {train: {}}"
    assert _remote_files(remote) == ["README", "dvc.lock"]  # the local-only commit stayed here
    assert _git(remote, "log", "--format=%s", "main").splitlines() == [
        "dvc.lock: outputs of flow run run-1", "seed"
    ]  # fmt: skip
    assert _git(Path.cwd(), "rev-parse", "HEAD") == local_head  # the clone's branch untouched
    assert dvc_sync.publish_lock(logging.getLogger("test"), "run-1") is None  # already there
    assert "nothing to publish" in caplog.text


def test_a_push_rejected_by_a_concurrent_commit_is_rebuilt_and_pushed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Another worker publishes between this one's fetch and push (a pre-push hook makes
    that happen once, for real): the push is rejected, rebuilt on the new tip, accepted."""
    remote, seed = _clone_with_remote(tmp_path, monkeypatch)
    flag = tmp_path / "raced"
    hook = Path.cwd() / ".git" / "hooks" / "pre-push"
    hook.write_text(
        "#!/bin/sh\n"
        f"if [ ! -e {flag} ]; then touch {flag}\n"
        f"  cd {seed} && echo other > other.txt && git add other.txt && "
        "git commit -q -m 'other worker' && git push -q origin main\nfi\n",
        encoding="utf-8",
    )
    hook.chmod(0o755)
    caplog.set_level(logging.INFO)
    commit = dvc_sync.publish_lock(logging.getLogger("test"), "run-2")
    assert flag.exists() and commit == _git(remote, "rev-parse", "main")
    assert _git(remote, "log", "--format=%s", "main").splitlines() == [
        "dvc.lock: outputs of flow run run-2", "other worker", "seed"
    ]  # fmt: skip
    assert _remote_files(remote) == ["README", "dvc.lock", "other.txt"]
    assert "moved meanwhile; rebuilding" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_push_that_keeps_failing_is_reported_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    remote, _ = _clone_with_remote(tmp_path, monkeypatch)
    before = _git(remote, "rev-parse", "main")
    hook = remote / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'branch is protected' >&2\nexit 1\n", encoding="utf-8")
    hook.chmod(0o755)
    assert dvc_sync.publish_lock(logging.getLogger("test"), "run-3") is None
    assert _git(remote, "rev-parse", "main") == before
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "branch is protected" in warnings[0]
    assert "commit only that file and push it" in warnings[0]
