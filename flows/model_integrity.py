"""Fetching a registered model to a local directory before anything of it runs.

PROVISIONAL: this version only downloads. The issue-23 integrity work replaces this module
with one that checks each file's recorded sha256 and refuses a mismatch, keeping the
signature of ``fetch_verified_model``, which `seq2seq serve` calls."""

from __future__ import annotations

from pathlib import Path


def fetch_verified_model(model_uri: str, dest: Path) -> Path:
    """The model at ``model_uri`` (``models:/NAME@ALIAS``, ``runs:/...``, a path) downloaded
    under ``dest``; returns the local model directory (the one holding ``MLmodel``).

    Provisional: no checksum is verified yet (see the module docstring)."""
    import mlflow.artifacts

    dest.mkdir(parents=True, exist_ok=True)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dest)))
    if not (local / "MLmodel").is_file():
        raise FileNotFoundError(f"{model_uri}: no MLmodel file in the downloaded {local}")
    return local
