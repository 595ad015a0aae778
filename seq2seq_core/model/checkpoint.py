"""Checkpoints that rebuild the model on their own and load with ``weights_only=True``.

Only tensors, dicts, lists, str, int, float, bool and None go in (no dataclasses, no
pickled objects), so ``torch.load(..., weights_only=True)`` accepts them. Every save writes
a temporary file next to the target, fsyncs it and renames it over the target
(``runtime.files.atomic_file``), so a process killed mid-save or a power cut leaves the
previous checkpoint intact, and a full disk leaves no temporary file behind.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seq2seq_core.config import ModelConfig
from seq2seq_core.model.seq2seq import Seq2Seq, build_model
from seq2seq_core.runtime.files import atomic_file


@dataclass(frozen=True)
class CheckpointDir:
    """The files training keeps in ``train.checkpoint_dir``: their names live here only."""

    path: Path

    @property
    def best(self) -> Path:
        """The best validated weights (or their average): what evaluation and serving use."""
        return Path(self.path) / "best.pt"

    @property
    def last(self) -> Path:
        """Weights, optimizer, schedule, RNG and state: what a resumed run continues from."""
        return Path(self.path) / "last.pt"

    @property
    def history(self) -> Path:
        """Per-epoch validation numbers, as JSON."""
        return Path(self.path) / "history.json"


class CheckpointError(ValueError):
    """A checkpoint file is missing keys or was written by an incompatible version."""


# The payload layout this code writes and reads. Bump it when a change would make older code
# misread a new checkpoint; load_checkpoint refuses a version it does not know.
FORMAT_VERSION = 1
REQUIRED_KEYS = ("model_state", "model_config", "src_vocab_size", "tgt_vocab_size")


def model_payload(
    model: Seq2Seq,
    model_cfg: ModelConfig,
    src_vocab_size: int,
    tgt_vocab_size: int,
    vocab_sha256: str | None = None,
) -> dict[str, Any]:
    """What any checkpoint holds: enough to rebuild the model with ``build_model``, and
    the identity of the vocabulary it was trained with (``warm_start.vocab_sha256``;
    None where the tokenizer has no files), which a warm start checks."""
    return {
        "format_version": FORMAT_VERSION,
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model_config": dataclasses.asdict(model_cfg),
        "src_vocab_size": int(src_vocab_size),
        "tgt_vocab_size": int(tgt_vocab_size),
        "vocab_sha256": vocab_sha256,
    }


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    # A file object, not a path: torch's own writer would turn ENOSPC into a bare
    # RuntimeError; through Python's file the OSError stays behind it (runtime/files.py).
    with atomic_file(path) as handle:
        torch.save(payload, handle)


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    payload = torch.load(path, map_location=device, weights_only=True)
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: not a seq2seq checkpoint (missing {', '.join(missing)})")
    version = payload.get("format_version", FORMAT_VERSION)  # absent: written before versions
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format_version {version!r} is not one this code reads "
            f"(1 to {FORMAT_VERSION}); it was written by a newer or unknown version"
        )
    return payload


# What a checkpoint written before a ModelConfig key existed was built with, where that
# differs from the key's current default: such a checkpoint must rebuild the same modules.
MODEL_KEYS_BEFORE_THEY_EXISTED: dict[str, Any] = {"tie_embeddings": "none"}


def model_config_from(payload: dict[str, Any]) -> ModelConfig:
    # Keys a later ModelConfig dropped are ignored; keys it added take the value that the
    # model was built with before they existed.
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    saved = {**MODEL_KEYS_BEFORE_THEY_EXISTED, **payload["model_config"]}
    return ModelConfig(**{k: v for k, v in saved.items() if k in known})


def load_model(path: Path, device: str | torch.device = "cpu") -> tuple[Seq2Seq, dict[str, Any]]:
    """Rebuild the model from a checkpoint; returns (model in eval mode, the other entries)."""
    payload = load_checkpoint(path, device)
    model = build_model(
        model_config_from(payload), payload["src_vocab_size"], payload["tgt_vocab_size"]
    )
    model.load_state_dict(payload["model_state"])
    model.to(device).eval()
    meta = {k: v for k, v in payload.items() if k not in ("model_state", "optimizer_state")}
    return model, meta
