"""flows.champion_eval: a missing alias is named."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_champion_eval_names_the_missing_alias(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from flows.champion_eval import NoChampionError, _version_by_alias

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    with pytest.raises(NoChampionError, match="no version with alias 'champion'"):
        _version_by_alias(client, "translator", "champion")  # no such model either
    client.create_registered_model("translator")
    with pytest.raises(NoChampionError, match="no version with alias 'champion'"):
        _version_by_alias(client, "translator", "champion")
