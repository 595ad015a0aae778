"""DVC around a flow run in a worker's clone: fetch missing inputs, publish the lock file.

A worker's clone has what git has: ``*.dvc`` pointers for the raw inputs and, once a run
has been recorded, ``dvc.lock``; the files themselves live in the DVC remote (S3 in
docs/scaling.md). Before ingest the flow calls ``pull_inputs``: the ``.dvc``-tracked files
that are missing here are pulled (present ones, even locally edited, are left alone).
After ``dvc commit`` + ``dvc push`` the flow calls ``publish_lock``: with
``SEQ2SEQ_DVC_GIT_PUSH=true`` in the worker's environment, ``dvc.lock`` is committed and
pushed to the clone's upstream, so another clone can ``git pull && dvc pull`` exactly the
data of that run. Off by default: a laptop run does not write to git.

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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from seq2seq_core.runtime.files import write_json

GIT_PUSH_ENV = "SEQ2SEQ_DVC_GIT_PUSH"
# A `dvc push` that failed, for the next run to retry (relative: the clone's ignored .state/).
PENDING_PUSH = Path(".state") / "pending-push.json"


class DvcPullError(RuntimeError):
    """`dvc pull` of the flow's inputs failed; the message carries DVC's error."""


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


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
    """Commit ``dvc.lock`` and push it to the upstream when ``SEQ2SEQ_DVC_GIT_PUSH`` is
    true; returns the new commit, or None. The flow calls it only after its `dvc push`
    succeeded, so a published lock never names missing data. Failures are logged, not
    raised: the model is registered by then."""
    if os.environ.get(GIT_PUSH_ENV, "").strip().lower() not in ("1", "true", "yes"):
        return None
    if not Path("dvc.lock").is_file():
        return None
    if not _run(["git", "status", "--porcelain", "--", "dvc.lock"]).stdout.strip():
        logger.info("dvc.lock unchanged: nothing to publish")
        return None
    message = f"dvc.lock: outputs of flow run {flow_run_id or '(no id)'}"
    for cmd in (["git", "add", "dvc.lock"],
                ["git", "commit", "--quiet", "-m", message, "--", "dvc.lock"],
                ["git", "push", "--quiet", "origin", "HEAD"]):  # fmt: skip
        proc = _run(cmd)
        if proc.returncode != 0:
            logger.warning("publishing dvc.lock: git %s failed: %s", cmd[1], proc.stderr[-500:])
            return None
    commit = _run(["git", "rev-parse", "HEAD"]).stdout.strip()
    logger.info("published dvc.lock as git commit %s", commit)
    return commit


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
