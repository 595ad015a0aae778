"""Checkpoint averaging: weight snapshots in the budget's final quarter, their element-wise
mean, and the choice between that mean and the best single checkpoint.

Averaging the weights of the last few checkpoints of one run (Vaswani et al. 2017; Popel
and Bojar 2018, "Training Tips for the Transformer Model") smooths out the noise of the last
updates and usually scores a little higher than any one of them. Only checkpoints of one
architecture and one vocabulary can be averaged; anything else raises naming the file.
Training and ``seq2seq average`` both call ``average_checkpoints``.

With ``train.average_checkpoints: K`` (K >= 2), every last.pt save once a quarter of the
budget is left (``Horizon.fraction`` >= ``WINDOW_START``: time or epochs, whichever ends
first) also writes ``avg-snapshot-<step>.pt`` next to it, keeping the newest K. Saves come
every ``train.checkpoint_every_steps`` steps, at each epoch end and at the budget stop, so
K snapshots need a final quarter of about K x checkpoint_every_steps steps. They are
files, written atomically, so they survive a kill: a resumed run drops only those of steps
it will train again (after its last.pt) and those of another run (another fingerprint).

At the end the K are averaged and validated like every epoch (``validation.py``); the
average becomes best.pt when its validation BLEU is at least the best single checkpoint's.
``CheckpointChoice`` records which was kept and both BLEUs.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from seq2seq_core.config import PipelineConfig
from seq2seq_core.model.checkpoint import (
    FORMAT_VERSION,
    load_checkpoint,
    model_config_from,
    save_checkpoint,
)
from seq2seq_core.model.seq2seq import build_model
from seq2seq_core.runtime.distributed import MessageError
from seq2seq_core.training.validation import (
    Validation,
    ValidationTokenizer,
    validation_bleu,
    validation_loss,
)

log = logging.getLogger(__name__)

WINDOW_START = 0.75  # snapshots in the last 25% of the budget
PREFIX = "avg-snapshot-"


class Snapshots:
    """The newest ``keep`` weight snapshots of one run, as files in ``directory``."""

    def __init__(self, directory: Path, keep: int, fingerprint: str) -> None:
        self.directory, self.keep, self.fingerprint = Path(directory), keep, fingerprint

    @property
    def enabled(self) -> bool:
        return self.keep >= 2

    def paths(self) -> list[Path]:
        """This directory's snapshots, oldest step first."""
        found = self.directory.glob(f"{PREFIX}*.pt")
        return sorted(found, key=lambda p: int(p.stem.removeprefix(PREFIX)))

    def forget_after(self, step: int) -> None:
        """Delete snapshots of steps after ``step`` (a resumed run trains them again) and
        those another run wrote; a fresh run passes 0 and starts with none."""
        for path in self.paths():
            theirs = torch.load(path, weights_only=True, mmap=True).get("fingerprint")
            if int(path.stem.removeprefix(PREFIX)) > step or theirs != self.fingerprint:
                path.unlink(missing_ok=True)

    def take(self, step: int, fraction: float, payload: dict[str, Any]) -> bool:
        """Write a snapshot of ``payload`` (a ``model_payload``) at optimizer step ``step``
        when ``fraction`` of the budget is in the window; keep the newest ``keep``."""
        if not self.enabled or fraction < WINDOW_START:
            return False
        path = self.directory / f"{PREFIX}{step}.pt"
        save_checkpoint(path, {**payload, "fingerprint": self.fingerprint, "step": step})
        for old in self.paths()[: -self.keep]:
            old.unlink(missing_ok=True)
        return True


@dataclass(frozen=True)
class CheckpointChoice:
    """What best.pt holds after training: ``averaged`` or ``single``, and why."""

    kept_checkpoint: str  # "averaged" | "single"
    average_checkpoints: int  # train.average_checkpoints (K)
    snapshots: int  # how many were averaged (< K when the final quarter had fewer saves)
    averaged_valid_bleu: float | None  # None: fewer than two snapshots, nothing averaged
    single_valid_bleu: float


def choice_from_json(value: Any) -> CheckpointChoice | None:
    """The ``CheckpointChoice`` (or None) rank 0 broadcast as JSON, its shape checked:
    exactly the fields, each of its type (``MessageError`` otherwise)."""
    if value is None:
        return None
    fields = {f.name for f in dataclasses.fields(CheckpointChoice)}
    if not isinstance(value, dict) or set(value) != fields:
        raise MessageError("checkpoint choice: expected an object with its fields")
    averaged = value["averaged_valid_bleu"]
    ok = (
        value["kept_checkpoint"] in ("averaged", "single")
        and all(_is_int(value[k]) for k in ("average_checkpoints", "snapshots"))
        and (averaged is None or _is_number(averaged))
        and _is_number(value["single_valid_bleu"])
    )
    if not ok:
        raise MessageError("checkpoint choice: a field has the wrong type or value")
    return CheckpointChoice(
        kept_checkpoint=value["kept_checkpoint"],
        average_checkpoints=value["average_checkpoints"],
        snapshots=value["snapshots"],
        averaged_valid_bleu=None if averaged is None else float(averaged),
        single_valid_bleu=float(value["single_valid_bleu"]),
    )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


class Scoring(Protocol):
    cfg: PipelineConfig
    tokenizer: ValidationTokenizer
    valid: Validation
    device: torch.device


def choose_checkpoint(
    snapshots: Snapshots, best_path: Path, single_bleu: float, scoring: Scoring
) -> CheckpointChoice:
    """Average the snapshots, validate the average, and write it over ``best_path`` when
    its validation BLEU >= ``single_bleu`` (the best single checkpoint's)."""
    paths = snapshots.paths()
    if len(paths) < 2:
        log.warning(
            "checkpoint averaging: %d snapshot(s) in the budget's final quarter, not averaging "
            "(lower train.checkpoint_every_steps for more)", len(paths),
        )  # fmt: skip
        return CheckpointChoice("single", snapshots.keep, len(paths), None, single_bleu)
    payload = average_checkpoints(paths)
    valid = score(payload, scoring)
    kept = "averaged" if valid["valid_bleu"] >= single_bleu else "single"
    if kept == "averaged":
        save_checkpoint(best_path, {**payload, "valid": valid})
    log.info(
        "checkpoint averaging: the mean of %d snapshots (steps %s) has valid BLEU %.2f, the "
        "best single checkpoint %.2f: best.pt is the %s one", len(paths),
        ", ".join(p.stem.removeprefix(PREFIX) for p in paths), valid["valid_bleu"],
        single_bleu, kept,
    )  # fmt: skip
    return CheckpointChoice(kept, snapshots.keep, len(paths), valid["valid_bleu"], single_bleu)


def score(payload: dict[str, Any], scoring: Scoring) -> dict[str, float]:
    """Validation loss and BLEU of a checkpoint payload, as training validates each epoch."""
    model = build_model(
        model_config_from(payload), payload["src_vocab_size"], payload["tgt_vocab_size"]
    )
    model.load_state_dict(payload["model_state"])
    model.to(scoring.device)
    cfg, valid = scoring.cfg, scoring.valid
    loss = validation_loss(model, valid.batches, scoring.device, cfg.train.precision)
    bleu = validation_bleu(
        model, scoring.tokenizer, valid.bleu_src, valid.bleu_refs, cfg, scoring.device
    )
    return {"valid_loss": loss, "valid_bleu": bleu}


class AveragingError(ValueError):
    """The checkpoints cannot be averaged (none given, or they differ in what they are)."""


def average_checkpoints(paths: Sequence[Path]) -> dict[str, Any]:
    """A checkpoint payload (``model_payload``'s keys, loadable by ``load_model``) whose
    weights are the mean of ``paths``' weights, summed in float64 and cast back to each
    tensor's dtype; non-float tensors are the last checkpoint's. It carries no optimizer
    state (nothing resumes from an average) and lists its sources in ``averaged_from``."""
    if not paths:
        raise AveragingError("no checkpoints to average")
    first_path, first = Path(paths[0]), load_checkpoint(paths[0])
    sums = {k: v.to(torch.float64) for k, v in first["model_state"].items()}
    last_state = first["model_state"]
    for path in paths[1:]:
        payload = load_checkpoint(path)
        _check_same_model(first_path, first, Path(path), payload)
        for name, tensor in payload["model_state"].items():
            sums[name] += tensor.to(torch.float64)
        last_state = payload["model_state"]
    state = {
        name: (sums[name] / len(paths)).to(t.dtype) if t.is_floating_point() else t.clone()
        for name, t in last_state.items()
    }
    return {
        "format_version": FORMAT_VERSION,
        "model_state": state,
        "model_config": dataclasses.asdict(model_config_from(first)),
        "src_vocab_size": int(first["src_vocab_size"]),
        "tgt_vocab_size": int(first["tgt_vocab_size"]),
        "vocab_sha256": first.get("vocab_sha256"),
        "averaged_from": [str(p) for p in paths],
    }


def _check_same_model(
    first_path: Path, first: dict[str, Any], path: Path, payload: dict[str, Any]
) -> None:
    """Raise ``AveragingError`` naming ``path`` and what differs from ``first_path``."""
    ours, theirs = (dataclasses.asdict(model_config_from(p)) for p in (first, payload))
    differ = [f"model.{k} {theirs[k]!r} (vs {ours[k]!r})" for k in ours if theirs[k] != ours[k]]
    for key in ("src_vocab_size", "tgt_vocab_size"):
        if int(payload[key]) != int(first[key]):
            differ.append(f"{key} {payload[key]} (vs {first[key]})")
    sha_a, sha_b = first.get("vocab_sha256"), payload.get("vocab_sha256")
    if sha_a and sha_b and sha_a != sha_b:
        differ.append(f"vocabulary sha {sha_b[:8]} (vs {sha_a[:8]})")
    a, b = first["model_state"], payload["model_state"]
    if not differ and {k: v.shape for k, v in a.items()} != {k: v.shape for k, v in b.items()}:
        differ.append("its tensors' names or shapes")
    if differ:
        raise AveragingError(
            f"{path}: cannot average with {first_path}: it has " + "; ".join(differ)
        )
