"""The pipeline's five stages, one function each: files in, files out, a small result back.

The Prefect flow, the DVC stage commands (through the CLI) and the tests all call these
same functions; nothing else in the project re-implements a stage.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from seq2seq_core.config import PipelineConfig
from seq2seq_core.data import prepare_corpus, read_prepared_split
from seq2seq_core.distributed import topology
from seq2seq_core.host_memory import retain_freed_host_memory
from seq2seq_core.tokenization import SubwordTokenizer
from seq2seq_core.training import TrainCallback, TrainResult, train_model


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


def build_vocab(cfg: PipelineConfig) -> VocabResult:
    train = read_prepared_split(Path(cfg.data.prepared_dir), "train")
    tokenizer = SubwordTokenizer.train(
        train["src"].tolist(), train["tgt"].tolist(), cfg.vocab, Path(cfg.vocab.out_dir)
    )
    # Coverage on held-out text: a high <unk> rate means vocab.size or
    # vocab.character_coverage is too small for this corpus (e.g. Chinese).
    valid = read_prepared_split(Path(cfg.data.prepared_dir), "valid")
    coverage = tokenizer.coverage(valid["src"].tolist(), valid["tgt"].tolist())
    write_json(Path(cfg.vocab.out_dir) / "coverage.json", {"split": "valid", **coverage})
    return VocabResult(
        vocab_dir=cfg.vocab.out_dir,
        src_vocab_size=tokenizer.src_vocab_size,
        tgt_vocab_size=tokenizer.tgt_vocab_size,
        coverage=coverage,
    )


def train(cfg: PipelineConfig, callbacks: list[TrainCallback] | None = None) -> TrainResult:
    prepared = Path(cfg.data.prepared_dir)
    tokenizer = SubwordTokenizer.load(Path(cfg.vocab.out_dir))
    train_df = read_prepared_split(prepared, "train")
    valid_df = read_prepared_split(prepared, "valid")
    result = train_model(
        cfg,
        tokenizer=tokenizer,
        train_pairs=list(zip(train_df["src"], train_df["tgt"], strict=True)),
        valid_pairs=list(zip(valid_df["src"], valid_df["tgt"], strict=True)),
        checkpoint_dir=Path(cfg.train.checkpoint_dir),
        callbacks=callbacks or [],
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
