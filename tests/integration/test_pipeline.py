"""The whole Prefect flow against a real (temporary) Prefect server and MLflow on SQLite."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from flows.lineage import file_md5
from tests.support import GENESIS_TSV, copy_dvc_project

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def test_flow_runs_all_stages_then_has_nothing_to_do(
    prefect_server, tiny_params_file: Path, monkeypatch: pytest.MonkeyPatch
):
    from mlflow import MlflowClient

    from flows.pipeline import training_pipeline
    from flows.tracking import configure_tracking

    # A tiny run lasts a few seconds: sample CPU and memory often enough to see them.
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
    first = training_pipeline(params_path=str(tiny_params_file), dvc_commit=False)

    assert first["status"] == "registered"
    assert set(first["seconds"]) == {"ingest", "vocab", "train", "evaluate", "register"}
    assert first["data"]["counts"]["train"] > 150
    metrics = json.loads(Path("reports/metrics.json").read_text())
    assert metrics["test"]["signatures"]["bleu"].startswith("nrefs:1|")
    assert Path("reports/plots/loss.png").stat().st_size > 1000
    reg = first["registration"]
    assert str(reg["version"]) == "1"
    assert set(reg["aliases"]) == {"challenger", "champion"}

    configure_tracking(Path.cwd())
    client = MlflowClient()
    run = client.get_run(first["mlflow_run_id"])
    assert run.data.params["model.hidden_size"] == "32"
    assert "test/bleu" in run.data.metrics
    assert run.data.tags["prefect.flow_run_id"]
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) > 0
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(
        run.data.metrics
    )  # MLflow's system metrics, sampled during the run
    assert first["reused"] == {"ingest": False, "vocab": False}
    # Cached task results live in the run's project directory, not in ~/.prefect.
    assert any(p.is_file() for p in Path(".state/prefect-results").iterdir())
    history = json.loads(Path("models/checkpoints/history.json").read_text())
    stamps = {p: p.stat().st_mtime_ns for p in (Path("data/prepared/train.parquet"),
                                                Path("data/vocab/tokenizer.json"),
                                                Path("models/checkpoints/best.pt"))}  # fmt: skip

    # Nothing changed: nothing trained, nothing registered, and it says with which version.
    start = time.monotonic()
    second = training_pipeline(params_path=str(tiny_params_file), dvc_commit=False)
    assert time.monotonic() - start < 30
    assert second["status"] == "up_to_date" and second["version"] == 1
    assert second["message"].startswith("up to date with version 1 of ")
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    name = reg["model_name"]
    assert [int(v.version) for v in client.search_model_versions(f"name = '{name}'")] == [1]

    # A larger max_epochs is a change: ingest and vocab are reused, training continues
    # from last.pt (epochs 1-2 are not trained again) and the gate decides on version 2.
    third = training_pipeline(
        params_path=str(tiny_params_file), overrides=["train.max_epochs=3"], dvc_commit=False
    )
    assert third["status"] == "registered" and third["registration"]["version"] == 2
    assert third["reused"] == {"ingest": True, "vocab": True}
    assert third["train"]["epochs"] == 3
    continued = json.loads(Path("models/checkpoints/history.json").read_text())
    assert continued[:2] == history and continued[2]["epoch"] == 3
    decided = client.get_model_version(name, "2").tags
    assert decided["promotion.decision"] in {"promoted", "kept_challenger"}


def test_lineage_follows_the_data_and_a_failure_leaves_the_champion(
    prefect_server, tiny_params_file: Path
):
    import asyncio

    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.pipeline import training_pipeline
    from flows.tracking import configure_tracking

    # A DVC project with a local default remote: a finished run leaves `dvc status` clean
    # and its data pushed (the flow's `dvc commit --force` + `dvc push`).
    copy_dvc_project(Path.cwd(), raw_data=False)  # dvc.yaml lists the code among its deps
    remote = tiny_params_file.parent.parent / f"{tiny_params_file.parent.name}-remote"
    _dvc("init", "--no-scm", "-q")
    _dvc("remote", "add", "-d", "local", str(remote))
    # The user's own corpus in data/raw/ (an ingest dependency in dvc.yaml), 30 pairs
    # short of the fixture until the second run.
    corpus = Path("data/raw/corpus.tsv")
    corpus.parent.mkdir(parents=True)
    lines = GENESIS_TSV.read_text(encoding="utf-8").splitlines(keepends=True)
    corpus.write_text("".join(lines[:-30]), encoding="utf-8")
    params = yaml.safe_load(tiny_params_file.read_text(encoding="utf-8"))
    params["data"]["source"] = str(corpus)
    tiny_params_file.write_text(yaml.safe_dump(params), encoding="utf-8")

    good = training_pipeline(params_path=str(tiny_params_file), dvc_commit=True)
    assert "Data and pipelines are up to date" in _dvc("status")
    assert "in sync" in _dvc("status", "--cloud")
    assert any(p.is_file() for p in remote.rglob("*"))
    name = good["registration"]["model_name"]
    configure_tracking(Path.cwd())
    client = MlflowClient()
    first = _data_lineage(client.get_model_version(name, "1").tags)
    # The first version in a fresh project already carries the hashes of its data, and
    # they are the ones of the files it was trained on.
    assert first == _locked_hashes() and set(first) == set(LINEAGE_TAGS)
    assert first[LINEAGE_TAGS[0]] == file_md5(Path("data/prepared/train.parquet"))

    with corpus.open("a", encoding="utf-8") as f:
        f.writelines(lines[-30:])
    assert "changed deps" in _dvc("status")  # DVC sees the new pairs too
    changed = training_pipeline(params_path=str(tiny_params_file), dvc_commit=True)
    assert changed["registration"]["version"] == 2
    second = _data_lineage(client.get_model_version(name, "2").tags)
    assert second == _locked_hashes()
    assert second[LINEAGE_TAGS[0]] == file_md5(Path("data/prepared/train.parquet"))
    assert second[LINEAGE_TAGS[0]] != first[LINEAGE_TAGS[0]]
    run = client.get_run(changed["mlflow_run_id"])
    assert _data_lineage(run.data.tags) == second  # the run says the same as its version
    # Its dataset inputs carry the same dvc.lock md5s as digests, and name the corpus.
    datasets = {i.dataset.name: i.dataset for i in run.inputs.dataset_inputs}
    assert {n: d.digest for n, d in datasets.items()} == {
        n: second[f"dvc.data/prepared/{n}.parquet.md5"] for n in ("train", "valid", "test")
    }
    assert json.loads(datasets["train"].source) == {
        "uri": "data/prepared/train.parquet", "corpus": str(corpus)
    }  # fmt: skip
    champion = client.get_model_version_by_alias(name, "champion").version

    broken = ["train.max_len=0"]  # passes config checks, then train finds no usable pair
    state = training_pipeline(
        params_path=str(tiny_params_file), overrides=broken, dvc_commit=False,
        return_state=True,
    )  # fmt: skip
    assert state.is_failed()
    assert MlflowClient().get_model_version_by_alias(name, "champion").version == champion

    async def failure_note() -> str:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["pipeline-failure"]))
            )
        return found[-1].data

    note = asyncio.run(failure_note())
    assert "Pipeline failed in stage `train`" in note and "champion` alias was not touched" in note


LINEAGE_TAGS = (
    "dvc.data/prepared/train.parquet.md5",
    "dvc.data/prepared/valid.parquet.md5",
    "dvc.data/prepared/test.parquet.md5",
    "dvc.data/vocab.md5",
)


def _data_lineage(tags: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if k in LINEAGE_TAGS}


def _locked_hashes() -> dict[str, str]:
    stages = yaml.safe_load(Path("dvc.lock").read_text(encoding="utf-8"))["stages"]
    outs = [o for stage in ("ingest", "vocab") for o in stages[stage]["outs"]]
    return {
        f"dvc.{o['path']}.md5": o["md5"] for o in outs if f"dvc.{o['path']}.md5" in LINEAGE_TAGS
    }


def _dvc(*args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def test_two_pipelines_in_one_workspace_take_turns(tiny_params_file: Path) -> None:
    """Started 1 s apart in one clone, the way two terminals or a schedule meeting a manual
    run would: the second waits for the lock, then finds the first's version up to date."""
    from mlflow import MlflowClient

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MLFLOW_"))}
    env |= {
        "PREFECT_HOME": str(Path(".state/prefect").resolve()),
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    seq2seq = str(Path(sys.executable).with_name("seq2seq"))
    command = [seq2seq, "pipeline", "--params", str(tiny_params_file), "--no-dvc-commit"]
    logs = [Path(f"run{i}.log") for i in (1, 2)]
    procs = []
    for log in logs:
        with log.open("w") as out:
            procs.append(subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT))
        time.sleep(1)
    codes = [p.wait(timeout=600) for p in procs]
    outputs = [log.read_text(errors="replace") for log in logs]
    assert codes == [0, 0], "\n-----\n".join(out[-3000:] for out in outputs)
    # Both start Prefect first, so either may reach the lock first.
    winner = 0 if "Registered seq2seq-translator version 1" in outputs[0] else 1
    trained, waited = outputs[winner], outputs[1 - winner]
    assert "Registered seq2seq-translator version 1" in trained
    assert f"pid {procs[winner].pid} on" in waited and "waiting up to" in waited
    assert "Nothing to do: up to date with version 1 of seq2seq-translator" in waited
    store = f"sqlite:///{Path('mlflow.db').resolve()}"  # the one both runs used
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    versions = client.search_model_versions("name = 'seq2seq-translator'")
    assert [int(v.version) for v in versions] == [1]
    scored = client.search_runs(
        [client.get_experiment_by_name("seq2seq-pipeline").experiment_id],
        filter_string="metrics.`test/bleu` >= 0",
    )
    assert len(scored) == 1  # one run trained and evaluated; the other trained nothing


def test_a_killed_run_leaves_a_crash_note(prefect_server, tiny_params_file: Path) -> None:
    """SIGTERM (a cancelled worker, a shutdown) crashes the flow run; its on_crashed hook
    leaves the same `pipeline-failure` artifact an exception does."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.settings import PREFECT_API_URL

    from flows.workspace_lock import workspace_lock

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env |= {"PREFECT_API_URL": PREFECT_API_URL.value(), "MLFLOW_DISABLE_TELEMETRY": "true"}
    seq2seq = str(Path(sys.executable).with_name("seq2seq"))
    log = Path("killed.log")
    with workspace_lock(timeout_min=0), log.open("w") as out:  # the run will wait on it
        proc = subprocess.Popen(
            [seq2seq, "pipeline", "--params", str(tiny_params_file), "--no-dvc-commit"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 180
        while "waiting up to" not in log.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) != 0

    async def notes() -> list[str]:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["pipeline-failure"]))
            )
        return [a.data for a in found]

    crashed = [n for n in asyncio.run(notes()) if "the run crashed" in n]
    assert crashed, log.read_text()[-3000:]
    assert "champion` alias was not touched" in crashed[-1]
