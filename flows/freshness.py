"""Is there anything to do? The inputs of a run against those of the registered versions.

A scheduled retrain with nothing changed must not train, evaluate and register a copy of
the last model every night. What a version was made from is recorded on the version itself,
as the tag `pipeline.inputs_sha256`: a digest of the corpus (the same content key the ingest
cache uses), every parameter that changes what is trained or how it is scored, and the code
of `seq2seq_core` and `flows`. The registry is the record of what was produced, so a
workspace wiped of its outputs, another clone or a `dvc repro` all read the same answer;
DVC's `dvc.lock` remains the record of which data files each version used (lineage tags).

A run whose digest a registered version already carries has nothing to do. Raising
`train.time_budget_min` or `train.max_epochs` changes the digest: the run continues
training from `last.pt` and registers what that gives.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from flows import caching
from seq2seq_core.config import PipelineConfig

FINGERPRINT_TAG = "pipeline.inputs_sha256"
# Sections whose every key changes what is trained or how it is scored.
SCORED_SECTIONS = ("vocab", "model", "train", "decode", "evaluate")
# Keys that change how a run is carried out, not what it is trained on: a nightly run that
# warm-starts from the champion is up to date with the version `make run` made from the
# same inputs.
OPERATIONAL_KEYS = {
    "train": (
        "threads", "log_every_steps", "checkpoint_every_steps", "init_from", "reset_optimizer"
    )
}  # fmt: skip
CODE_PACKAGES = ("seq2seq_core", "flows")


def inputs_fingerprint(cfg: PipelineConfig) -> str:
    """sha256 of the corpus content, the scored parameters and the code."""
    sections = {}
    for name in SCORED_SECTIONS:
        values = asdict(getattr(cfg, name))
        for key in OPERATIONAL_KEYS.get(name, ()):
            values.pop(key, None)
        sections[name] = values
    payload = {
        "data": caching.ingest_key(cfg),
        "sections": sections,
        "model_name": cfg.register.model_name,
        "code": code_digest(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def code_digest(root: Path | None = None) -> str:
    """sha256 over the Python sources of the packages that train and register a model:
    those this process runs (``root`` None), or those of the checkout at ``root``.

    Also the lineage tag ``code.sha256``: in a DVC experiment it is the copy's code, with
    the experiment's uncommitted changes, that ran."""
    digest = hashlib.sha256()
    root = Path(root) if root is not None else Path(__file__).resolve().parents[1]
    for package in CODE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def registered_with(
    model_name: str, fingerprint: str, client: MlflowClient | None = None
) -> ModelVersion | None:
    """The newest version of ``model_name`` made from inputs with ``fingerprint``."""
    client = client or MlflowClient()
    found = client.search_model_versions(
        f"name = '{model_name}' and tags.`{FINGERPRINT_TAG}` = '{fingerprint}'"
    )
    return max(found, key=lambda mv: int(mv.version), default=None)


def up_to_date_message(version: ModelVersion, champion: str | None) -> str:
    """The one line a person on call reads: which version, and where the champion is."""
    holder = f"champion is v{champion}" if champion else "no champion yet"
    return (
        f"up to date with version {version.version} of {version.name}: its data, vocabulary, "
        f"parameters and code match this run's (inputs sha256 {version.tags[FINGERPRINT_TAG][:12]})"
        f"; nothing trained or registered; {holder}"
    )
