"""The pipeline's five stages, one function each: files in, files out, a small result back.

The Prefect flow, the DVC stage commands (through the CLI) and the tests all call these
same functions; nothing else in the project re-implements a stage.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from seq2seq_core.config import PipelineConfig
from seq2seq_core.data import prepare_corpus, read_prepared_split
from seq2seq_core.distributed import topology
from seq2seq_core.host_memory import retain_freed_host_memory
from seq2seq_core.tokenization import SubwordTokenizer
from seq2seq_core.training import TrainCallback, TrainResult, train_model
from seq2seq_core.warm_start import WarmStartSource, vocab_sha256

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestResult:
    prepared_dir: str
    report_path: str
    counts: dict[str, int]


@dataclass(frozen=True)
class VocabResult:
    vocab_dir: str
    src_vocab_size: int
    tgt_vocab_size: int
    coverage: dict[str, float]


@dataclass(frozen=True)
class EvaluateResult:
    metrics_path: str
    metrics: dict[str, Any]
    samples_path: str
    plot_paths: list[str]


def ingest(cfg: PipelineConfig) -> IngestResult:
    out_dir = Path(cfg.data.prepared_dir)
    report = prepare_corpus(cfg.data, out_dir)
    return IngestResult(
        prepared_dir=str(out_dir),
        report_path=str(out_dir / "report.json"),
        counts={split: report["splits"][split]["pairs"] for split in ("train", "valid", "test")},
    )


def build_vocab(cfg: PipelineConfig, warm_start: WarmStartSource | None = None) -> VocabResult:
    """Train the vocabulary on the train split, or, warm-starting from a model that has its
    own (``warm_start``, which the caller resolved from ``train.init_from``), copy that one:
    the model's embeddings are only meaningful with the vocabulary they were trained on.
    """
    source = warm_start
    out_dir = Path(cfg.vocab.out_dir)
    if source is not None and source.vocab_dir is not None:
        tokenizer = copy_vocabulary(source.vocab_dir, out_dir)
        log.info("vocabulary reused from %s (%s)", source.label, source.vocab_dir)
    else:
        if source is not None:
            log.info(
                "warm start from %s brings no vocabulary: training %s as usual; the train "
                "stage checks that it is the one the source was trained with", source.label,
                out_dir,
            )  # fmt: skip
        train = read_prepared_split(Path(cfg.data.prepared_dir), "train")
        tokenizer = SubwordTokenizer.train(
            train["src"].tolist(), train["tgt"].tolist(), cfg.vocab, out_dir
        )
    # Coverage on held-out text: a high <unk> rate means vocab.size or
    # vocab.character_coverage is too small for this corpus (e.g. Chinese).
    valid = read_prepared_split(Path(cfg.data.prepared_dir), "valid")
    coverage = tokenizer.coverage(valid["src"].tolist(), valid["tgt"].tolist())
    write_json(out_dir / "coverage.json", {"split": "valid", **coverage})
    return VocabResult(
        vocab_dir=cfg.vocab.out_dir,
        src_vocab_size=tokenizer.src_vocab_size,
        tgt_vocab_size=tokenizer.tgt_vocab_size,
        coverage=coverage,
    )


def copy_vocabulary(source_dir: Path, out_dir: Path) -> SubwordTokenizer:
    """Copy a tokenizer's files into ``out_dir`` (the manifest last, each by rename, so a
    killed copy never leaves a manifest naming missing files); returns it loaded there."""
    source = SubwordTokenizer.load(Path(source_dir))
    if Path(source_dir).resolve() == out_dir.resolve():
        return source
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        files = source.files()  # the manifest first
        for path in files:
            shutil.copyfile(path, tmp / path.name)
        for path in [*files[1:], files[0]]:
            os.replace(tmp / path.name, out_dir / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return SubwordTokenizer.load(out_dir)


def train(
    cfg: PipelineConfig,
    callbacks: list[TrainCallback] | None = None,
    warm_start: WarmStartSource | None = None,
) -> TrainResult:
    """Train on the prepared splits with the workspace vocabulary. ``warm_start`` (the
    caller's resolution of ``train.init_from``: flows/warm_start.py) seeds a fresh run's
    weights; a resumable last.pt of this run wins over it."""
    prepared, vocab_dir = Path(cfg.data.prepared_dir), Path(cfg.vocab.out_dir)
    source = warm_start
    tokenizer = SubwordTokenizer.load(vocab_dir)
    train_df = read_prepared_split(prepared, "train")
    valid_df = read_prepared_split(prepared, "valid")
    result = train_model(
        cfg,
        tokenizer=tokenizer,
        train_pairs=list(zip(train_df["src"], train_df["tgt"], strict=True)),
        valid_pairs=list(zip(valid_df["src"], valid_df["tgt"], strict=True)),
        checkpoint_dir=Path(cfg.train.checkpoint_dir),
        callbacks=callbacks or [],
        warm_start=source,
        vocab_sha256=vocab_sha256(vocab_dir),
    )
    summary = {k: v for k, v in asdict(result).items() if k != "history"}
    if topology().is_main:  # under torchrun, rank 0 writes the reports like the checkpoints
        write_json(Path(cfg.evaluate.reports_dir) / "train.json", summary)
    return result


def evaluate(cfg: PipelineConfig) -> EvaluateResult:
    # Imported here so that ingest/vocab do not pay for matplotlib and sacrebleu.
    from seq2seq_core.evaluation import evaluate_split

    retain_freed_host_memory()  # greedy and beam decoding re-allocate per step, like training
    return EvaluateResult(**evaluate_split(cfg))


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON atomically so a killed stage never leaves a half-written output."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def result_dict(result: Any) -> dict[str, Any]:
    return asdict(result)
