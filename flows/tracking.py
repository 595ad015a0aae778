"""MLflow tracking: the store, one run per pipeline run, training metrics, artifacts and
the pyfunc model. The registry is in flows/registry.py, its gate in flows/gate.py, lineage
tags in flows/lineage.py.

Nothing happens at import. ``configure_tracking`` picks the store (``MLFLOW_TRACKING_URI``
or ``sqlite:///<root>/mlflow.db`` with artifacts in ``<root>/mlartifacts``), then:

    with pipeline_run(cfg, tags={"prefect.flow_run_id": ...}) as run:
        train(..., callbacks=[MlflowTrainCallback(run.info.run_id)])
        log_files([...], "reports")
        uri = log_translator_model(checkpoint=..., vocab_dir=..., cfg=cfg, metrics=metrics)
        registry.register_and_promote(cfg, model_uri=uri, run_id=run.info.run_id, ...)

MLflow keeps its active run per thread, and a Prefect task may run in another thread than
its flow; so every call that writes to a run takes an explicit ``run_id`` and falls back to
this thread's active run, then to the run ``pipeline_run`` opened in this process.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import DatasetInput, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from flows.dvc_experiment import workspace_of
from flows.gate import TEST_BLEU_TAG, TEST_SET_TAG, read_test_scores
from flows.lineage import dist_version, lineage_tags
from flows.metric_spool import MetricSpool
from seq2seq_core.config import PipelineConfig

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "seq2seq-pipeline"
MODEL_NAME_IN_RUN = "translator"
EXAMPLE_SRC = "Im Anfang schuf Gott die Himmel und die Erde."
# Distributions the served model imports (seq2seq_core travels as code with the model).
MODEL_REQUIREMENTS = ("mlflow", "torch", "sentencepiece", "pandas", "pyyaml")
SYSTEM_METRICS_EVERY_S = 5
# Step metrics waiting for the tracking server (flows/metric_spool.py), one file a run.
SPOOL_DIR = Path(".state") / "metric-spool"
# End-of-training logging waits this long for a down tracking server (a restart takes a
# minute or two); SEQ2SEQ_TRACKING_WAIT_S overrides it.
TRACKING_WAIT_S = 15 * 60
TRACKING_WAIT_ENV = "SEQ2SEQ_TRACKING_WAIT_S"
HEALTH_TIMEOUT_S = 3.0
# The run `pipeline_run` opened in this process, for callers in other threads.
_pipeline_run_id: str | None = None


class NoActiveRunError(RuntimeError):
    """A logging call found neither a run id, an active run, nor an open pipeline run."""


# --------------------------------------------------------------------------- store


def configure_tracking(root: Path | None = None, experiment: str = DEFAULT_EXPERIMENT) -> str:
    """Point MLflow at the store and select ``experiment``; returns the tracking URI.

    ``MLFLOW_TRACKING_URI`` wins; otherwise ``sqlite:///<root>/mlflow.db`` (root defaults
    to the working directory; a DVC experiment's copy stands for its workspace) with the
    experiment's artifacts in ``<root>/mlartifacts``.
    """
    # tqdm bars for every artifact download are noise in `make run` and in logs.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if "MLFLOW_DISABLE_TELEMETRY" not in os.environ:
        os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
        # MLflow starts its telemetry client at import; this re-reads the setting.
        from mlflow.telemetry import set_telemetry_client

        set_telemetry_client()
    root = workspace_of(Path(root or Path.cwd()))  # an experiment's copy: its workspace
    env_uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    artifact_location = None if env_uri else (root / "mlartifacts").as_uri()
    # The first process to touch a fresh SQLite store creates its schema; a second one
    # doing the same at once failed with "table runs already exists".
    with store_lock(uri, "schema"):
        experiment_id = _experiment_id(MlflowClient(uri), experiment, artifact_location)
    mlflow.set_experiment(experiment_id=experiment_id)
    return uri


def tracking_uri(root: Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI``, else the SQLite store of ``root``'s workspace (default: the
    working directory's; a DVC experiment's copy uses its workspace's, flows/dvc_experiment.py)."""
    env_uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return env_uri or f"sqlite:///{workspace_of(Path(root or Path.cwd())) / 'mlflow.db'}"


@contextmanager
def store_lock(uri: str, purpose: str) -> Iterator[None]:
    """An exclusive lock shared by every process using the store at ``uri``: next to a
    SQLite database (``mlflow.db.<purpose>.lock``), else one per machine in the temp dir."""
    if uri.startswith("sqlite:///"):
        path = Path(f"{uri[len('sqlite:///') :]}.{purpose}.lock")
    else:
        digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
        path = Path(tempfile.gettempdir()) / f"seq2seq-mlflow-{purpose}-{digest}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _experiment_id(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException as exc:  # another process created it first
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
        return client.get_experiment_by_name(name).experiment_id


def _resolve_run_id(run_id: str | None) -> str:
    if run_id:
        return run_id
    active = mlflow.active_run()
    if active is not None:
        return active.info.run_id
    if _pipeline_run_id is not None:
        return _pipeline_run_id
    raise NoActiveRunError("no MLflow run: open tracking.pipeline_run(...) or pass run_id")


# --------------------------------------------------------------------------- runs


@contextmanager
def pipeline_run(
    cfg: PipelineConfig, *, run_name: str | None = None, tags: Mapping[str, Any] | None = None
) -> Iterator[mlflow.ActiveRun]:
    """One MLflow run for one pipeline run: every parameter, lineage tags, plus ``tags``.

    Ends the run FINISHED, or FAILED when the body raises. Call ``configure_tracking``
    first."""
    global _pipeline_run_id
    run_tags = {**lineage_tags(cfg), **{k: str(v) for k, v in (tags or {}).items() if v}}
    # CPU, memory and disk every few seconds as `system/*` metrics (psutil), so a slow or
    # swapping night shows in the run next to its loss curve.
    if not os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"):  # a user's choice wins
        mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_EVERY_S)
    with mlflow.start_run(run_name=run_name, tags=run_tags, log_system_metrics=True) as run:
        previous, _pipeline_run_id = _pipeline_run_id, run.info.run_id
        try:
            params = [Param(key, _param_value(v)) for key, v in cfg.flat().items()]
            client = MlflowClient()
            for start in range(0, len(params), 100):  # MLflow takes <= 100 params a batch
                client.log_batch(run.info.run_id, params=params[start : start + 100])
            yield run
        finally:
            _pipeline_run_id = previous


def set_tags(tags: Mapping[str, str], *, run_id: str | None = None) -> None:
    """Set (or overwrite) tags on the run, e.g. lineage read after the run started."""
    client, rid = MlflowClient(), _resolve_run_id(run_id)
    client.log_batch(rid, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_inputs(datasets: list[DatasetInput], *, run_id: str | None = None) -> None:
    """Log dataset inputs to the run (``flows.dataset_inputs`` builds them)."""
    MlflowClient().log_inputs(_resolve_run_id(run_id), datasets=datasets)


def _param_value(value: Any) -> str:
    return "None" if value is None else str(value)


def log_metrics(
    metrics: Mapping[str, float], *, step: int | None = None, run_id: str | None = None
) -> None:
    """Log a few scalar metrics (e.g. ``test/bleu``) in one batch."""
    now = _now_ms()
    batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
    _log_metric_batch(MlflowClient(), _resolve_run_id(run_id), batch)


def _log_metric_batch(client: MlflowClient, run_id: str, metrics: list[Metric]) -> None:
    for start in range(0, len(metrics), 1000):  # MLflow takes <= 1000 metrics a batch
        client.log_batch(run_id, metrics=metrics[start : start + 1000])


def _now_ms() -> int:
    return int(time.time() * 1000)


class MlflowTrainCallback:
    """``seq2seq_core.training.loop.TrainCallback`` that logs to one run by id (thread-safe
    enough for a Prefect task: it never touches MLflow's per-thread active run).

    Step metrics go out as ``train/<name>`` with ``step=`` the global step, epoch metrics
    as ``epoch/<name>`` with ``step=`` the epoch. Neither waits for the server: they are
    kept in a ``MetricSpool`` (memory + ``.state/metric-spool/<run id>.jsonl``) and sent in
    the background every ``flush_every_steps`` steps or ``flush_every_s`` seconds and at
    each epoch end, so a tracking-server outage costs no training. ``close()`` after
    training sends the rest, waiting up to ``TRACKING_WAIT_S`` for the server.
    """

    def __init__(
        self,
        run_id: str | None = None,
        *,
        flush_every_steps: int = 50,
        flush_every_s: float = 10.0,
        spool_dir: Path = SPOOL_DIR,
    ) -> None:
        self.run_id = _resolve_run_id(run_id)
        self.flush_every_steps = flush_every_steps
        self.flush_every_s = flush_every_s
        client = MlflowClient()  # binds the tracking URI configured now
        uri = client.tracking_uri

        def send(batch: list[Metric]) -> None:
            client.log_batch(self.run_id, metrics=batch)

        self.spool = MetricSpool(
            Path(spool_dir) / f"{self.run_id}.jsonl", send, lambda: server_reachable(uri)
        )
        self._pending_steps = 0
        self._last_flush = time.monotonic()

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        now = _now_ms()
        self.spool.add(Metric(f"train/{k}", float(v), now, step) for k, v in metrics.items())
        self._pending_steps += 1
        if (
            self._pending_steps >= self.flush_every_steps
            or time.monotonic() - self._last_flush >= self.flush_every_s
        ):
            self.flush()

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        now = _now_ms()
        self.spool.add(Metric(f"epoch/{k}", float(v), now, epoch) for k, v in metrics.items())
        self.flush()

    def flush(self) -> None:
        """Start sending what is pending (in the background; returns at once)."""
        self.spool.flush_soon()
        self._pending_steps = 0
        self._last_flush = time.monotonic()

    def close(self, wait_s: float | None = None) -> int:
        """Send everything still pending, waiting up to ``wait_s`` (default
        ``tracking_wait_s()``) for the server; returns how many metrics stay unsent."""
        return self.spool.close(tracking_wait_s() if wait_s is None else wait_s)


def send_spooled_metrics(spool_dir: Path = SPOOL_DIR, wait_s: float = 10.0) -> int:
    """Send the step metrics an earlier training left in ``spool_dir`` (it crashed, or
    gave up waiting for the server) to their runs; returns how many went out. Called
    under the workspace lock, before training: no other writer uses these spools then."""
    client = MlflowClient()
    uri = client.tracking_uri
    sent = 0
    for path in sorted(Path(spool_dir).glob("*.jsonl")):
        run_id = path.stem

        def send(batch: list[Metric], run_id: str = run_id) -> None:
            client.log_batch(run_id, metrics=batch)

        spool = MetricSpool(path, send, lambda: server_reachable(uri))
        spool.close(wait_s)
        sent += spool.sent
    return sent


def server_reachable(uri: str, timeout_s: float = HEALTH_TIMEOUT_S) -> bool:
    """Whether the tracking server at ``uri`` answers ``/health`` within ``timeout_s``
    (no credentials needed, no retries); a local store (sqlite, files) always is."""
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as reply:
            return reply.status == 200
    except OSError:  # refused, reset, timed out, or an HTTP error status
        return False


def tracking_wait_s() -> float:
    """How long end-of-training logging waits for a down tracking server:
    ``SEQ2SEQ_TRACKING_WAIT_S`` or ``TRACKING_WAIT_S``."""
    return float(os.environ.get(TRACKING_WAIT_ENV, "").strip() or TRACKING_WAIT_S)


def wait_for_tracking(what: str, wait_s: float | None = None, poll_s: float = 5.0) -> bool:
    """Before logging ``what`` (params, artifacts, a registration): wait, for a bounded
    time and one log line a minute, until the tracking server answers. Whether it does:
    on False the caller logs anyway and MLflow's error tells the story."""
    uri = mlflow.get_tracking_uri()
    limit_s = tracking_wait_s() if wait_s is None else wait_s
    t0 = time.monotonic()
    if server_reachable(uri):
        return True
    log.warning("tracking server %s unreachable before %s: waiting up to %.0f s", uri, what,
                limit_s)  # fmt: skip
    last_note = t0
    while time.monotonic() - t0 < limit_s:
        time.sleep(min(poll_s, max(0.0, limit_s - (time.monotonic() - t0))))
        if server_reachable(uri):
            log.info("tracking server back after %.0f s; logging %s", time.monotonic() - t0,
                     what)  # fmt: skip
            return True
        if time.monotonic() - last_note >= 60:
            log.warning("tracking server still unreachable after %.0f s (waiting for %s)",
                        time.monotonic() - t0, what)  # fmt: skip
            last_note = time.monotonic()
    log.error("tracking server unreachable for %.0f s: logging %s fails", limit_s, what)
    return False


def log_checkpoint_choice(result: Mapping[str, Any], *, run_id: str | None = None) -> None:
    """What best.pt holds after training (a ``TrainResult`` as a dict): tag
    ``kept_checkpoint`` (``averaged`` | ``single``), and with train.average_checkpoints on,
    metrics ``averaging/valid_bleu_averaged``, ``averaging/valid_bleu_single`` and
    ``averaging/snapshots`` (K itself is the logged param ``train.average_checkpoints``)."""
    set_tags({"kept_checkpoint": str(result.get("kept_checkpoint", "single"))}, run_id=run_id)
    choice = result.get("averaging")
    if not choice:
        return
    metrics = {
        "averaging/valid_bleu_single": choice["single_valid_bleu"],
        "averaging/snapshots": choice["snapshots"],
    }
    if choice["averaged_valid_bleu"] is not None:
        metrics["averaging/valid_bleu_averaged"] = choice["averaged_valid_bleu"]
    log_metrics(metrics, run_id=run_id)


def log_files(
    paths: Iterable[str | Path], artifact_path: str, *, run_id: str | None = None
) -> list[Path]:
    """Log files, and directories' contents, under ``artifact_path``; returns what was logged.

    A missing path is skipped with a warning (a stage may not have written its plots)."""
    client, rid = MlflowClient(), _resolve_run_id(run_id)
    logged = []
    for path in map(Path, paths):
        if not path.exists():
            log.warning("not logging %s to MLflow: it does not exist", path)
            continue
        if path.is_dir():
            client.log_artifacts(rid, str(path), artifact_path)
        else:
            client.log_artifact(rid, str(path), artifact_path)
        logged.append(path)
    return logged


# --------------------------------------------------------------------------- model


def log_translator_model(
    *,
    checkpoint: Path,
    vocab_dir: Path,
    cfg: PipelineConfig,
    metrics: Mapping[str, Any],
    run_id: str | None = None,
    eval_files: Iterable[Path] = (),
) -> str:
    """Log the self-contained pyfunc translator to the run; returns its ``models:/`` URI.

    The model directory holds the checkpoint, the tokenizer files, ``translator.json``
    (decode settings, input limit, test scores with their signatures, the model config)
    and the code of ``seq2seq_core`` and ``flows.pyfunc``. ``eval_files`` (the test
    hypotheses and references) go under ``artifacts/eval/`` for the promotion gate's
    significance test."""
    from flows.pyfunc import DECODE_KEY, MAX_INPUT_KEY, SRC_COLUMN

    checkpoint, vocab_dir = Path(checkpoint), Path(vocab_dir)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: checkpoint not found (run the train stage)")
    if not vocab_dir.is_dir():
        raise FileNotFoundError(f"{vocab_dir}: vocabulary directory not found (run vocab)")
    test = read_test_scores(metrics)
    try:
        rid: str | None = _resolve_run_id(run_id)
    except NoActiveRunError:
        rid = None
    with tempfile.TemporaryDirectory(prefix="seq2seq-model-") as tmp:
        tmp_dir = Path(tmp)
        config_path = tmp_dir / "translator.json"
        settings = {
            DECODE_KEY: dataclasses.asdict(cfg.decode),
            # The corpus filter dropped longer sentences, so the model never saw one.
            MAX_INPUT_KEY: cfg.data.max_chars,
            "max_input_tokens": cfg.decode.max_input_tokens,
            "test": test,
            "model": dataclasses.asdict(cfg.model),
            "languages": {"src": cfg.data.src_lang, "tgt": cfg.data.tgt_lang},
        }
        config_path.write_text(
            json.dumps(settings, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        signature = ModelSignature(
            inputs=Schema([ColSpec("string", SRC_COLUMN)]),
            outputs=Schema([ColSpec("string")]),
            params=request_params_schema(cfg),
        )
        # Model.log (what mlflow.pyfunc.log_model calls) takes the run id explicitly.
        info = Model.log(
            artifact_path=None,
            name=MODEL_NAME_IN_RUN,
            flavor=mlflow.pyfunc,
            flavor_name="pyfunc.ModelFromCode",
            run_id=rid,
            python_model=str(_model_code(tmp_dir)),
            artifacts={
                "checkpoint": str(checkpoint),
                "vocab": str(vocab_dir),
                "config": str(config_path),
                **_eval_dir(tmp_dir, eval_files),
            },
            code_paths=_stage_code(tmp_dir / "code"),
            signature=signature,
            input_example=_example_input(SRC_COLUMN),
            pip_requirements=[f"{n}=={dist_version(n)}" for n in MODEL_REQUIREMENTS],
            tags={TEST_BLEU_TAG: str(test["bleu"]), TEST_SET_TAG: test["test_set_sha256"]},
        )
    return info.model_uri


def request_params_schema(cfg: PipelineConfig) -> ParamSchema:
    """The served model's per-request params (``beam_size``, ``n_best``, ``max_length``),
    integers whose defaults decode as evaluated; their bounds are checked in ``predict``
    (``seq2seq_core.decoding.request_params``): a schema has types, not ranges."""
    from seq2seq_core.decoding.request_params import PARAM_NAMES, model_defaults

    defaults = model_defaults(cfg.decode)
    return ParamSchema([ParamSpec(name, "long", getattr(defaults, name)) for name in PARAM_NAMES])


def _eval_dir(tmp_dir: Path, files: Iterable[Path]) -> dict[str, str]:
    present = [Path(f) for f in files if Path(f).is_file()]
    if not present:
        return {}
    eval_dir = tmp_dir / "eval"
    eval_dir.mkdir()
    for path in present:
        shutil.copy2(path, eval_dir / path.name)
    return {"eval": str(eval_dir)}


def _example_input(column: str) -> Any:
    import pandas as pd

    return pd.DataFrame({column: [EXAMPLE_SRC]})


def _model_code(tmp_dir: Path) -> Path:
    """MLflow "models from code": a script that names the model, instead of a pickle."""
    script = tmp_dir / "translator_model.py"
    script.write_text(
        '"""Loaded by MLflow with the model\'s code/ directory on sys.path."""\n'
        "from mlflow.models import set_model\n\n"
        "from flows.pyfunc import TranslatorModel\n\n"
        "set_model(TranslatorModel())\n",
        encoding="utf-8",
    )
    return script


def _stage_code(dest: Path) -> list[str]:
    """Copies of the packages a loaded model imports: all of seq2seq_core, and a ``flows``
    package holding only pyfunc.py (cli/pipeline/tasks would drag prefect in)."""
    import seq2seq_core

    core = dest / "seq2seq_core"
    shutil.copytree(
        Path(seq2seq_core.__file__).parent, core, ignore=shutil.ignore_patterns("__pycache__")
    )
    flows_pkg = dest / "flows"
    flows_pkg.mkdir(parents=True)
    (flows_pkg / "__init__.py").write_text('"""The pyfunc wrapper, as packaged with a model."""\n')
    shutil.copy2(Path(__file__).with_name("pyfunc.py"), flows_pkg / "pyfunc.py")
    return [str(core), str(flows_pkg)]
