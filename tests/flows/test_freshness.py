"""What makes a run "up to date": the inputs fingerprint and its lookup in a real registry."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient

from flows import freshness
from seq2seq_core.config import config_from_dict
from tests.support import GENESIS_TSV


def _fingerprint(corpus: Path, *overrides: str) -> str:
    cfg = config_from_dict({"data": {"source": str(corpus)}}, list(overrides))
    return freshness.inputs_fingerprint(cfg)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.tsv"
    shutil.copy(GENESIS_TSV, path)
    return path


def test_what_changes_the_fingerprint(corpus: Path) -> None:
    base = _fingerprint(corpus)
    assert _fingerprint(corpus) == base  # deterministic
    # What is trained on, how, and how it is scored: a change.
    changes = ["train.max_epochs=31", "train.time_budget_min=12", "vocab.size=7000",
               "model.hidden_size=128", "decode.beam_size=4", "data.lowercase=true"]  # fmt: skip
    for override in changes:
        assert _fingerprint(corpus, override) != base, override
    # How a run is carried out: not a change.
    same = ["train.threads=2", "train.log_every_steps=5", "train.init_from=champion",
            "pipeline.lock_timeout_min=1", "register.serve_port=6000"]  # fmt: skip
    for override in same:
        assert _fingerprint(corpus, override) == base, override
    with corpus.open("a", encoding="utf-8") as f:
        f.write("Und es ward Abend.\tAnd there was evening.\n")
    assert _fingerprint(corpus) != base  # the corpus content


def test_code_digest_covers_the_packages() -> None:
    digest = freshness.code_digest()
    assert len(digest) == 64
    root = Path(freshness.__file__).resolve().parents[1]
    assert (root / "seq2seq_core" / "training" / "loop.py").is_file()  # what it hashes exists


def test_registered_with_finds_the_newest_version_with_the_fingerprint(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    client.create_registered_model("m")
    for fingerprint in ("a" * 64, "b" * 64, "a" * 64):
        client.create_model_version(
            "m", "file:///nowhere", tags={freshness.FINGERPRINT_TAG: fingerprint}
        )
    assert freshness.registered_with("m", "a" * 64, client).version == 3
    assert freshness.registered_with("m", "b" * 64, client).version == 2
    assert freshness.registered_with("m", "c" * 64, client) is None
    assert freshness.registered_with("other", "a" * 64, client) is None
    message = freshness.up_to_date_message(client.get_model_version("m", "3"), "2")
    assert message.startswith("up to date with version 3 of m:")
    assert "nothing trained or registered; champion is v2" in message
