"""Where a run and a model version came from, as tags: the git commit (and whether the
tree was dirty), a digest of the code that ran, the DVC experiment's name and baseline
commit (in `dvc exp run`), the dvc.lock hashes of the prepared data and vocabulary,
digests of params.yaml and of the resolved config, the Prefect flow run, library versions,
device.

With these a user gets a version's data back: `git checkout <git.commit>` then
`dvc checkout` (or `dvc pull`) restores files whose md5 equal the `dvc.*.md5` tags
(docs/lineage.md).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml

from flows.dvc_experiment import experiment_tags
from flows.freshness import code_digest
from seq2seq_core.config import PipelineConfig

# dvc.lock outputs recorded as lineage: the data a model was trained and tested on.
LINEAGE_OUTS = ("ingest", "vocab")
# The code that ran (flows/freshness.py: seq2seq_core and flows, uncommitted edits included).
CODE_TAG = "code.sha256"


def lineage_tags(cfg: PipelineConfig | None = None, cwd: Path | None = None) -> dict[str, str]:
    import mlflow

    root = Path(cwd or Path.cwd())
    tags = {
        CODE_TAG: code_digest(),
        **experiment_tags(),
        "python.version": platform.python_version(),
        "torch.version": dist_version("torch"),
        "mlflow.version": mlflow.__version__,
        "host.device": device_name(),
    }
    if cfg is not None:
        canonical = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
        tags["config.sha256"] = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    params = root / "params.yaml"
    if params.is_file():
        tags["params.sha256"] = hashlib.sha256(params.read_bytes()).hexdigest()
    return {**tags, **dvc_lock_tags(root), **git_tags(root)}


def dvc_lock_tags(root: Path) -> dict[str, str]:
    """`dvc.<path>.md5` for every out of the ingest and vocab stages in dvc.lock (a
    directory's md5 is DVC's `.dir` hash); {} without a dvc.lock."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return {}
    try:
        stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
    except yaml.YAMLError:
        return {}
    tags = {}
    for stage in LINEAGE_OUTS:
        for out in (stages.get(stage) or {}).get("outs", []):
            if isinstance(out, dict) and out.get("md5") and out.get("path"):
                tags[f"dvc.{out['path']}.md5"] = str(out["md5"])
    return tags


def git_tags(cwd: Path | None = None) -> dict[str, str]:
    """`git.commit` and `git.dirty` (any non-ignored change counts); {} outside git."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=15, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain"))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {
        "git.commit": commit,
        "git.dirty": str(dirty).lower(),
        "mlflow.source.git.commit": commit,
    }


def dist_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return "cpu"


def file_md5(path: Path) -> str:
    """DVC's md5 of a single file (for checking a restored file against its tag)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def os_user() -> str:
    """The login name of whoever runs this process ("unknown" in a container without one)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def operator_identity() -> str:
    """``user@host``: who moved an alias or attested a version, for the registry's record."""
    return f"{os_user()}@{os.uname().nodename}"
