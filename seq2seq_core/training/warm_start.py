"""Warm start: begin training from another model's weights (and vocabulary) instead of noise.

``train.init_from`` names the source: ``none``, a local checkpoint directory, ``champion``
or ``models:/NAME@ALIAS``. The core resolves only the first two (``local_source``); the
registry references need MLflow, so flows/ downloads the registered model and hands the
stages a ``WarmStartSource`` of local files. ``load_warm_start`` then checks that the
source fits this run (architecture and vocabulary, naming both sides when not) and loads
its weights, and its optimizer and LR schedule unless ``train.reset_optimizer``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seq2seq_core.config import ModelConfig, TrainConfig
from seq2seq_core.data.tokenization import SubwordTokenizer
from seq2seq_core.model.checkpoint import CheckpointDir, load_checkpoint, model_config_from
from seq2seq_core.training.optim import LearningRate

log = logging.getLogger(__name__)

# Model settings that do not change the parameters or what they mean: may differ.
TRAINING_ONLY_MODEL_KEYS = ("dropout",)


class WarmStartError(ValueError):
    """The warm-start source cannot be used: unresolvable here, missing, or unfit."""


@dataclass(frozen=True)
class WarmStartSource:
    checkpoint: Path  # .pt with model_state (+ optimizer_state / lr_schedule if it has them)
    vocab_dir: Path | None  # the source model's tokenizer files; None: the workspace's
    label: str  # what the log says, e.g. "champion v3 (models:/seq2seq-translator@champion)"


@dataclass(frozen=True)
class Vocabulary:
    """A vocabulary as a warm start compares it: sizes and a content hash of its files."""

    name: str
    src_size: int
    tgt_size: int
    sha256: str | None  # None where unknown (a checkpoint written before hashes existed)

    def __str__(self) -> str:
        sha = self.sha256[:8] if self.sha256 else "unknown"
        return f"{self.name} (sha {sha}, {self.src_size}/{self.tgt_size})"

    def fits(self, other: Vocabulary) -> bool:
        same_sizes = (self.src_size, self.tgt_size) == (other.src_size, other.tgt_size)
        known = self.sha256 is not None and other.sha256 is not None
        return same_sizes and (not known or self.sha256 == other.sha256)


def local_source(init_from: str, reset_optimizer: bool) -> WarmStartSource | None:
    """``train.init_from`` when the core can resolve it: None for ``none``; for a checkpoint
    directory its ``best.pt`` (``reset_optimizer``) or its ``last.pt`` (with optimizer and
    LR schedule), and its ``vocab/`` if it has one."""
    if init_from == "none":
        return None
    if init_from == "champion" or init_from.startswith("models:/"):
        raise WarmStartError(
            f"train.init_from: {init_from!r} is a model registry reference; the pipeline or "
            "the seq2seq CLI resolves it to local files (seq2seq_core cannot reach MLflow)"
        )
    directory = Path(init_from)
    if not directory.is_dir():
        raise WarmStartError(f"train.init_from: {directory} is not a checkpoint directory")
    checkpoint = CheckpointDir(directory).best if reset_optimizer else CheckpointDir(directory).last
    if not checkpoint.is_file():
        raise WarmStartError(f"train.init_from: {checkpoint} does not exist")
    vocab = directory / "vocab"
    vocab_dir = vocab if (vocab / "tokenizer.json").is_file() else None
    return WarmStartSource(checkpoint, vocab_dir, f"{checkpoint}")


def vocab_sha256(vocab_dir: Path) -> str:
    """A hash of a tokenizer's files (manifest and models, by name and content): equal for
    a copied vocabulary, different for one trained with other settings or data."""
    digest = hashlib.sha256()
    for path in sorted(SubwordTokenizer.load(Path(vocab_dir)).files()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def source_identity(source: WarmStartSource | None, reset_optimizer: bool) -> str | None:
    """What a resumable last.pt must have started from: the source file's sha256."""
    if source is None:
        return None
    digest = hashlib.sha256(Path(source.checkpoint).read_bytes()).hexdigest()
    return f"{digest}:reset_optimizer={reset_optimizer}"


def load_warm_start(
    source: WarmStartSource,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: LearningRate,
    *,
    model_cfg: ModelConfig,
    tc: TrainConfig,
    vocab: Vocabulary,
) -> int:
    """Load the source into a freshly built model (and optimizer); returns the optimizer
    step to continue from (0 with a fresh optimizer). Raises ``WarmStartError`` when the
    source's architecture or vocabulary differ from this run's."""
    payload = load_checkpoint(source.checkpoint, "cpu")
    check_architecture(source.label, payload, model_cfg)
    check_vocabulary(source, payload, vocab)
    model.load_state_dict(payload["model_state"])
    log.info("warm start from %s: weights of %s", source.label, source.checkpoint)
    if tc.reset_optimizer or "optimizer_state" not in payload:
        why = "train.reset_optimizer" if tc.reset_optimizer else "the source carries none"
        log.info("warm start: a fresh optimizer and LR schedule (%s)", why)
        return 0
    optimizer.load_state_dict(payload["optimizer_state"])
    schedule.load_state_dict(payload.get("lr_schedule", {}))
    step = int(payload.get("progress", {}).get("step", 0))
    log.info("warm start: the source's optimizer and LR schedule, continuing at step %d", step)
    return step


def check_architecture(label: str, payload: dict[str, Any], model_cfg: ModelConfig) -> None:
    theirs, ours = dataclasses.asdict(model_config_from(payload)), dataclasses.asdict(model_cfg)
    differ = [
        f"model.{k} {theirs[k]!r}, params.yaml has {ours[k]!r}"
        for k in ours
        if k not in TRAINING_ONLY_MODEL_KEYS and theirs[k] != ours[k]
    ]
    if differ:
        raise WarmStartError(f"cannot warm-start from {label}: its model has " + "; ".join(differ))


def check_vocabulary(source: WarmStartSource, payload: dict[str, Any], ours: Vocabulary) -> None:
    sha = payload.get("vocab_sha256")
    if sha is None and source.vocab_dir is not None:
        sha = vocab_sha256(source.vocab_dir)
    theirs = Vocabulary(
        "its vocabulary", int(payload["src_vocab_size"]), int(payload["tgt_vocab_size"]), sha
    )
    if not theirs.fits(ours):
        raise WarmStartError(f"cannot warm-start from {source.label}: {theirs} is not {ours}")
