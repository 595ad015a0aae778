"""A real `dvc repro` of dvc.yaml in a temporary git repository, on tiny parameters."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, tiny_params

pytestmark = pytest.mark.integration


def _run(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def test_repro_then_nothing_to_do_then_only_train_onwards(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(REPO / "dvc.yaml", repo / "dvc.yaml")
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    dvc = [sys.executable, "-m", "dvc"]
    _run(["git", "init", "-q"], repo)
    _run(["git", "config", "user.email", "ci@example.invalid"], repo)
    _run(["git", "config", "user.name", "ci"], repo)
    _run([*dvc, "init", "-q"], repo)
    _run([*dvc, "config", "core.analytics", "false"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "baseline"], repo)

    first = _run([*dvc, "repro"], repo)
    for stage in ("ingest", "vocab", "train", "evaluate", "register"):
        assert f"Running stage '{stage}'" in first
    assert (repo / "reports" / "metrics.json").exists()
    assert (repo / "dvc.lock").exists()

    second = _run([*dvc, "repro"], repo)
    assert "Running stage" not in second
    assert "up to date" in second

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["lr"] = 0.003  # a new fingerprint: training starts over
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    third = _run([*dvc, "repro"], repo)
    assert "Running stage 'ingest'" not in third
    assert "Running stage 'vocab'" not in third
    for stage in ("train", "evaluate", "register"):
        assert f"Running stage '{stage}'" in third
