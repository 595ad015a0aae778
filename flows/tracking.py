"""Everything MLflow: the tracking store, one run per pipeline run, training metrics,
artifacts, the pyfunc model, the registry and its promotion gate.

Nothing happens at import. ``configure_tracking`` picks the store (``MLFLOW_TRACKING_URI``
or ``sqlite:///<root>/mlflow.db`` with artifacts in ``<root>/mlartifacts``), then:

    with pipeline_run(cfg, tags={"prefect.flow_run_id": ...}) as run:
        train(..., callbacks=[MlflowTrainCallback(run.info.run_id)])
        log_files([...], "reports")
        uri = log_translator_model(checkpoint=..., vocab_dir=..., cfg=cfg, metrics=metrics)
        result = register_and_promote(cfg, model_uri=uri, run_id=run.info.run_id, metrics=metrics)

MLflow keeps its active run per thread, and a Prefect task may run in another thread than
its flow; so every call that writes to a run takes an explicit ``run_id`` and falls back to
this thread's active run, then to the run ``pipeline_run`` opened in this process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TypeVar

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.types.schema import ColSpec, Schema

from seq2seq_core.config import PipelineConfig

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "seq2seq-pipeline"
CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_NAME_IN_RUN = "translator"
EXAMPLE_SRC = "Im Anfang schuf Gott die Himmel und die Erde."
# Distributions the served model imports (seq2seq_core travels as code with the model).
MODEL_REQUIREMENTS = ("mlflow", "torch", "sentencepiece", "pandas", "pyyaml")
# The run `pipeline_run` opened in this process, for callers in other threads.
_pipeline_run_id: str | None = None

T = TypeVar("T")


class NoActiveRunError(RuntimeError):
    """A logging call found neither a run id, an active run, nor an open pipeline run."""


class MetricsFormatError(ValueError):
    """metrics.json lacks a key the registry needs; the message names it."""


# --------------------------------------------------------------------------- store


def configure_tracking(root: Path | None = None, experiment: str = DEFAULT_EXPERIMENT) -> str:
    """Point MLflow at the store and select ``experiment``; returns the tracking URI.

    ``MLFLOW_TRACKING_URI`` wins; otherwise ``sqlite:///<root>/mlflow.db`` (root defaults
    to the working directory) with the experiment's artifacts in ``<root>/mlartifacts``.
    """
    # tqdm bars for every artifact download are noise in `make run` and in logs.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if "MLFLOW_DISABLE_TELEMETRY" not in os.environ:
        os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
        # MLflow starts its telemetry client at import; this re-reads the setting.
        from mlflow.telemetry import set_telemetry_client

        set_telemetry_client()
    root = Path(root or Path.cwd()).resolve()
    env_uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    uri = env_uri or f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    artifact_location = None if env_uri else (root / "mlartifacts").as_uri()
    experiment_id = _retry(_experiment_id, MlflowClient(uri), experiment, artifact_location)
    mlflow.set_experiment(experiment_id=experiment_id)
    return uri


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


def _retry(fn: Callable[..., T], *args: Any, attempts: int = 6, **kwargs: Any) -> T:
    """Call ``fn``; retry with backoff (0.2 s doubling, ~6 s in all) while SQLite says
    "database is locked" (another process is writing to the same mlflow.db)."""
    delay = 0.2
    for attempt in range(1, attempts):
        try:
            return fn(*args, **kwargs)
        except MlflowException as exc:
            if "database is locked" not in str(exc).lower():
                raise
            name = getattr(fn, "__name__", repr(fn))
            log.warning("MLflow store busy (%s); retry %d/%d", name, attempt, attempts - 1)
            time.sleep(delay)
            delay *= 2
    return fn(*args, **kwargs)


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
    with mlflow.start_run(run_name=run_name, tags=run_tags) as run:
        previous, _pipeline_run_id = _pipeline_run_id, run.info.run_id
        try:
            params = [Param(key, _param_value(v)) for key, v in cfg.flat().items()]
            client = MlflowClient()
            for start in range(0, len(params), 100):  # MLflow takes <= 100 params a batch
                _retry(client.log_batch, run.info.run_id, params=params[start : start + 100])
            yield run
        finally:
            _pipeline_run_id = previous


def _param_value(value: Any) -> str:
    return "None" if value is None else str(value)


def lineage_tags(cfg: PipelineConfig | None = None, cwd: Path | None = None) -> dict[str, str]:
    """Where a run came from: git commit + dirty flag, versions, device, config digest."""
    tags = {
        "python.version": platform.python_version(),
        "torch.version": _dist_version("torch"),
        "mlflow.version": mlflow.__version__,
        "host.device": _device_name(),
    }
    if cfg is not None:
        canonical = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
        tags["config.sha256"] = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return {**tags, **git_tags(cwd)}


def git_tags(cwd: Path | None = None) -> dict[str, str]:
    """``git.commit`` and ``git.dirty`` (any non-ignored change counts); {} outside git."""

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


def _dist_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def _device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return "cpu"


def log_metrics(
    metrics: Mapping[str, float], *, step: int | None = None, run_id: str | None = None
) -> None:
    """Log a few scalar metrics (e.g. ``test/bleu``) in one batch."""
    now = _now_ms()
    batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
    _log_metric_batch(MlflowClient(), _resolve_run_id(run_id), batch)


def _log_metric_batch(client: MlflowClient, run_id: str, metrics: list[Metric]) -> None:
    for start in range(0, len(metrics), 1000):  # MLflow takes <= 1000 metrics a batch
        _retry(client.log_batch, run_id, metrics=metrics[start : start + 1000])


def _now_ms() -> int:
    return int(time.time() * 1000)


class MlflowTrainCallback:
    """``seq2seq_core.training.TrainCallback`` that logs to one run by id (thread-safe
    enough for a Prefect task: it never touches MLflow's per-thread active run).

    Step metrics go out as ``train/<name>`` with ``step=`` the global step, buffered and
    written every ``flush_every_steps`` steps or ``flush_every_s`` seconds and at each
    epoch end; epoch metrics go out as ``epoch/<name>`` with ``step=`` the epoch.
    """

    def __init__(
        self,
        run_id: str | None = None,
        *,
        flush_every_steps: int = 50,
        flush_every_s: float = 10.0,
    ) -> None:
        self.run_id = _resolve_run_id(run_id)
        self.flush_every_steps = flush_every_steps
        self.flush_every_s = flush_every_s
        self._client = MlflowClient()  # binds the tracking URI configured now
        self._pending: list[Metric] = []
        self._pending_steps = 0
        self._last_flush = time.monotonic()

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        now = _now_ms()
        self._pending.extend(Metric(f"train/{k}", float(v), now, step) for k, v in metrics.items())
        self._pending_steps += 1
        if (
            self._pending_steps >= self.flush_every_steps
            or time.monotonic() - self._last_flush >= self.flush_every_s
        ):
            self.flush()

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        now = _now_ms()
        self._pending.extend(Metric(f"epoch/{k}", float(v), now, epoch) for k, v in metrics.items())
        self.flush()

    def flush(self) -> None:
        if self._pending:
            _log_metric_batch(self._client, self.run_id, self._pending)
        self._pending, self._pending_steps = [], 0
        self._last_flush = time.monotonic()


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
            _retry(client.log_artifacts, rid, str(path), artifact_path)
        else:
            _retry(client.log_artifact, rid, str(path), artifact_path)
        logged.append(path)
    return logged


# --------------------------------------------------------------------------- model


def read_test_scores(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The ``test`` block of metrics.json, checked for what the registry gate reads."""
    test = metrics.get("test")
    if not isinstance(test, Mapping):
        raise MetricsFormatError("metrics: no 'test' section (run the evaluate stage)")
    for key in ("bleu", "chrf", "ter", "signatures", "test_set_sha256"):
        if key not in test:
            raise MetricsFormatError(f"metrics: 'test.{key}' is missing")
    if "bleu" not in test["signatures"]:
        raise MetricsFormatError("metrics: 'test.signatures.bleu' is missing")
    return dict(test)


def log_translator_model(
    *,
    checkpoint: Path,
    vocab_dir: Path,
    cfg: PipelineConfig,
    metrics: Mapping[str, Any],
    run_id: str | None = None,
) -> str:
    """Log the self-contained pyfunc translator to the run; returns its ``models:/`` URI.

    The model directory holds the checkpoint, the tokenizer files, ``translator.json``
    (decode settings, input limit, test scores with their signatures, the model config)
    and the code of ``seq2seq_core`` and ``flows.pyfunc``."""
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
            "test": test,
            "model": dataclasses.asdict(cfg.model),
            "languages": {"src": cfg.data.src_lang, "tgt": cfg.data.tgt_lang},
        }
        config_path.write_text(
            json.dumps(settings, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        signature = ModelSignature(
            inputs=Schema([ColSpec("string", SRC_COLUMN)]), outputs=Schema([ColSpec("string")])
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
            },
            code_paths=_stage_code(tmp_dir / "code"),
            signature=signature,
            input_example=_example_input(SRC_COLUMN),
            pip_requirements=[f"{n}=={_dist_version(n)}" for n in MODEL_REQUIREMENTS],
            tags={"test.bleu": str(test["bleu"]), "test.test_set_sha256": test["test_set_sha256"]},
        )
    return info.model_uri


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


# --------------------------------------------------------------------------- registry


@dataclass
class RegistrationResult:
    model_name: str
    version: int
    aliases: list[str]
    promoted: bool
    reason: str
    champion_version: int | None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    bleu_delta: float | None = None


def score_tags(metrics: Mapping[str, Any]) -> dict[str, str]:
    """Model-version tags the gate reads back from the registry."""
    test = read_test_scores(metrics)
    tags = {
        "test.bleu": str(float(test["bleu"])),
        "test.chrf": str(float(test["chrf"])),
        "test.ter": str(float(test["ter"])),
        "test.test_set_sha256": str(test["test_set_sha256"]),
    }
    if "sentences" in test:
        tags["test.sentences"] = str(test["sentences"])
    for metric, sig in test["signatures"].items():
        tags[f"test.signature.{metric}"] = str(sig)
    return tags


def decide_promotion(
    challenger: Mapping[str, str],
    champion: Mapping[str, str] | None,
    *,
    champion_version: str | int | None,
    min_bleu_gain: float,
) -> GateDecision:
    """The gate on two versions' tags (as ``score_tags`` writes them).

    Promote when there is no champion, or when both were scored on the same test set with
    the same BLEU signature and the challenger's BLEU is higher by more than the minimum.
    """
    if champion is None:
        return GateDecision(True, "no champion yet")
    who = f"champion v{champion_version}"
    if "test.bleu" not in champion or "test.test_set_sha256" not in champion:
        return GateDecision(False, f"not comparable: {who} has no recorded test BLEU/test set")
    if champion["test.test_set_sha256"] != challenger["test.test_set_sha256"]:
        return GateDecision(
            False,
            f"not comparable: different test set (sha256 {challenger['test.test_set_sha256'][:12]}"
            f" vs {who}'s {champion['test.test_set_sha256'][:12]})",
        )
    ours, theirs = challenger.get("test.signature.bleu"), champion.get("test.signature.bleu")
    if ours != theirs:
        return GateDecision(
            False, f"not comparable: different BLEU signature ({ours!r} vs {who}'s {theirs!r})"
        )
    new, old = float(challenger["test.bleu"]), float(champion["test.bleu"])
    delta = new - old
    if delta > min_bleu_gain:
        return GateDecision(
            True,
            f"test BLEU {new:.2f} beats {who}'s {old:.2f} by {delta:.2f} "
            f"(> min_bleu_gain {min_bleu_gain:g})",
            delta,
        )
    return GateDecision(
        False,
        f"test BLEU {new:.2f} vs {who}'s {old:.2f}: gain {delta:.2f} is not above "
        f"min_bleu_gain {min_bleu_gain:g}",
        delta,
    )


def register_and_promote(
    cfg: PipelineConfig,
    *,
    model_uri: str,
    run_id: str | None,
    metrics: Mapping[str, Any],
    trigger: str = "",
) -> RegistrationResult:
    """Register ``model_uri``, move ``challenger`` to it, and run the promotion gate.

    The decision is recorded on the new version as ``promotion.*`` tags; a promotion also
    tags the replaced champion with ``promotion.replaced_by`` / ``promotion.replaced_at``.
    """
    name = cfg.register.model_name
    client = MlflowClient()
    version_tags = score_tags(metrics)
    if run_id:
        run_tags = _retry(client.get_run, run_id).data.tags
        version_tags |= {k: v for k, v in run_tags.items() if k in _LINEAGE_KEYS}
        version_tags["source.run_id"] = run_id
    _retry(_ensure_registered_model, client, name)
    created = _retry(
        client.create_model_version,
        name,
        model_uri,
        run_id=run_id,
        tags=version_tags,
        model_id=_model_id(model_uri),
    )
    new_version = str(created.version)
    _retry(client.set_registered_model_alias, name, CHALLENGER, new_version)

    champion = _alias_version(client, name, CHAMPION)
    decision = decide_promotion(
        version_tags,
        champion.tags if champion else None,
        champion_version=champion.version if champion else None,
        min_bleu_gain=cfg.register.min_bleu_gain,
    )
    now = datetime.now(UTC).isoformat(timespec="seconds")
    record = {
        "promotion.decision": "promoted" if decision.promote else "kept_challenger",
        "promotion.reason": decision.reason,
        "promotion.at": now,
        "promotion.previous_champion": str(champion.version) if champion else "none",
        "promotion.min_bleu_gain": f"{cfg.register.min_bleu_gain:g}",
    }
    if decision.bleu_delta is not None:
        record["promotion.bleu_delta"] = f"{decision.bleu_delta:.4f}"
    if trigger:
        record["promotion.trigger"] = trigger
    if decision.promote:
        _retry(client.set_registered_model_alias, name, CHAMPION, new_version)
        if champion is not None:
            for key, value in (("replaced_by", new_version), ("replaced_at", now)):
                _retry(
                    client.set_model_version_tag, name, champion.version, f"promotion.{key}", value
                )
    for key, value in record.items():
        _retry(client.set_model_version_tag, name, new_version, key, value)

    final = _retry(client.get_model_version, name, new_version)
    holder = _alias_version(client, name, CHAMPION)
    return RegistrationResult(
        model_name=name,
        version=int(new_version),
        aliases=sorted(final.aliases),
        promoted=decision.promote,
        reason=decision.reason,
        champion_version=int(holder.version) if holder else None,
        tags=record,
    )


_LINEAGE_KEYS = frozenset(
    {
        "git.commit",
        "git.dirty",
        "config.sha256",
        "prefect.flow_run_id",
        "torch.version",
        "python.version",
        "host.device",
    }
)


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise


def _alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version holding ``alias``, or None (read from the registered model, because
    a missing alias comes back as a generic INVALID_PARAMETER_VALUE error)."""
    number = _retry(client.get_registered_model, name).aliases.get(alias)
    return None if number is None else _retry(client.get_model_version, name, number)


def _model_id(model_uri: str) -> str | None:
    """``models:/m-<id>`` (a logged model) -> ``m-<id>``; other URIs carry none."""
    prefix = "models:/m-"
    if model_uri.startswith(prefix) and "/" not in model_uri[len(prefix) :]:
        return model_uri[len("models:/") :]
    return None
