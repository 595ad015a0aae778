"""Task result caching keyed by content: an unchanged ingest or vocab is not recomputed.

The key hashes the stage's parameter section and the contents of its inputs. A key alone
is not enough: another run with other parameters may have overwritten the outputs since
the cached run. So each stage also leaves a stamp (`.state/stamps/<stage>.json`) with the
key of the inputs that produced the outputs now on disk; when the stamp differs from the
current key, or an output is gone, the task runs with `refresh_cache=True`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from seq2seq_core.config import PipelineConfig
from seq2seq_core.data.bible import bible_db, is_bible_source
from seq2seq_core.training.warm_start import WarmStartSource

STAMP_DIR = Path(".state") / "stamps"


def _file_digest(path: Path, digest: Any) -> None:
    if path.is_dir():
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(str(child.relative_to(path)).encode())
            _file_digest(child, digest)
        return
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)


def _source_paths(source: str | None, cfg: PipelineConfig) -> list[Path]:
    if not source:
        return []
    if is_bible_source(source):
        return [bible_db()]  # 218 MB: hashed by size + mtime below, not content
    path = Path(source)
    if path.exists():
        return [path]
    data = cfg.data
    return [path.with_name(f"{path.name}.{lang}") for lang in (data.src_lang, data.tgt_lang)]


def content_key(stage: str, section: Any, inputs: Iterable[Path]) -> str:
    digest = hashlib.sha256(stage.encode())
    digest.update(json.dumps(asdict(section), sort_keys=True, default=str).encode())
    for path in inputs:
        digest.update(str(path).encode())
        if not path.exists():
            digest.update(b"<missing>")
        elif path.stat().st_size > 100 << 20:  # the Bible DB: never edited in place
            stat = path.stat()
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        else:
            _file_digest(path, digest)
    return digest.hexdigest()


def ingest_key(cfg: PipelineConfig) -> str:
    data = cfg.data
    inputs = [p for s in (data.source, data.valid_source, data.test_source)
              for p in _source_paths(s, cfg)]  # fmt: skip
    return content_key("ingest", data, inputs)


def vocab_key(cfg: PipelineConfig, warm_start: WarmStartSource | None = None) -> str:
    """The train/valid splits, the vocab section and, with a warm start, the content of
    the source model's vocabulary (which is then copied instead of trained)."""
    prepared = Path(cfg.data.prepared_dir)
    inputs = [prepared / "train.parquet", prepared / "valid.parquet"]
    if warm_start is not None and warm_start.vocab_dir is not None:
        inputs.append(Path(warm_start.vocab_dir))
    return content_key("vocab", cfg.vocab, inputs)


def ingest_outputs(cfg: PipelineConfig) -> list[Path]:
    prepared = Path(cfg.data.prepared_dir)
    return [prepared / f"{s}.parquet" for s in ("train", "valid", "test")] + [
        prepared / "report.json"
    ]


def vocab_outputs(cfg: PipelineConfig) -> list[Path]:
    return [Path(cfg.vocab.out_dir) / "tokenizer.json"]


def _fingerprint(outputs: Iterable[Path]) -> dict[str, str]:
    return {
        str(p): f"{p.stat().st_size}:{p.stat().st_mtime_ns}" if p.exists() else "missing"
        for p in outputs
    }


def outputs_current(stage: str, key: str, outputs: list[Path]) -> bool:
    """The outputs exist, untouched since this stage wrote them from inputs with `key`
    (a `dvc repro` or another run that rewrote them changes their size/mtime)."""
    stamp = STAMP_DIR / f"{stage}.json"
    if not stamp.is_file() or not all(p.exists() for p in outputs):
        return False
    try:
        recorded = json.loads(stamp.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return False
    return recorded.get("key") == key and recorded.get("outputs") == _fingerprint(outputs)


def write_stamp(stage: str, key: str, outputs: list[Path]) -> None:
    STAMP_DIR.mkdir(parents=True, exist_ok=True)
    payload = {"key": key, "outputs": _fingerprint(outputs)}
    (STAMP_DIR / f"{stage}.json").write_text(json.dumps(payload) + "\n", encoding="utf-8")
