"""`train.init_from`: turn a registry reference into local files the core can load.

`champion` and `models:/NAME@ALIAS` (or `models:/NAME/VERSION`) name a registered model;
the core knows no MLflow, so the model's checkpoint and vocabulary are downloaded here into
`.state/warm-start/NAME-vVERSION/` (kept: a retried run does not download again), checked
against the version's recorded sha256 digests (flows/model_integrity.py) before the core
torch-loads anything, and handed to the stages as a `WarmStartSource`. A checkpoint
directory is the core's own business.

With `init_from: champion` and no champion yet (the first night), there is nothing to start
from: the run trains from scratch and says so.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import yaml
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from flows.model_integrity import (
    ModelIntegrityError,
    VersionRef,
    fetch_verified_model,
    verify_model_dir,
)
from seq2seq_core.config import PipelineConfig
from seq2seq_core.training.warm_start import WarmStartError, WarmStartSource, local_source

log = logging.getLogger(__name__)

CACHE_DIR = Path(".state") / "warm-start"
CHAMPION = "champion"


def resolve_warm_start(cfg: PipelineConfig) -> WarmStartSource | None:
    """The source `train.init_from` names, as local files; None to train from scratch."""
    init_from = cfg.train.init_from.strip()
    if init_from == CHAMPION:
        return _registered_source(cfg.register.model_name, CHAMPION, required=False)
    if init_from.startswith("models:/"):
        name, ref = _parse_models_uri(init_from)
        return _registered_source(name, ref, required=True)
    return local_source(init_from, cfg.train.reset_optimizer)


def _parse_models_uri(uri: str) -> tuple[str, str]:
    body = uri[len("models:/") :]
    if "@" in body:
        name, _, ref = body.partition("@")
    else:
        name, _, ref = body.rpartition("/")
    if not name or not ref:
        raise WarmStartError(
            f"train.init_from {uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION"
        )
    return name, ref


def _registered_source(name: str, ref: str, *, required: bool) -> WarmStartSource | None:
    version = _find_version(MlflowClient(), name, ref)
    if version is None:
        if required:
            raise WarmStartError(f"train.init_from: {name} has no version {ref!r} in the registry")
        log.info("warm start: %s has no %s yet; training from scratch", name, ref)
        return None
    exact = VersionRef(version, f"models:/{name}/{version.version}")
    target = CACHE_DIR / f"{name}-v{version.version}"
    if (target / "MLmodel").is_file():
        # A download kept from an earlier run is checked again: it is cheap, and the
        # folder is as writable as the store.
        verify_model_dir(exact, target)
    else:
        # Each process downloads into a folder of its own (torchrun ranks on one host resolve
        # the source at once), checks it, and renames it into place: complete and verified,
        # or absent.
        partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        try:
            fetched = fetch_verified_model(exact.uri, partial)
        except ModelIntegrityError:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        if target.is_dir() and not (target / "MLmodel").is_file():
            shutil.rmtree(target, ignore_errors=True)  # not a complete download
        try:
            fetched.rename(target)
        except OSError:  # another process put the same version in place first
            shutil.rmtree(partial, ignore_errors=True)
            verify_model_dir(exact, target)
    artifacts = _pyfunc_artifacts(target)
    label = f"{name} v{version.version}" + (f" ({ref})" if not ref.isdigit() else "")
    return WarmStartSource(
        checkpoint=target / artifacts["checkpoint"],
        vocab_dir=target / artifacts["vocab"],
        label=label,
    )


def _find_version(client: MlflowClient, name: str, ref: str) -> ModelVersion | None:
    try:
        if ref.isdigit():
            return client.get_model_version(name, ref)
        return client.get_model_version_by_alias(name, ref)
    except MlflowException:
        return None  # no such model, version or alias


def _pyfunc_artifacts(model_dir: Path) -> dict[str, str]:
    """{artifact name: path inside the model dir} from the MLmodel file."""
    spec = yaml.safe_load((model_dir / "MLmodel").read_text(encoding="utf-8"))
    found = spec.get("flavors", {}).get("python_function", {}).get("artifacts", {})
    paths = {k: v["path"] for k, v in found.items() if isinstance(v, dict) and "path" in v}
    missing = {"checkpoint", "vocab"} - set(paths)
    if missing:
        raise WarmStartError(
            f"{model_dir}: the registered model has no {', '.join(sorted(missing))} artifact"
        )
    return paths
