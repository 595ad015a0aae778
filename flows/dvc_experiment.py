"""A stage run inside a DVC experiment: the workspace it belongs to, its name, and one
writer at a time on a SQLite store.

`dvc exp run --queue` + `dvc queue start -j N` (and `dvc exp run --temp`) run each
experiment in a copy of the repo under `<workspace>/.dvc/tmp/exps/`, which is deleted once
DVC has saved the experiment as a git ref. What a stage tracks and registers must outlive
the copy, so the MLflow store of a copy is its workspace's (`mlflow.db`, `mlartifacts/`):
where `make run`, the MLflow UI, the gate and `train.init_from=champion` look. DVC tells a
stage command its workspace (`DVC_ROOT`), its experiment's name (`DVC_EXP_NAME`) and the
commit it started from (`DVC_EXP_BASELINE_REV`); a command started by hand in a copy finds
its workspace from the path.

SQLite takes one writer at a time, and two experiments registering at once failed with
"database is locked". Every stage command that writes to a SQLite store holds
`mlflow.db.writer.lock` beside the database while it does (the register stage, and a warm
start's registry download), so `-j 2` runs ingest, vocab, train and evaluate side by side
and registers one experiment after the other. A tracking server (docs/scaling.md) has no
such limit and takes no lock.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from seq2seq_core.config import PipelineConfig

log = logging.getLogger(__name__)

EXPS_DIR = Path(".dvc") / "tmp" / "exps"
EXP_NAME_TAG = "dvc.exp.name"
EXP_BASELINE_TAG = "dvc.exp.baseline_rev"


def workspace_of(path: Path) -> Path:
    """The workspace whose store ``path`` uses: ``path`` itself, or, for an experiment's
    copy under ``<workspace>/.dvc/tmp/exps/``, that workspace."""
    path = Path(path).resolve()
    env_root = os.environ.get("DVC_ROOT", "").strip()
    if env_root:  # set by DVC for every stage command: the parent repo of a copy
        root = Path(env_root).resolve()
        if path.is_relative_to(root / EXPS_DIR):
            return root
    for parent in path.parents:
        if parent.name == EXPS_DIR.name and parent.parent.parts[-2:] == EXPS_DIR.parts[:2]:
            return parent.parent.parent.parent
    return path


def experiment_tags() -> dict[str, str]:
    """The experiment a stage runs in, as tags; {} outside `dvc exp run`."""
    tags = {}
    if name := os.environ.get("DVC_EXP_NAME", "").strip():
        tags[EXP_NAME_TAG] = name
    if baseline := os.environ.get("DVC_EXP_BASELINE_REV", "").strip():
        tags[EXP_BASELINE_TAG] = baseline
    return tags


def writes_to_store(command: str, cfg: PipelineConfig) -> bool:
    """Whether the CLI stage ``command`` writes to (or reads the registry of) the store."""
    warm = cfg.train.init_from.strip() != "none"
    return command == "register" or (warm and command in ("vocab", "train"))


@contextmanager
def store_writer(uri: str) -> Iterator[None]:
    """Hold the one-writer lock of a SQLite store at ``uri`` (nothing for a server)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    path = Path(f"{uri[len('sqlite:///') :]}.writer.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info(
                "waiting for another run writing to %s: SQLite takes one writer at a time; "
                "run parallel experiments against a tracking server (MLFLOW_TRACKING_URI, "
                "docs/scaling.md) to register side by side",
                uri,
            )
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
