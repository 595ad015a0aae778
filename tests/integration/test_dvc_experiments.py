"""A parameter sweep as DVC users run one: `dvc exp run --queue` twice, `dvc queue start -j
2`, `dvc exp show`, `dvc exp apply` and `dvc push`, in a temporary git repository.

Each queued experiment runs in a copy under `.dvc/tmp/exps/` that DVC deletes afterwards;
what it registered must be in the workspace's registry, made by the copy's own code.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from flows.dvc_experiment import EXP_BASELINE_TAG, EXP_NAME_TAG
from flows.freshness import code_digest
from flows.lineage import CODE_TAG
from tests.support import dvc_git_repo, run_in, tiny_params

pytestmark = pytest.mark.integration

DVC = [sys.executable, "-m", "dvc"]
LOG_LINES = Path("seq2seq_core") / "training" / "log_lines.py"
EPOCH_WHERE = 'where = f"epoch {epoch}/{max_epochs}"'
MARKER = "EXP-MARKER-7f3a"
QUEUE_TIMEOUT_S = 300
BOTH = ("seed1", "seed2-marked")
STAGES = ("ingest", "vocab", "train", "evaluate", "register")


def mark_epoch_lines(repo: Path) -> None:
    """An uncommitted edit of a training module: every epoch line starts with MARKER."""
    path = repo / LOG_LINES
    source = path.read_text(encoding="utf-8")
    assert EPOCH_WHERE in source
    marked = f'where = f"{MARKER} epoch {{epoch}}/{{max_epochs}}"'
    path.write_text(source.replace(EPOCH_WHERE, marked), encoding="utf-8")


def wait_for_queue(repo: Path, names: list[str]) -> None:
    """Until every experiment in ``names`` has succeeded; a failed one fails with its log."""
    deadline = time.monotonic() + QUEUE_TIMEOUT_S
    while True:
        status = run_in([*DVC, "queue", "status"], repo)
        rows = {line.split()[1]: line for line in status.splitlines()[1:] if len(line.split()) > 2}
        for name in names:
            if "Failed" in rows.get(name, ""):
                logs = run_in([*DVC, "queue", "logs", name], repo, check=False)
                pytest.fail(f"experiment {name} failed:\n{logs}")
        if all("Success" in rows.get(name, "") for name in names):
            return
        assert time.monotonic() < deadline, f"queue still busy after {QUEUE_TIMEOUT_S}s:\n{status}"
        time.sleep(2)


def experiments_shown(repo: Path) -> dict[str, dict[str, Any]]:
    """`dvc exp show --json`: each named experiment's data (params, metrics)."""
    found: dict[str, dict[str, Any]] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("name") and isinstance(node.get("data"), dict):
                found[node["name"]] = node["data"]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(run_in([*DVC, "exp", "show", "--json"], repo)))
    return found


def metric(data: dict[str, Any], file: str) -> dict[str, Any]:
    return data["metrics"][file]["data"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two queued experiments (seeds 1 and 2, the second with MARKER in its code), run by
    `dvc queue start -j 2`; the workspace is back at the baseline commit, clean."""
    tmp = tmp_path_factory.mktemp("sweep")
    repo = dvc_git_repo(tmp / "repo", tiny_params(), remote=tmp / "remote")
    clean_digest = code_digest(repo)
    run_in([*DVC, "exp", "run", "--queue", "-S", "train.seed=1", "-n", "seed1"], repo)
    mark_epoch_lines(repo)
    marked_digest = code_digest(repo)
    run_in([*DVC, "exp", "run", "--queue", "-S", "train.seed=2", "-n", "seed2-marked"], repo)
    run_in(["git", "checkout", "--", str(LOG_LINES)], repo)
    start = time.monotonic()
    run_in([*DVC, "queue", "start", "-j", "2"], repo)
    try:
        wait_for_queue(repo, list(BOTH))
        seconds = time.monotonic() - start
        print(f"\n2-experiment sweep (dvc queue start -j 2 to both done): {seconds:.0f} s")
        yield {
            "repo": repo,
            "remote": tmp / "remote",
            "clean_digest": clean_digest,
            "marked_digest": marked_digest,
            "baseline": run_in(["git", "rev-parse", "HEAD"], repo).strip(),
        }
    finally:
        run_in([*DVC, "queue", "stop"], repo, check=False)


def test_queued_experiments_show_their_metrics(swept: dict[str, Any]) -> None:
    shown = experiments_shown(swept["repo"])
    for name, seed in zip(BOTH, (1, 2), strict=True):
        data = shown[name]
        assert data["params"]["params.yaml"]["data"]["train"]["seed"] == seed
        test = metric(data, "reports/metrics.json")["test"]
        assert isinstance(test["bleu"], float) and isinstance(test["chrf"], float)
        trained = metric(data, "reports/train.json")
        assert trained["epochs"] == 2 and trained["steps"] > 0
    # Different seeds train different models (two epochs of a tiny model: the losses).
    losses = {metric(shown[n], "reports/train.json")["best_valid_loss"] for n in BOTH}
    assert len(losses) == 2


def test_queued_experiments_register_into_the_workspace_with_their_own_code(
    swept: dict[str, Any],
) -> None:
    repo = swept["repo"]
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    versions = client.search_model_versions("name = 'seq2seq-translator'")
    by_exp = {mv.tags.get(EXP_NAME_TAG): mv for mv in versions}
    assert set(by_exp) == {"seed1", "seed2-marked"}
    for mv in versions:
        assert mv.tags["git.commit"] == swept["baseline"] == mv.tags[EXP_BASELINE_TAG]
    # The code digest is that of the code each copy ran: the marked one for seed2-marked.
    assert by_exp["seed1"].tags[CODE_TAG] == swept["clean_digest"]
    assert by_exp["seed2-marked"].tags[CODE_TAG] == swept["marked_digest"]
    assert swept["clean_digest"] != swept["marked_digest"]
    assert by_exp["seed2-marked"].tags["git.dirty"] == "true"
    # ... and the change shows in that experiment's own output only.
    assert MARKER in run_in([*DVC, "queue", "logs", "seed2-marked"], repo)
    assert MARKER not in run_in([*DVC, "queue", "logs", "seed1"], repo)
    # With SQLite, the two register stages (-j 2) wrote to the store one after the other.
    runs = client.search_runs(
        [client.get_experiment_by_name("seq2seq-pipeline").experiment_id],
        filter_string="attributes.run_name = 'register'",
    )
    assert len(runs) == 2
    first, second = sorted(runs, key=lambda r: r.info.start_time)
    assert first.info.end_time <= second.info.start_time


def test_apply_push_and_code_deps(swept: dict[str, Any]) -> None:
    """The winner applied (its code edit with it) and pushed; then DVC names the stages a
    training-module edit affects: train and after, not ingest or vocab."""
    repo = swept["repo"]
    run_in([*DVC, "exp", "apply", "seed2-marked"], repo)
    assert MARKER in (repo / LOG_LINES).read_text(encoding="utf-8")
    run_in([*DVC, "push"], repo)
    assert any(p.is_file() for p in (swept["remote"]).rglob("*"))
    assert "up to date" in run_in([*DVC, "status"], repo).lower()

    run_in(["git", "checkout", "--", str(LOG_LINES)], repo)  # a training module changes
    status = run_in([*DVC, "status", "--json"], repo)
    # The stages that run seq2seq_core/training: train, and register (the model carries
    # all of seq2seq_core); evaluate follows when train's checkpoints change, which a
    # log-line edit of the same seed's training does not: DVC skips it.
    assert json.loads(status) == {
        "train": [{"changed deps": {"seq2seq_core/training": "modified"}}],
        "register": [{"changed deps": {"seq2seq_core": "modified"}}],
    }, status
    repro = run_in([*DVC, "repro"], repo)
    ran = {stage for stage in STAGES if f"Running stage '{stage}'" in repro}
    assert ran == {"train", "register"}, repro
    assert "Stage 'evaluate' didn't change" in repro
