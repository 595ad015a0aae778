"""Exact resume: which last.pt belongs to a run (its fingerprint), what it holds, restoring it.

last.pt carries the model, optimizer, LR schedule, RNG state and the ``TrainState`` (down
to the batch inside the epoch), so a rerun continues with the very batches, coins and
dropout masks an uninterrupted run would have used. A last.pt whose fingerprint differs
(another config, other data, another warm-start source) is never resumed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from seq2seq_core.config import PipelineConfig
from seq2seq_core.data.batches import EncodedPairs
from seq2seq_core.model.checkpoint import load_checkpoint
from seq2seq_core.training.optim import LearningRate
from seq2seq_core.training.state import TrainState

log = logging.getLogger(__name__)

# Train settings that change what the run computes; the others (max_epochs, the time budget,
# threads, device, paths) may change between a run and its resumption.
FINGERPRINT_TRAIN_KEYS = (
    "teacher_forcing",
    "teacher_forcing_schedule",
    "teacher_forcing_min",
    "teacher_forcing_decay_steps",
    "optimizer",
    "weight_decay",
    "lr_schedule",
    "warmup_steps",
    "plateau_factor",
    "plateau_patience",
    "min_lr",
    "label_smoothing",
    "accumulate_steps",
    "batch_tokens",
    "lr",
    "clip_grad",
    "seed",
    "max_len",
    "precision",
)


def run_fingerprint(
    cfg: PipelineConfig,
    src_vocab_size: int,
    tgt_vocab_size: int,
    train_data: EncodedPairs,
    valid_pairs: Sequence[tuple[str, str]],
    warm_start: str | None = None,
) -> str:
    """A hash of the model/train config and of the data as the model sees it (subword ids:
    this covers both the corpus and the tokenizer), the raw validation pairs and the
    warm-start source's identity (``warm_start.source_identity``), if any."""
    digest = hashlib.sha256()
    train = dataclasses.asdict(cfg.train)
    settings: dict[str, Any] = {
        "model": dataclasses.asdict(cfg.model),
        "train": {k: train[k] for k in FINGERPRINT_TRAIN_KEYS if k in train},
        "vocab": [src_vocab_size, tgt_vocab_size],
    }
    if warm_start is not None:
        settings["warm_start"] = warm_start
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for side in (train_data.src, train_data.tgt):
        for ids in side:
            digest.update(b",".join(str(i).encode() for i in ids) + b"\n")
    for src, tgt in valid_pairs:
        digest.update(f"{src}\t{tgt}\n".encode())
    return digest.hexdigest()


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's RNG: the CPU generator and, training on CUDA, its own device's."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def rng_payload(ranks: Sequence[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """last.pt's ``rng``: ``torch`` rank 0's CPU state, ``torch_ranks`` every rank's,
    ``cuda`` every rank's device state (rank order) when they train on CUDA. (Before,
    ``cuda`` held one state per GPU the saving process saw, and every rank took rank 0's.)"""
    rng: dict[str, Any] = {"torch": ranks[0]["torch"], "torch_ranks": [r["torch"] for r in ranks]}
    if all("cuda" in r for r in ranks):
        rng["cuda"] = [r["cuda"] for r in ranks]
    return rng


def restore_rng(rng: dict[str, Any], rank: int, device: torch.device) -> None:
    """Rank ``rank``'s saved CPU state and its device's CUDA state, as far as ``rng`` holds
    them and this host has the device; what it cannot restore it says and leaves seeded."""
    cpu = rng.get("torch_ranks") or ([rng["torch"]] if "torch" in rng else [])
    if rank < len(cpu):
        torch.set_rng_state(cpu[rank].cpu())
    else:
        log.info("last.pt has no CPU RNG state for rank %d: it keeps its own seed", rank)
    cuda = list(rng.get("cuda") or [])
    if device.type != "cuda":
        if cuda:
            log.info(
                "last.pt holds %d CUDA RNG state(s); this run trains on %s and restores none",
                len(cuda), device,
            )  # fmt: skip
        return
    if rank < len(cuda):
        torch.cuda.set_rng_state(cuda[rank].cpu(), device)
        if len(cuda) > 1 and "torch_ranks" not in rng:
            log.info("last.pt holds %d CUDA RNG states (one per GPU seen): restored #%d "
                     "on %s", len(cuda), rank, device)  # fmt: skip
    else:
        log.info(
            "last.pt holds %d CUDA RNG state(s), none for rank %d: %s keeps its own seed",
            len(cuda), rank, device,
        )  # fmt: skip


def resume_payload(
    optimizer: torch.optim.Optimizer,
    schedule: LearningRate,
    state: TrainState,
    fingerprint: str,
    rng: Sequence[dict[str, torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """What last.pt holds besides the model payload. ``rng``: every rank's ``rng_state``
    (rank order); without it, this process's on the CPU."""
    return {
        "optimizer_state": optimizer.state_dict(),
        "lr_schedule": schedule.state_dict(),
        "progress": state.to_dict(),
        "rng": rng_payload(rng or [rng_state(torch.device("cpu"))]),
        "fingerprint": fingerprint,
    }


def resume(
    path: Path,
    fingerprint: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: LearningRate,
    device: torch.device,
    rank: int = 0,
) -> TrainState | None:
    """Restore model, optimizer, schedule, RNG (rank ``rank``'s) and state from ``path`` if
    it belongs to this run (same fingerprint); None (start afresh) if it is missing or from
    another run."""
    if not path.is_file():
        return None
    saved = load_checkpoint(path, device)
    if saved.get("fingerprint") != fingerprint:
        log.warning(
            "%s was written by another run (its config, data or warm-start source differ): "
            "starting fresh, it will be overwritten", path,
        )  # fmt: skip
        return None
    model.load_state_dict(saved["model_state"])
    optimizer.load_state_dict(saved["optimizer_state"])
    schedule.load_state_dict(saved.get("lr_schedule", {}))
    restore_rng(saved["rng"], rank, device)
    state = TrainState.from_dict(saved["progress"])
    log.info(
        "resuming from %s: %d epochs done, epoch %d continues at batch %d, step %d",
        path, state.epoch, state.epoch + 1, state.position.batch, state.step,
    )  # fmt: skip
    return state
