"""The pipeline's four stages in the ML library, one function each: ingest, build_vocab,
train, evaluate. Files in, files out, a small result back.

The Prefect flow, the DVC stage commands (through the CLI) and the tests all call these
same functions; nothing else in the project re-implements a stage. The fifth step of the
pipeline, register, is MLflow through and through and lives in ``flows/register_stage.py``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from seq2seq_core.config import PipelineConfig
from seq2seq_core.data.prepare import prepare_corpus, read_prepared_split
from seq2seq_core.data.tokenization import SubwordTokenizer
from seq2seq_core.model.checkpoint import CheckpointDir
from seq2seq_core.runtime.distributed import topology
from seq2seq_core.runtime.files import (
    publish,
    remove_stale_temp_files,
    staging_dir,
    write_json,
    write_text,
)
from seq2seq_core.runtime.host_memory import retain_freed_host_memory
from seq2seq_core.training.loop import TrainCallback, TrainResult, train_model
from seq2seq_core.training.warm_start import WarmStartSource, vocab_sha256

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from seq2seq_core.decoding.translator import Translator

# The primary system's test translations and their references, one line per test pair in
# test order: what the promotion gate's paired bootstrap compares between two models.
HYPOTHESES_FILE = "test_hypotheses.txt"
REFERENCES_FILE = "test_references.txt"


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


def start_clean(folder: Path) -> None:
    """Remove what a killed run of the stage that owns ``folder`` left half-written there
    (power loss, SIGKILL: its temporary files; runtime/files.py), and say so in the log."""
    removed = remove_stale_temp_files(folder)
    if removed:
        log.warning(
            "removed %d stale temporary file(s) in %s left by an interrupted run", removed, folder
        )


def ingest(cfg: PipelineConfig) -> IngestResult:
    out_dir = Path(cfg.data.prepared_dir)
    start_clean(out_dir)
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
    start_clean(out_dir)
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
    with staging_dir(out_dir) as tmp:
        files = source.files()  # the manifest first
        for path in files:
            shutil.copyfile(path, tmp / path.name)
        publish(tmp, out_dir, [p.name for p in [*files[1:], files[0]]])
    return SubwordTokenizer.load(out_dir)


def train(
    cfg: PipelineConfig,
    callbacks: list[TrainCallback] | None = None,
    warm_start: WarmStartSource | None = None,
) -> TrainResult:
    """Train on the prepared splits with the workspace vocabulary. ``warm_start`` (the
    caller's resolution of ``train.init_from``: flows/init_from.py) seeds a fresh run's
    weights; a resumable last.pt of this run wins over it."""
    prepared, vocab_dir = Path(cfg.data.prepared_dir), Path(cfg.vocab.out_dir)
    source = warm_start
    if topology().is_main:  # rank 0 alone writes the checkpoints
        start_clean(Path(cfg.train.checkpoint_dir))
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


def evaluate(cfg: PipelineConfig, split: str = "test") -> EvaluateResult:
    """Decode a prepared split with the best checkpoint, greedy and (decode.beam_size > 1)
    beam search; write hypotheses, per-length BLEU, samples, plots and, last, metrics.json:
    the stage's "done" mark, so that a run stopped part way (a full disk) leaves no metrics
    beside missing or stale hypotheses for register to pair them with."""
    # Imported here so that ingest/vocab do not pay for matplotlib and sacrebleu.
    from seq2seq_core.evaluation import reports
    from seq2seq_core.evaluation.metrics import bleu_tokenizer, target_language

    retain_freed_host_memory()  # greedy and beam decoding re-allocate per step, like training
    reports_dir = Path(cfg.evaluate.reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    start_clean(reports_dir)
    translator = _evaluation_translator(cfg)
    df = read_prepared_split(Path(cfg.data.prepared_dir), split).rename(columns={"tgt": "ref"})
    # sacrebleu's tokenizer for the target language
    tokenize = bleu_tokenizer(target_language(Path(cfg.data.prepared_dir), cfg.data.tgt_lang))
    metrics, primary = _decode_and_score(cfg, translator, df, split, tokenize)
    for name, lines in ((HYPOTHESES_FILE, df[primary]), (REFERENCES_FILE, df["ref"])):
        write_text(reports_dir / name, "".join(line.replace("\n", " ") + "\n" for line in lines))
    length_rows = _length_bleu(cfg, df, primary, tokenize)
    samples_path = reports.write_samples(df, reports_dir, cfg.evaluate.samples)
    plots = _evaluation_plots(cfg, translator, df["src"].tolist(), length_rows)
    metrics_path = reports_dir / "metrics.json"
    write_json(metrics_path, metrics)
    return EvaluateResult(
        metrics_path=str(metrics_path),
        metrics=metrics,
        samples_path=str(samples_path),
        plot_paths=[str(p) for p in plots if p],
    )


def _evaluation_translator(cfg: PipelineConfig) -> Translator:
    from seq2seq_core.decoding.translator import Translator
    from seq2seq_core.runtime.device import resolve_device
    from seq2seq_core.runtime.precision import set_tf32

    device = resolve_device(cfg.train.device)
    set_tf32(device, cfg.train.tf32)
    # The input limit protects a server from abuse; the test set is scored whole.
    decode = dataclasses.replace(cfg.decode, max_input_tokens=sys.maxsize)
    return Translator.load(
        CheckpointDir(cfg.train.checkpoint_dir).best, Path(cfg.vocab.out_dir), decode,
        device=device, max_input_chars=sys.maxsize,
    )  # fmt: skip


def _decode_and_score(
    cfg: PipelineConfig, translator: Translator, df: pd.DataFrame, split: str, tokenize: str
) -> tuple[dict[str, Any], str]:
    """Adds a column of translations per system to ``df``; returns the metrics (the primary
    system first, under ``split``) and the primary system's name."""
    from seq2seq_core.evaluation.metrics import eval_set_digest, score_translations

    sources, references = df["src"].tolist(), df["ref"].tolist()
    digest = eval_set_digest(sources, references)
    systems = {"greedy": 1} | ({"beam": cfg.decode.beam_size} if cfg.decode.beam_size > 1 else {})
    metrics: dict[str, Any] = {}
    for name, beam in systems.items():
        start = time.perf_counter()
        df[name] = translator.translate(sources, beam_size=beam) if sources else []
        seconds = time.perf_counter() - start
        metrics[f"{split}_{name}"] = {
            **score_translations(df[name].tolist(), references, tokenize),
            "sentences": len(df),
            "test_set_sha256": digest,
            "decode": {"method": name, "beam_size": beam, "seconds": round(seconds, 3)}
            | ({"length_penalty": cfg.decode.length_penalty} if beam > 1 else {}),
            "sentences_per_s": round(len(df) / seconds, 2) if seconds > 0 else None,
        }
    primary = "beam" if "beam" in systems else "greedy"
    # `split` is the primary system, the one registered and compared by the promotion gate.
    return {split: metrics[f"{split}_{primary}"], **metrics}, primary


def _length_bleu(
    cfg: PipelineConfig, df: pd.DataFrame, primary: str, tokenize: str
) -> list[dict[str, Any]]:
    """BLEU per source-length bucket of the primary system, also as length_bleu.csv."""
    from seq2seq_core.evaluation import reports
    from seq2seq_core.evaluation.metrics import bleu_by_length

    hypotheses, width = df[primary].tolist(), cfg.evaluate.length_bucket_width
    rows = bleu_by_length(df["src"].tolist(), hypotheses, df["ref"].tolist(), width, tokenize)
    table = pd.DataFrame(rows, columns=["bucket", "sentences", "bleu"])
    reports.write_csv(table, Path(cfg.evaluate.reports_dir) / "length_bleu.csv")
    return rows


def _evaluation_plots(
    cfg: PipelineConfig, translator: Translator, sources: list[str], length_rows: list[dict]
) -> list[Path | None]:
    """Loss curve (and its table), per-length BLEU and attention heatmaps."""
    from seq2seq_core.evaluation import reports

    reports_dir = Path(cfg.evaluate.reports_dir)
    plots_dir = reports_dir / "plots"
    history_path = CheckpointDir(cfg.train.checkpoint_dir).history
    history = json.loads(history_path.read_text()) if history_path.exists() else []
    reports.write_csv(pd.DataFrame(history), reports_dir / "train_history.csv")
    plots = [reports.save_loss_curve(history, plots_dir / "loss.png")]
    if length_rows:
        plots.append(reports.save_length_plot(length_rows, plots_dir / "length_bleu.png"))
    plots += _attention_heatmaps(translator, sources, cfg.evaluate.heatmap_sentences, plots_dir)
    return plots


def _attention_heatmaps(
    translator: Translator, sources: list[str], n: int, out_dir: Path
) -> list[Path]:
    """Greedy attention for the first `n` test sentences of at most 40 tokens (a fixed
    choice, so heatmaps of two runs show the same sentences)."""
    from seq2seq_core.data.cleaning import count_tokens
    from seq2seq_core.decoding.greedy import greedy_decode
    from seq2seq_core.evaluation import reports

    if n <= 0 or translator.model.decoder.attention is None:
        return []
    for stale in out_dir.glob("attention_*.png"):
        stale.unlink()
    tok = translator.tokenizer
    chosen = [s for s in sources if count_tokens(s) <= 40][:n]
    src_ids = tok.encode_src(chosen)
    out = greedy_decode(
        translator.model,
        src_ids,
        batch_size=len(chosen) or 1,
        max_len_ratio=translator.decode.max_len_ratio,
        max_len_extra=translator.decode.max_len_extra,
        return_attention=True,
        device=translator.device,
        precision=translator.decode.precision,
    )
    paths = []
    for i, (ids, out_ids, weights) in enumerate(
        zip(src_ids, out.ids, out.attention or [], strict=False)
    ):
        if weights is None or not out_ids:
            continue
        paths.append(
            reports.save_attention_heatmap(
                weights.numpy(),
                tok.id_to_piece(ids, side="src"),
                tok.id_to_piece(out_ids, side="tgt"),
                out_dir / f"attention_{i + 1}.png",
                chosen[i][:80],
            )
        )
    return paths
