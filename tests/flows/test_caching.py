"""flows.caching on real files: a cached ingest/vocab result is reused only while its
outputs are the ones it wrote, and its key moves with the parameters and input contents."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flows import caching
from seq2seq_core.config import PipelineConfig, config_from_dict
from seq2seq_core.training.warm_start import WarmStartSource
from tests.support import GENESIS_TSV


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory (stamps and outputs are relative to it) with a corpus file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.tsv").write_bytes(GENESIS_TSV.read_bytes())
    return tmp_path


def cfg_for(workspace: Path, **sections: dict) -> PipelineConfig:
    data = {"source": str(workspace / "corpus.tsv"), **sections.pop("data", {})}
    return config_from_dict({"data": data, **sections})


def write_outputs(outputs: list[Path], content: bytes = b"v1") -> None:
    for path in outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def test_outputs_are_current_only_while_untouched_since_the_stamp(workspace: Path) -> None:
    cfg = cfg_for(workspace)
    key, outputs = caching.ingest_key(cfg), caching.ingest_outputs(cfg)
    write_outputs(outputs)
    assert not caching.outputs_current("ingest", key, outputs)  # no stamp yet
    caching.write_stamp("ingest", key, outputs)
    assert caching.outputs_current("ingest", key, outputs)
    assert not caching.outputs_current("ingest", "another-key", outputs)  # other inputs
    assert not caching.outputs_current("vocab", key, outputs)  # a stamp is per stage

    # Another run (or `dvc repro`) rewrote an output: other content, or the same bytes later.
    outputs[0].write_bytes(b"written by another run")
    assert not caching.outputs_current("ingest", key, outputs)
    caching.write_stamp("ingest", key, outputs)
    assert caching.outputs_current("ingest", key, outputs)
    stat = outputs[1].stat()
    os.utime(outputs[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert not caching.outputs_current("ingest", key, outputs)

    caching.write_stamp("ingest", key, outputs)
    outputs[-1].unlink()  # deleted
    assert not caching.outputs_current("ingest", key, outputs)
    write_outputs(outputs[-1:])
    caching.write_stamp("ingest", key, outputs)
    (caching.STAMP_DIR / "ingest.json").write_text("{not json", encoding="utf-8")
    assert not caching.outputs_current("ingest", key, outputs)


def test_ingest_key_follows_the_data_section_and_the_corpus_content(workspace: Path) -> None:
    cfg = cfg_for(workspace)
    key = caching.ingest_key(cfg)
    assert caching.ingest_key(cfg_for(workspace)) == key  # deterministic
    assert caching.ingest_key(cfg_for(workspace, data={"max_chars": 500})) != key
    assert caching.ingest_key(cfg_for(workspace, vocab={"size": 123})) == key  # not its section

    corpus = workspace / "corpus.tsv"
    original = corpus.read_bytes()
    corpus.write_bytes(original.replace(b"Gott", b"Herr", 1))
    assert caching.ingest_key(cfg) != key
    corpus.write_bytes(original)  # the content counts, not the file's time
    assert caching.ingest_key(cfg) == key


def test_vocab_key_follows_splits_section_and_warm_start_vocabulary(workspace: Path) -> None:
    cfg = cfg_for(workspace)
    prepared = Path(cfg.data.prepared_dir)
    write_outputs([prepared / "train.parquet", prepared / "valid.parquet"])
    key = caching.vocab_key(cfg)
    assert caching.vocab_key(cfg_for(workspace, vocab={"size": 123})) != key
    (prepared / "valid.parquet").write_bytes(b"v2")
    assert caching.vocab_key(cfg) != key
    (prepared / "valid.parquet").write_bytes(b"v1")
    assert caching.vocab_key(cfg) == key
    (prepared / "test.parquet").write_bytes(b"not an input of vocab")
    assert caching.vocab_key(cfg) == key

    source_vocab = workspace / "champion-vocab"
    source_vocab.mkdir()
    (source_vocab / "tokenizer.json").write_text('{"v": 1}', encoding="utf-8")
    warm = WarmStartSource(workspace / "best.pt", source_vocab, "champion v1")
    warm_key = caching.vocab_key(cfg, warm)
    assert warm_key != key  # copied from the source model instead of trained
    no_vocab = WarmStartSource(workspace / "best.pt", None, "a checkpoint")
    assert caching.vocab_key(cfg, no_vocab) == key
    (source_vocab / "tokenizer.json").write_text('{"v": 2}', encoding="utf-8")
    assert caching.vocab_key(cfg, warm) != warm_key  # the vocabulary's content counts
    (source_vocab / "tokenizer.json").write_text('{"v": 1}', encoding="utf-8")
    assert caching.vocab_key(cfg, warm) == warm_key
    (source_vocab / "tokenizer.json").rename(source_vocab / "renamed.json")
    assert caching.vocab_key(cfg, warm) != warm_key  # so do the file names in it
