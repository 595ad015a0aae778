"""The register stage: log the evaluated model to MLflow, register it, run the gate.

It lives in flows/ (not in seq2seq_core.stages) because it is MLflow through and through;
the Prefect flow, `seq2seq register` and the DVC stage all call `register_stage`.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from flows import dataset_inputs, freshness, lineage, registry, tracking
from seq2seq_core.config import PipelineConfig
from seq2seq_core.model.checkpoint import CheckpointDir
from seq2seq_core.runtime.files import write_json


class MissingStageOutputError(FileNotFoundError):
    """A file the register stage needs was not produced; names the stage to run."""


def _require(path: Path, stage: str) -> Path:
    if not path.exists():
        raise MissingStageOutputError(f"{path} not found: run `seq2seq {stage}` first")
    return path


def register_stage(
    cfg: PipelineConfig,
    *,
    run_id: str | None = None,
    trigger: str = "cli",
    root: Path | None = None,
    fingerprint: str | None = None,
) -> dict[str, Any]:
    """Log the pyfunc model to the run `run_id` (or a new run), register and gate it.

    The version's lineage is read now, from the dvc.lock that describes the data it was
    trained on (the flow commits the earlier stages first; `dvc repro` has written them),
    and it records `fingerprint` (default: computed now), which later runs compare theirs
    with to find they are up to date."""
    checkpoint = _require(CheckpointDir(cfg.train.checkpoint_dir).best, "train")
    vocab_dir = _require(Path(cfg.vocab.out_dir), "vocab")
    metrics_path = _require(Path(cfg.evaluate.reports_dir) / "metrics.json", "evaluate")
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))

    tracking.configure_tracking(root)
    extra_tags = {
        **lineage.dvc_lock_tags(Path(root or Path.cwd())),
        freshness.FINGERPRINT_TAG: fingerprint or freshness.inputs_fingerprint(cfg),
    }
    # Standalone (`seq2seq register`, the DVC stage): one run of its own that carries the
    # params, metrics and reports, so the registered version still links to its evidence.
    own_run = (
        tracking.pipeline_run(cfg, run_name="register", tags={"trigger": trigger})
        if run_id is None
        else nullcontext(None)
    )
    with own_run as run:
        if run is not None:
            run_id = run.info.run_id
            log_stage_reports(cfg)
        tracking.set_tags(extra_tags, run_id=run_id)
        # The splits as the run's dataset inputs, digests from the same dvc.lock.
        dataset_inputs.log_split_inputs(cfg, root=root, run_id=run_id)
        existing = registry.version_of_run(MlflowClient(), cfg.register.model_name, run_id)
        if existing is not None:  # a retry: the model was logged and registered before
            model_uri = existing.source
        else:
            reports = Path(cfg.evaluate.reports_dir)
            model_uri = tracking.log_translator_model(
                checkpoint=checkpoint,
                vocab_dir=vocab_dir,
                cfg=cfg,
                metrics=metrics,
                run_id=run_id,
                eval_files=[reports / "test_hypotheses.txt", reports / "test_references.txt"],
            )
        result = registry.register_and_promote(
            cfg,
            model_uri=model_uri,
            run_id=run_id,
            metrics=metrics,
            trigger=trigger,
            extra_tags=extra_tags,
        )
    record = {**asdict(result), "model_uri": model_uri, "run_id": run_id, "trigger": trigger}
    write_json(Path(cfg.register.record_path), record)
    return record


def log_stage_reports(cfg: PipelineConfig) -> None:
    """Attach every report the stages wrote (data report, metrics, samples, plots)."""
    reports = Path(cfg.evaluate.reports_dir)
    prepared = Path(cfg.data.prepared_dir)
    tracking.log_files(
        [
            prepared / "report.json",
            prepared / "lengths.png",
            Path(cfg.vocab.out_dir) / "coverage.json",
        ],
        "data",
    )
    tracking.log_files(
        [
            reports / "metrics.json",
            reports / "train.json",
            reports / "samples.csv",
            reports / "samples.md",
            reports / "test_hypotheses.txt",
            reports / "length_bleu.csv",
            reports / "train_history.csv",
            CheckpointDir(cfg.train.checkpoint_dir).history,
        ],
        "reports",
    )
    tracking.log_files([reports / "plots"], "plots")
