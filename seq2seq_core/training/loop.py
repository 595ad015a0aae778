"""The training loop: set up, then per epoch train -> validate -> checkpoint -> decide to stop.

``train_model`` reads top to bottom; each phase is a named function, here or beside it:

- ``session.set_up``: threads, seed, device, data, model, optimizer, and where the run
  starts (its own ``last.pt`` if it belongs to this run, else a warm start, else from scratch);
- ``train_epoch``: ``step.train_step`` after ``train_step`` from where the epoch stands,
  until its end or the time budget (``train_step`` is the one update the bench measures too);
- ``validate``: loss over the validation pairs and BLEU on greedy decodes of some;
- ``epoch_end.end_epoch`` / ``end_partial_epoch``: history, best.pt and last.pt, the epoch
  log line;
- ``stop_reason``: max_epochs, time budget or early stopping.

A time-budget stop inside an epoch keeps its place: ``last.pt`` records the batch and the
loss sums, and a rerun with a larger budget trains the rest of that epoch. Metrics leave
through ``TrainCallback``s only (MLflow attaches there; the core never imports it).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from seq2seq_core.config import PipelineConfig
from seq2seq_core.data.batches import epoch_order, feed
from seq2seq_core.model.checkpoint import CheckpointDir
from seq2seq_core.runtime.distributed import broadcast_json, float_dict, max_over_ranks, shard
from seq2seq_core.runtime.files import write_json
from seq2seq_core.training.averaging import CheckpointChoice, choice_from_json, choose_checkpoint
from seq2seq_core.training.epoch_end import EpochOutcome, end_epoch, end_partial_epoch, save_last
from seq2seq_core.training.log_lines import StepProgress, duration
from seq2seq_core.training.optim import teacher_forcing_ratio
from seq2seq_core.training.session import (
    Tokenizer,
    TrainCallback,
    TrainingData,
    TrainingSession,
    set_up,
)
from seq2seq_core.training.step import train_step
from seq2seq_core.training.validation import validation_bleu, validation_loss
from seq2seq_core.training.warm_start import WarmStartSource

__all__ = ["TrainCallback", "TrainResult", "train_model"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    best_checkpoint: str
    last_checkpoint: str
    epochs: int
    steps: int
    best_valid_bleu: float
    best_valid_loss: float
    stop_reason: str  # "max_epochs" | "time_budget" | "early_stopping"
    train_tokens_per_s: float
    seconds: float
    skipped_long: int
    history: list[dict[str, Any]] = field(default_factory=list)
    kept_checkpoint: str = "single"  # what best.pt holds: "single" | "averaged"
    averaging: dict[str, Any] | None = None  # CheckpointChoice (train.average_checkpoints)


def train_model(
    cfg: PipelineConfig,
    *,
    tokenizer: Tokenizer,
    train_pairs: list[tuple[str, str]],
    valid_pairs: list[tuple[str, str]],
    checkpoint_dir: Path,
    callbacks: list[TrainCallback],
    warm_start: WarmStartSource | None = None,
    vocab_sha256: str | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> TrainResult:
    """Train until max_epochs, the time budget or early stopping; best.pt and last.pt in
    ``checkpoint_dir``. ``vocab_sha256`` identifies the tokenizer's files in checkpoints
    (``warm_start.vocab_sha256``); ``clock`` is the time budget's clock."""
    data = TrainingData.encode(tokenizer, train_pairs, valid_pairs, cfg.train)
    session = set_up(cfg, data, Path(checkpoint_dir), callbacks, warm_start, vocab_sha256, clock)
    while True:
        if session.state.epoch >= cfg.train.max_epochs:
            stop = "max_epochs"
            break
        outcome = train_epoch(session)
        if not outcome.finished and not outcome.trained:
            stop = "time_budget"  # spent before this epoch trained a batch: nothing to show
            break
        metrics = validate(session)
        if outcome.finished:
            end_epoch(session, metrics)
        else:
            end_partial_epoch(session, metrics, outcome)
        stop = stop_reason(session, outcome)
        if stop is not None:
            break
    return finish(session, stop)


# --- train --------------------------------------------------------------------------------


def train_epoch(session: TrainingSession) -> EpochOutcome:
    """Train the current epoch from the batch where the state stands, one optimizer step
    (one group of ``train.accumulate_steps`` batches) at a time, until the epoch's end or
    the time budget, which is checked between steps only (under DDP, where all ranks must
    agree, every ``train.log_every_steps`` steps). The steps' numbers stay on the device
    until ``report_steps`` reads them: every ``log_every_steps``, before a checkpoint and
    at the end."""
    tc, state, pos, topo = session.cfg.train, session.state, session.state.position, session.topo
    epoch, start = state.epoch + 1, pos.batch
    session.model.train()
    order = shard(epoch_order(session.train_data, tc.batch_tokens, tc.seed, epoch), topo)
    progress = StepProgress(
        epoch=epoch, total=len(order), done=start, log_every=tc.log_every_steps,
        main=topo.is_main,
    )  # fmt: skip
    pending: list[PendingStep] = []
    batches = feed(session.train_data, order[start:], session.device)
    t0 = time.monotonic() - pos.seconds
    spent = session.budget.spent()
    try:
        while pos.batch < len(order):
            if pos.batch == start or not topo.distributed or state.step % tc.log_every_steps == 0:
                # One clock for every rank (the latest), read only where the ranks meet
                # anyway: the budget LR schedules take it, so replicas step at one rate.
                spent = max_over_ranks(session.budget.spent(), topo, session.device)
                if spent >= session.budget.seconds:
                    break
            end = min(len(order), (pos.batch // tc.accumulate_steps + 1) * tc.accumulate_steps)
            group = list(itertools.islice(batches, end - pos.batch))
            ratio, lr = (
                teacher_forcing_ratio(tc, state.step),
                session.schedule.at(state.step + 1, spent),
            )
            losses, grad_norm = train_step(
                session.model, session.optimizer, group, teacher_forcing=ratio, lr=lr, tc=tc,
                trainer=session.trainer,
            )  # fmt: skip
            pos.tokens += sum(batch.ntokens for batch in group)
            pos.batch, state.step = end, state.step + 1
            pos.seconds = time.monotonic() - t0
            tok_s = pos.tokens / max(pos.seconds, 1e-9) * topo.world
            pending.append(PendingStep(
                state.step, losses, [b.ntokens for b in group], grad_norm, lr, ratio, tok_s,
                session.budget.spent(),
            ))  # fmt: skip
            progress.advance(len(group))
            checkpoint = state.step % tc.checkpoint_every_steps == 0
            if checkpoint or state.step % tc.log_every_steps == 0:
                report_steps(session, pending, progress)
            if checkpoint:
                save_last(session)  # mid-epoch: a kill loses at most checkpoint_every_steps steps
        report_steps(session, pending, progress)
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()
        progress.close()
    pos.seconds = time.monotonic() - t0
    return EpochOutcome(pos.batch >= len(order), pos.batch - start, len(order))


@dataclass
class PendingStep:
    """A trained step whose numbers are still on the device."""

    step: int
    losses: list[torch.Tensor]  # per target token, one per batch of the group
    ntokens: list[int]
    grad_norm: torch.Tensor
    lr: float
    teacher_forcing: float
    tokens_per_s: float
    elapsed: float


def report_steps(
    session: TrainingSession, pending: list[PendingStep], progress: StepProgress
) -> None:
    """Read the pending steps' numbers off the device at once (one sync), then, step by
    step as if each had been read at once: the epoch's loss sum, progress, callbacks."""
    if not pending:
        return
    numbers = [t.float() for p in pending for t in (*p.losses, p.grad_norm)]
    values = iter(torch.stack(numbers).tolist())
    steps = list(pending)
    pending.clear()
    pos = session.state.position
    for p in steps:
        losses = [next(values) for _ in p.losses]
        grad_norm = next(values)
        for loss, ntokens in zip(losses, p.ntokens, strict=True):
            pos.loss_sum += loss * ntokens
        progress.report(
            step=p.step, loss=losses[-1], lr=p.lr, tok_s=p.tokens_per_s, elapsed=p.elapsed
        )
        metrics = {"loss": losses[-1], "lr": p.lr, "grad_norm": grad_norm,
                   "tokens_per_s": p.tokens_per_s,
                   "teacher_forcing": p.teacher_forcing}  # fmt: skip
        for cb in session.callbacks:
            cb.on_step(p.step, metrics)


# --- validate -----------------------------------------------------------------------------


def validate(session: TrainingSession) -> dict[str, float]:
    """On rank 0: loss over every validation pair and BLEU on greedy decodes of the first
    ``train.valid_bleu_sentences``, with the epoch's training numbers; every rank gets them."""
    state, pos, t0 = session.state, session.state.position, time.monotonic()
    metrics = None
    if session.topo.is_main:
        cfg, device = session.cfg, session.device
        valid_loss = validation_loss(
            session.model, session.valid.batches, device, cfg.train.precision
        )
        valid_bleu = validation_bleu(
            session.model,
            session.tokenizer,
            session.valid.bleu_src,
            session.valid.bleu_refs,
            cfg,
            device,
        )
        metrics = {
            "train_loss": pos.loss_sum / max(pos.tokens, 1),
            "valid_loss": valid_loss,
            "valid_ppl": math.exp(min(valid_loss, 100.0)),
            "valid_bleu": valid_bleu,
            "epoch_seconds": pos.seconds + time.monotonic() - t0,
            "tokens_per_s": pos.tokens * session.topo.world / max(pos.seconds, 1e-9),
            "lr": session.schedule.at(max(state.step, 1), session.budget.spent()),
        }
    return float_dict(broadcast_json(metrics, session.topo))


# --- stop ---------------------------------------------------------------------------------


def stop_reason(session: TrainingSession, outcome: EpochOutcome) -> str | None:
    tc, state = session.cfg.train, session.state
    if not outcome.finished:
        return "time_budget"
    if tc.early_stopping_patience and state.best.bad_epochs >= tc.early_stopping_patience:
        return "early_stopping"
    if session.budget.exhausted() and state.epoch < tc.max_epochs:
        return "time_budget"
    if state.epoch >= tc.max_epochs:
        return "max_epochs"
    return None


def finish(session: TrainingSession, stop: str) -> TrainResult:
    state = session.state
    log.info("stopping: %s", stop_message(session, stop))
    if session.topo.is_main:
        write_json(CheckpointDir(session.checkpoint_dir).history, state.history)
    for cb in session.callbacks:
        if hasattr(cb, "on_train_end"):
            cb.on_train_end(session.model)
    choice = average_snapshots(session)
    return TrainResult(
        best_checkpoint=str(CheckpointDir(session.checkpoint_dir).best),
        last_checkpoint=str(CheckpointDir(session.checkpoint_dir).last),
        epochs=state.epoch,
        steps=state.step,
        best_valid_bleu=state.best.valid_bleu,
        best_valid_loss=state.best.valid_loss,
        stop_reason=stop,
        train_tokens_per_s=state.train_tokens / max(state.train_seconds, 1e-9),
        seconds=session.budget.spent(),
        skipped_long=session.train_data.skipped_long,
        history=state.history,
        kept_checkpoint=choice.kept_checkpoint if choice else "single",
        averaging=dataclasses.asdict(choice) if choice else None,
    )


def average_snapshots(session: TrainingSession) -> CheckpointChoice | None:
    """train.average_checkpoints: best.pt becomes the snapshots' average if it validates
    at least as well as the best single checkpoint (rank 0 decides, every rank hears)."""
    choice = None
    if session.topo.is_main and session.snapshots.enabled:
        best = CheckpointDir(session.checkpoint_dir).best
        choice = choose_checkpoint(session.snapshots, best, session.state.best.valid_bleu, session)
    sent = dataclasses.asdict(choice) if choice is not None else None
    return choice_from_json(broadcast_json(sent, session.topo))


def stop_message(session: TrainingSession, stop: str) -> str:
    tc, state = session.cfg.train, session.state
    if stop == "max_epochs":
        return f"train.max_epochs reached ({state.epoch}/{tc.max_epochs} epochs done)"
    if stop == "early_stopping":
        return (
            f"early stopping: no better valid BLEU for {state.best.bad_epochs} epochs "
            f"(train.early_stopping_patience {tc.early_stopping_patience})"
        )
    budget = f"time budget of {duration(session.budget.seconds)} spent"
    if state.position.batch:
        return (
            f"{budget} in epoch {state.epoch + 1} after {state.position.batch} batches; "
            "last.pt keeps that place: a rerun with a larger train.time_budget_min continues it"
        )
    return f"{budget} after epoch {state.epoch}/{tc.max_epochs}"
