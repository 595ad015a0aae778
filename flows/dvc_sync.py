"""DVC around a flow run in a worker's clone: fetch missing inputs, publish the lock file.

A worker's clone has what git has: ``*.dvc`` pointers for the raw inputs and, once a run
has been recorded, ``dvc.lock``; the files themselves live in the DVC remote (S3 in
docs/scaling.md). Before ingest the flow calls ``pull_inputs``: the ``.dvc``-tracked files
that are missing here are pulled (present ones, even locally edited, are left alone).
After ``dvc commit`` + ``dvc push`` the flow calls ``publish_lock``: with
``SEQ2SEQ_DVC_GIT_PUSH=true`` in the worker's environment, ``dvc.lock`` is committed and
pushed to the clone's upstream, so another clone can ``git pull && dvc pull`` exactly the
data of that run. Off by default: a laptop run does not write to git.

The published commit holds ``dvc.lock`` and nothing else: it is built on the upstream
branch's tip as fetched now (the tip's tree with this clone's ``dvc.lock``), so commits
made only in this clone are never pushed, and the clone's own branch and index are not
touched. When the push is rejected because the branch moved meanwhile (another worker
published), the commit is rebuilt on the new tip and pushed once more; a second failure is
logged once, with what to do. ``dvc.lock`` is replaced whole: the newest run's lock wins.

A failed ``dvc push`` (the object store down) is remembered in ``.state/pending-push.json``
(which outputs, since when, by which flow run, how many tries, the last error) and retried
by ``retry_pending_push`` at the start of the next run, also one that is otherwise up to
date; only a push that went out publishes ``dvc.lock``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from seq2seq_core.runtime.files import write_json

GIT_PUSH_ENV = "SEQ2SEQ_DVC_GIT_PUSH"
# A `dvc push` that failed, for the next run to retry (relative: the clone's ignored .state/).
PENDING_PUSH = Path(".state") / "pending-push.json"
# The branch to publish to (default: the upstream of the clone's branch, else its name).
GIT_BRANCH_ENV = "SEQ2SEQ_DVC_GIT_BRANCH"
LOCK_FILE = "dvc.lock"


class DvcPullError(RuntimeError):
    """`dvc pull` of the flow's inputs failed; the message carries DVC's error."""


def _run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)


def _dvc(*args: str) -> subprocess.CompletedProcess[str]:
    return _run([sys.executable, "-m", "dvc", *args])


def _in_dvc_project() -> bool:
    return Path("dvc.yaml").exists() and Path(".dvc").is_dir()


def run_dvc(logger: Any, *args: str) -> bool:
    """Run `dvc ARGS` in a DVC project (skipped elsewhere); a failure is logged, not fatal:
    the model is already trained and the lineage tags then say what dvc.lock holds."""
    if not _in_dvc_project():
        return False
    proc = _dvc(*args)
    if proc.returncode != 0:
        logger.warning("dvc %s failed: %s", " ".join(args), proc.stderr.strip()[-500:])
        return False
    return True


def missing_inputs(root: Path = Path()) -> list[Path]:
    """The git-tracked ``*.dvc`` files (relative to ``root``) with an output missing."""
    listed = _run(["git", "-C", str(root), "ls-files", "*.dvc"])
    if listed.returncode != 0:
        return []
    missing = []
    for name in sorted(set(listed.stdout.split())):
        pointer = root / name
        if not pointer.is_file():
            continue
        outs = (yaml.safe_load(pointer.read_text(encoding="utf-8")) or {}).get("outs") or []
        if any(not (pointer.parent / out["path"]).exists() for out in outs if "path" in out):
            missing.append(Path(name))
    return missing


def pull_inputs(logger: Any) -> list[Path]:
    """`dvc pull` the ``.dvc``-tracked inputs missing from this clone; returns them."""
    if not Path(".dvc").is_dir():
        return []
    missing = missing_inputs()
    if not missing:
        return []
    logger.info("dvc pull: %s missing in this clone", ", ".join(map(str, missing)))
    proc = _dvc("pull", "--quiet", *map(str, missing))
    if proc.returncode != 0:
        raise DvcPullError(f"dvc pull {' '.join(map(str, missing))}: {proc.stderr[-1000:]}")
    return missing


def publish_lock(logger: Any, flow_run_id: str = "") -> str | None:
    """Publish ``dvc.lock`` to the upstream branch when ``SEQ2SEQ_DVC_GIT_PUSH`` is true, as
    one commit on the branch's tip (module docstring); returns that commit, or None. The
    flow calls it only after its `dvc push` succeeded, so a published lock never names
    missing data. Failures are logged, not raised: the model is registered by then."""
    if os.environ.get(GIT_PUSH_ENV, "").strip().lower() not in ("1", "true", "yes"):
        return None
    if not Path(LOCK_FILE).is_file():
        return None
    target = publish_target()
    if target is None:
        logger.warning("publishing dvc.lock: no branch to publish to (detached HEAD and no "
                       "%s); set %s", GIT_BRANCH_ENV, GIT_BRANCH_ENV)  # fmt: skip
        return None
    remote, branch = target
    message = f"dvc.lock: outputs of flow run {flow_run_id or '(no id)'}"
    failure = ""
    for attempt in (1, 2):
        fetched = _run(["git", "fetch", "--quiet", remote, f"refs/heads/{branch}"])
        if fetched.returncode != 0:
            failure = f"git fetch {remote} {branch}: {fetched.stderr.strip()[-500:]}"
            break
        tip = _run(["git", "rev-parse", "FETCH_HEAD"]).stdout.strip()
        try:
            commit = lock_commit_on(tip, message)
        except subprocess.CalledProcessError as exc:  # e.g. no git identity in the worker
            failure = f"git {exc.cmd[1]}: {exc.stderr.strip()[-500:]}"
            break
        if commit is None:
            logger.info("dvc.lock on %s/%s is already this one: nothing to publish", remote, branch)
            return None
        pushed = _run(["git", "push", "--quiet", remote, f"{commit}:refs/heads/{branch}"])
        if pushed.returncode == 0:
            logger.info("published dvc.lock to %s/%s as git commit %s", remote, branch, commit)
            return commit
        failure = f"git push {remote} {branch}: {pushed.stderr.strip()[-500:]}"
        if attempt == 1:
            logger.info("publishing dvc.lock: %s/%s moved meanwhile; rebuilding the commit on "
                        "its new tip and pushing once more", remote, branch)  # fmt: skip
    logger.warning(
        "publishing dvc.lock failed (%s). The registered model is fine and this run's "
        "dvc.lock is in the clone's working tree: fix the cause (credentials, branch "
        "protection) and the next run publishes its own, or copy this dvc.lock into a fresh "
        "checkout of %s/%s, commit only that file and push it", failure, remote, branch,
    )  # fmt: skip
    return None


def publish_target() -> tuple[str, str] | None:
    """(remote, branch) to publish to: ``SEQ2SEQ_DVC_GIT_BRANCH`` on the upstream's remote
    (default origin), else the upstream of the checked-out branch, else its own name."""
    upstream = _run(["git", "rev-parse", "--abbrev-ref", "--symbolic-full-name", "@{upstream}"])
    remote, _, upstream_branch = upstream.stdout.strip().partition("/")
    if upstream.returncode != 0 or not upstream_branch:
        remote, upstream_branch = "origin", ""
    branch = os.environ.get(GIT_BRANCH_ENV, "").strip() or upstream_branch
    if not branch:
        branch = _run(["git", "rev-parse", "--abbrev-ref", "HEAD"]).stdout.strip()
    return None if branch in ("", "HEAD") else (remote, branch)


def lock_commit_on(tip: str, message: str) -> str | None:
    """A commit whose parent is ``tip`` and whose tree is ``tip``'s with this clone's
    ``dvc.lock``; None when ``tip`` already has this ``dvc.lock``. Built in a scratch index,
    so the clone's index, branch and working tree stay as they are."""
    blob = _git_out("hash-object", "-w", LOCK_FILE)
    if (
        _run(["git", "rev-parse", "--verify", "--quiet", f"{tip}:{LOCK_FILE}"]).stdout.strip()
        == blob
    ):
        return None
    with tempfile.TemporaryDirectory(prefix="seq2seq-publish-") as tmp:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        _git_out("read-tree", tip, env=env)
        _git_out("update-index", "--add", "--cacheinfo", f"100644,{blob},{LOCK_FILE}", env=env)
        tree = _git_out("write-tree", env=env)
    return _git_out("commit-tree", tree, "-p", tip, "-m", message)


def _git_out(*args: str, env: dict[str, str] | None = None) -> str:
    proc = _run(["git", *args], env=env)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, ["git", *args], proc.stdout,
                                            proc.stderr)  # fmt: skip
    return proc.stdout.strip()


def push_outputs(logger: Any, flow_run_id: str = "") -> bool:
    """`dvc push` what dvc.lock names; whether it went out. A failure is logged and
    remembered in ``PENDING_PUSH`` (the run itself succeeds: its model is registered),
    a success forgets an earlier failure."""
    if not _in_dvc_project():
        return False
    proc = _dvc("push")  # not --quiet: that drops DVC's ERROR line, the reason
    if proc.returncode == 0:
        PENDING_PUSH.unlink(missing_ok=True)
        return True
    pending = _remember_push(flow_run_id, _dvc_error(proc.stderr))
    logger.warning(
        "dvc push failed (try %d since %s): %s. The outputs live only in this clone's cache; "
        "the next run retries the push (%s)",
        pending["attempts"], pending["since"], pending["last_error"], PENDING_PUSH,
    )  # fmt: skip
    return False


def _dvc_error(stderr: str) -> str:
    """DVC's ERROR lines (its last lines are a support footer), else the end of stderr."""
    errors = [line.strip() for line in stderr.splitlines() if line.startswith("ERROR")]
    return (" ".join(errors) or stderr.strip())[-500:]


def read_pending_push() -> dict[str, Any] | None:
    """The remembered failed push, or None."""
    if not PENDING_PUSH.is_file():
        return None
    try:
        return json.loads(PENDING_PUSH.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {"since": "unknown", "flow_run_id": "", "attempts": 0, "outs": {}}


def retry_pending_push(logger: Any) -> bool:
    """At a run's start, before its up-to-date check: push what an earlier run could not,
    then publish its dvc.lock; whether a pending push went out now."""
    pending = read_pending_push()
    if pending is None:
        return False
    run_id = pending.get("flow_run_id") or "(no id)"
    logger.info(
        "a dvc push of flow run %s is pending since %s (%d failed tries, %d outputs): "
        "retrying it", run_id, pending.get("since"), pending.get("attempts", 0),
        len(pending.get("outs") or {}),
    )  # fmt: skip
    if not push_outputs(logger, pending.get("flow_run_id", "")):
        return False
    logger.info("pending dvc push done: the outputs of flow run %s are in the remote", run_id)
    publish_lock(logger, pending.get("flow_run_id", ""))
    return True


def _remember_push(flow_run_id: str, error: str) -> dict[str, Any]:
    """Write (or update) ``PENDING_PUSH``: the first failure's run and time are kept."""
    now = datetime.now(UTC).isoformat(timespec="seconds")
    earlier = read_pending_push() or {}
    pending = {
        "flow_run_id": earlier.get("flow_run_id") or flow_run_id,
        "since": earlier.get("since") or now,
        "attempts": int(earlier.get("attempts", 0)) + 1,
        "last_attempt": now,
        "last_error": error or "(no message)",
        "outs": locked_outputs(),
    }
    write_json(PENDING_PUSH, pending)
    return pending


def locked_outputs(lock: Path = Path("dvc.lock")) -> dict[str, str]:
    """Every stage output in ``lock`` as path -> md5 (what a push has to send)."""
    if not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages") or {}
    return {
        str(out["path"]): str(out.get("md5", ""))
        for stage in stages.values()
        for out in (stage or {}).get("outs") or []
        if isinstance(out, dict) and "path" in out
    }
