"""Faults in promotion (docs/faults.md): the register step killed with SIGKILL after its
version exists and after the alias moved, then retried (one version per run, one champion
chain, `seq2seq rollback` back to the champion before the last promotion); and two
promoters on two "machines" (separate temp folders) against one PostgreSQL-backed MLflow
server, which the registry lock serialises and whose waiter names the holder."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from flows import alias_moves, registry, tracking
from seq2seq_core.config import PipelineConfig
from tests.flows.test_registry import WORSE, cfg_for
from tests.services import Stack, pg_bin
from tests.support import POOR, REFS, REPO, TrainedWorkspace, copy_model

pytestmark = [pytest.mark.faults, pytest.mark.integration]

MODEL = "seq2seq-translator"  # the registered model the stack's worker may edit
BETTER = [*REFS[:10], *POOR[10:]]
HYPS = {"worse": WORSE, "poor": POOR, "better": BETTER, "refs": REFS}

# One register step as a process: the first attempt logs the model in a new MLflow run and
# saves (run, model URI, metrics) to `state`; a retry (state exists) registers the same
# run again, as Prefect's task retry does. Env TEST_HOLD_LOCK_S makes the gate slow (it
# runs under the registry lock) after touching `holding`; TEST_WAIT_FOR makes the step
# wait for that file before it registers.
REGISTER_STEP = textwrap.dedent(
    """
    import json, logging, os, sys, time
    from dataclasses import asdict
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    from flows import registry, tracking
    from seq2seq_core.evaluation.metrics import score_translations
    from tests.faults import test_promotion_faults as f
    root, kind, state = Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
    tracking.configure_tracking(root)
    cfg = f.cfg_for(os.environ.get("TEST_MODEL", f.MODEL))
    if float(os.environ.get("TEST_HOLD_LOCK_S", "0")):
        judge = registry._judge
        def slow_judge(*args, **kwargs):
            (state.parent / "holding").touch()
            time.sleep(float(os.environ["TEST_HOLD_LOCK_S"]))
            return judge(*args, **kwargs)
        registry._judge = slow_judge

    def register(attempt):
        wait_for = os.environ.get("TEST_WAIT_FOR")
        while wait_for and not Path(wait_for).exists():
            time.sleep(0.05)
        result = registry.register_and_promote(cfg, trigger="fault-test", **attempt)
        print("RESULT " + json.dumps(asdict(result)))

    if state.exists():
        register(json.loads(state.read_text()))
    else:
        hyps = f.HYPS[kind]
        metrics = {"test": {**score_translations(hyps, f.REFS), "test_set_sha256": "c" * 64}}
        eval_dir = state.parent / f"{state.stem}-eval"
        eval_dir.mkdir()
        (eval_dir / "test_hypotheses.txt").write_text("\\n".join(hyps) + "\\n")
        (eval_dir / "test_references.txt").write_text("\\n".join(f.REFS) + "\\n")
        with tracking.pipeline_run(cfg, run_name=kind) as run:
            uri = tracking.log_translator_model(
                checkpoint=root / "ckpt" / "best.pt", vocab_dir=root / "vocab", cfg=cfg,
                metrics=metrics, eval_files=sorted(eval_dir.iterdir()))
            attempt = {"model_uri": uri, "run_id": run.info.run_id, "metrics": metrics}
            state.write_text(json.dumps(attempt))
            register(attempt)
    """
)


def start_step(root: Path, kind: str, state: Path, env: dict[str, str]) -> subprocess.Popen:
    script = state.parent / "register_step.py"
    if not script.exists():
        script.write_text(REGISTER_STEP, encoding="utf-8")
    return subprocess.Popen(
        [sys.executable, str(script), str(REPO), str(root), kind, str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def run_step(root: Path, kind: str, state: Path, env: dict[str, str], kill_at: str = ""):
    """The step to its end: (return code, last stdout line as JSON or None, stderr)."""
    env = {**env, alias_moves.FAULT_KILL_ENV: kill_at} if kill_at else env
    proc = start_step(root, kind, state, env)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, result_of(out), err


def result_of(stdout: str) -> dict[str, Any] | None:
    """The step's RegistrationResult (other libraries print to stdout too)."""
    found = [line[len("RESULT ") :] for line in stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(found[-1]) if found else None


def seq2seq(args: list[str], cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, check=False, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def champion_chain(name: str) -> list[tuple[str | None, str]]:
    return [(m["from"], m["to"]) for m in registry.history(name) if m["alias"] == "champion"]


def assert_one_chain(chain: list[tuple[str | None, str]]) -> None:
    assert chain[0][0] is None and all(a[1] == b[0] for a, b in itertools.pairwise(chain)), chain


@pytest.fixture
def sqlite_store(tmp_path: Path, trained_workspace: TrainedWorkspace, monkeypatch):
    root = tmp_path / "store"
    root.mkdir()
    copy_model(trained_workspace, root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    previous = mlflow.get_tracking_uri()
    uri = tracking.configure_tracking(root)
    yield root, uri
    mlflow.set_tracking_uri(previous)


def write_params(cfg: PipelineConfig, where: Path) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    (where / "params.yaml").write_text(yaml.safe_dump(cfg.to_dict()), encoding="utf-8")
    return where


def test_killed_register_step_is_retried_into_one_chain_and_rolls_back(
    sqlite_store: tuple[Path, str], tmp_path: Path
) -> None:
    root, uri = sqlite_store
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": uri}
    client = MlflowClient()
    code, first, err = run_step(root, "worse", tmp_path / "run1.json", env)
    assert code == 0 and first["promoted"] and first["version"] == 1, err[-2000:]

    # Killed right after its version exists: no alias, no decision; the retry finishes it.
    run2 = tmp_path / "run2.json"
    code, _, err = run_step(root, "poor", run2, env, kill_at="after_version")
    assert code == -signal.SIGKILL, err[-2000:]
    state = registry.registration_state(MODEL, json.loads(run2.read_text())["run_id"])
    assert (state["version"], state["aliases"], state["champion"]) == ("2", [], "1")
    code, second, err = run_step(root, "poor", run2, env)
    assert code == 0 and (second["version"], second["promoted"]) == (2, True), err[-2000:]

    # Killed right after `champion` moved, before the old champion and the history heard of it.
    run3 = tmp_path / "run3.json"
    code, _, err = run_step(root, "refs", run3, env, kill_at="after_alias")
    assert code == -signal.SIGKILL, err[-2000:]
    state = registry.registration_state(MODEL, json.loads(run3.read_text())["run_id"])
    assert (state["version"], state["champion"]) == ("3", "3")
    assert state["pending_move"]["from"] == "2" and state["pending_move"]["to"] == "3"
    assert "promotion.replaced_by" not in client.get_model_version(MODEL, "2").tags
    code, third, err = run_step(root, "refs", run3, env)
    assert code == 0 and (third["version"], third["promoted"]) == (3, True), err[-2000:]
    assert third["tags"]["promotion.previous_champion"] == "2"  # not itself
    assert "finishing the promotion of champion v2 -> v3" in err
    assert registry.pending_move(client, MODEL) is None
    assert client.get_model_version(MODEL, "2").tags["promotion.replaced_by"] == "3"

    versions = client.search_model_versions(f"name = '{MODEL}'")
    runs = [v.run_id for v in versions]
    assert len(versions) == 3 and len(set(runs)) == 3  # one version per run
    assert champion_chain(MODEL) == [(None, "1"), ("1", "2"), ("2", "3")]

    # `seq2seq rollback` returns to the champion before the last promotion.
    cli_dir = write_params(cfg_for(MODEL), tmp_path / "cli")
    back = seq2seq(["rollback"], cli_dir, env)
    assert (back["version"], back["reason"]) == (2, "rollback from v3 to v2")

    # A forced promotion killed after its alias moved, then a rollback straight away (no
    # retry): the rollback finishes the promotion first, then undoes it.
    killed = subprocess.run(
        [sys.executable, "-m", "flows.cli", "promote", "--version", "1", "--force"],
        cwd=cli_dir, env={**env, alias_moves.FAULT_KILL_ENV: "after_alias"},
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    back = seq2seq(["rollback"], cli_dir, env)
    assert (back["version"], back["reason"]) == (2, "rollback from v1 to v2")
    chain = champion_chain(MODEL)
    assert chain == [(None, "1"), ("1", "2"), ("2", "3"), ("3", "2"), ("2", "1"), ("1", "2")]
    assert_one_chain(chain)
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 3


@pytest.fixture(scope="module")
def postgres_stack(tmp_path_factory: pytest.TempPathFactory):
    """PostgreSQL (MLflow's backend, and a `locks` database for the registry lock), the
    object store and the MLflow + Prefect servers."""
    if pg_bin() is None:
        pytest.skip("PostgreSQL server binaries not found (Debian: apt-get install postgresql)")
    with Stack(tmp_path_factory.mktemp("stack")) as stack:
        stack.start_postgres(
            {"mlflow": ("mlflow", "mlflow_auth"), "prefect": ("prefect",), "locks": ("locks",)}
        )
        stack.start_object_store()
        stack.start_servers()
        yield stack


LOCKS = {
    # kind -> (what the waiter's log calls the lock, the model: one chain per kind)
    "postgres": ("registry lock (PostgreSQL advisory lock)", MODEL),
    "prefect": ("registry lock (Prefect limit 'seq2seq-registry')", f"{MODEL}-gcl"),
}


@pytest.mark.parametrize("kind", sorted(LOCKS))
def test_two_machines_promote_one_at_a_time_and_the_waiter_names_the_holder(
    postgres_stack: Stack, tmp_path: Path, trained_workspace: TrainedWorkspace, kind: str
) -> None:
    """Promoter A holds the registry lock (its gate is slowed to 8 s); B, on another
    "machine" (its own TMPDIR: the old per-machine lock file would not have stopped it),
    asks for the lock meanwhile: it waits, logs A as the holder, then decides against A's
    champion, not against v1. Without the shared lock both beat v1 and both promote.
    `postgres`: SEQ2SEQ_REGISTRY_LOCK_URL names a database on the server; `prefect`: no lock
    URL, so the worker's PREFECT_API_URL gives Prefect's global concurrency limit."""
    stack = postgres_stack
    lock_name, model = LOCKS[kind]
    root = tmp_path / "model"
    root.mkdir()
    copy_model(trained_workspace, root)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))},
        **stack.role_env("worker"),
        "PYTHONPATH": str(REPO),
        "TEST_MODEL": model,
    }
    if kind == "postgres":
        env["SEQ2SEQ_REGISTRY_LOCK_URL"] = stack.database_url("locks")
        env["PGPASSFILE"] = str(stack.pgpass("locks"))
    code, first, err = run_step(root, "poor", tmp_path / "v1.json", env)
    assert code == 0 and first["promoted"], err[-3000:]
    machines = {}
    for name in ("a", "b"):
        (tmp_path / f"tmp-{name}").mkdir()
        machines[name] = {**env, "TMPDIR": str(tmp_path / f"tmp-{name}")}
    holding = tmp_path / "holding"
    env_a = {**machines["a"], "TEST_HOLD_LOCK_S": "8"}
    env_b = {**machines["b"], "TEST_WAIT_FOR": str(holding)}
    t0 = time.monotonic()
    a = start_step(root, "refs", tmp_path / "a.json", env_a)
    b = start_step(root, "better", tmp_path / "b.json", env_b)
    out_a, err_a = a.communicate(timeout=400)
    out_b, err_b = b.communicate(timeout=400)
    assert a.returncode == 0, err_a[-3000:]
    assert b.returncode == 0, err_b[-3000:]
    result_a, result_b = result_of(out_a), result_of(out_b)
    assert result_a["promoted"] and result_a["tags"]["promotion.previous_champion"] == "1"
    assert not result_b["promoted"]
    assert result_b["tags"]["promotion.previous_champion"] == str(result_a["version"])
    waited = [line for line in err_b.splitlines() if f"another run holds the {lock_name}" in line]
    assert waited and f"{lock_name}: pid {a.pid} on " in waited[0], err_b[-3000:]
    assert "register_step.py" in waited[0]  # the holder's command
    assert f"{lock_name} acquired" in err_b

    with pytest.MonkeyPatch.context() as mp:
        for key, value in stack.role_env("worker").items():
            mp.setenv(key, value)
        mlflow.set_tracking_uri(stack.mlflow_url)
        chain = champion_chain(model)
        champion = MlflowClient().get_model_version_by_alias(model, "champion").version
    v1, va = str(first["version"]), str(result_a["version"])
    assert chain == [(None, v1), (v1, va)]
    assert champion == va
    print(f"two promoters ({kind} lock): {time.monotonic() - t0:.1f} s")
