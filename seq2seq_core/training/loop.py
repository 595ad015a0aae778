"""The training loop: set up, then per epoch train -> validate -> checkpoint -> decide to stop.

``train_model`` reads top to bottom and each phase is a named function below it:

- ``set_up``: threads, seed, device, data, model, optimizer, and where the run starts
  (its own ``last.pt`` if it belongs to this run, else a warm start, else from scratch);
- ``train_epoch``: ``train_step`` after ``train_step`` from where the epoch stands, until
  its end or the time budget (``train_step`` is the one update the bench measures too);
- ``validate``: loss over the validation pairs and BLEU on greedy decodes of some;
- ``end_epoch`` / ``end_partial_epoch``: history, best.pt and last.pt, the epoch log line;
- ``stop_reason``: max_epochs, time budget or early stopping.

A time-budget stop inside an epoch keeps its place: ``last.pt`` records the batch and the
loss sums, and a rerun with a larger budget trains the rest of that epoch. Metrics leave
through ``TrainCallback``s only (MLflow attaches there; the core never imports it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from seq2seq_core.config import PipelineConfig, TrainConfig
from seq2seq_core.data.batches import Batch, EncodedPairs, encode_pairs, epoch_order, feed
from seq2seq_core.model.checkpoint import model_payload, save_checkpoint
from seq2seq_core.model.seq2seq import Seq2Seq, build_model
from seq2seq_core.runtime.device import resolve_device
from seq2seq_core.runtime.distributed import (
    Topology,
    accumulating,
    broadcast,
    gather,
    init_distributed,
    max_over_ranks,
    rank_seed,
    shard,
    wrap,
)
from seq2seq_core.runtime.precision import autocast, set_tf32
from seq2seq_core.runtime.threads import prepare_host
from seq2seq_core.training.budget import Horizon
from seq2seq_core.training.log_lines import StepProgress, duration, epoch_line
from seq2seq_core.training.optim import LearningRate, build_optimizer, teacher_forcing_ratio
from seq2seq_core.training.resume import resume, resume_payload, rng_state, run_fingerprint
from seq2seq_core.training.snapshots import CheckpointChoice, Snapshots, choose_checkpoint
from seq2seq_core.training.state import EpochPosition, TimeBudget, TrainState
from seq2seq_core.training.validation import Validation, evaluate_loss, validation_bleu
from seq2seq_core.training.warm_start import (
    Vocabulary,
    WarmStartSource,
    load_warm_start,
    source_identity,
)

log = logging.getLogger(__name__)


class TrainCallback(Protocol):
    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        """metrics: loss, lr, grad_norm, tokens_per_s (running, this epoch), teacher_forcing.
        Called for every step, in order, but in bursts: the numbers are read off the device
        every ``train.log_every_steps`` steps, before a checkpoint and at the epoch's end."""

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """metrics: train_loss, valid_loss, valid_ppl, valid_bleu, epoch_seconds, tokens_per_s,
        lr. Called for completed epochs only (a partial one is in the log and history)."""


class Tokenizer(Protocol):
    src_vocab_size: int
    tgt_vocab_size: int

    def encode_src(self, texts: list[str]) -> list[list[int]]: ...
    def encode_tgt(self, texts: list[str]) -> list[list[int]]: ...
    def decode_tgt(self, ids: list[list[int]]) -> list[str]: ...


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


@dataclass
class Run:
    """What the phases share, built once by ``set_up``."""

    cfg: PipelineConfig
    topo: Topology
    device: torch.device
    model: Seq2Seq
    trainer: torch.nn.Module  # the model, DDP-wrapped when torchrun started several
    optimizer: torch.optim.Optimizer
    schedule: LearningRate
    tokenizer: Tokenizer
    train_data: EncodedPairs
    valid: Validation
    checkpoint_dir: Path
    fingerprint: str
    vocab: Vocabulary
    callbacks: list[TrainCallback]
    horizon: Horizon  # where the budget ends, for the budget LR schedules and averaging
    snapshots: Snapshots  # train.average_checkpoints
    state: TrainState
    budget: TimeBudget


@dataclass(frozen=True)
class EpochOutcome:
    finished: bool  # every batch of the epoch is trained
    trained: int  # batches trained by this call
    total: int  # batches in the epoch (this rank's share)


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
    run = set_up(cfg, data, Path(checkpoint_dir), callbacks, warm_start, vocab_sha256, clock)
    while True:
        if run.state.epoch >= cfg.train.max_epochs:
            stop = "max_epochs"
            break
        outcome = train_epoch(run)
        if not outcome.finished and not outcome.trained:
            stop = "time_budget"  # spent before this epoch trained a batch: nothing to show
            break
        metrics = validate(run)
        if outcome.finished:
            end_epoch(run, metrics)
        else:
            end_partial_epoch(run, metrics, outcome)
        stop = stop_reason(run, outcome)
        if stop is not None:
            break
    return finish(run, stop)


# --- set-up -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingData:
    """The pairs as the model sees them (subword ids, validation batches), and the raw
    validation pairs the run fingerprint hashes."""

    tokenizer: Tokenizer
    train: EncodedPairs
    valid: Validation
    valid_pairs: list[tuple[str, str]]

    @classmethod
    def encode(
        cls, tokenizer: Tokenizer, train_pairs: list[tuple[str, str]],
        valid_pairs: list[tuple[str, str]], tc: TrainConfig,
    ) -> TrainingData:  # fmt: skip
        train = encode_pairs(tokenizer, train_pairs, tc.max_len)
        if not len(train):
            raise ValueError("no training pairs left after encoding and the max_len filter")
        valid = Validation.from_pairs(tokenizer, valid_pairs, tc)
        return cls(tokenizer, train, valid, list(valid_pairs))


def set_up(
    cfg: PipelineConfig,
    data: TrainingData,
    checkpoint_dir: Path,
    callbacks: list[TrainCallback],
    warm_start: WarmStartSource | None,
    vocab_sha256: str | None,
    clock: Callable[[], float],
) -> Run:
    tc = cfg.train
    topo, device = init_distributed(resolve_device(tc.device))  # logged once
    if topo.is_main:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    prepare_host(device, tc.threads)
    set_tf32(device, tc.tf32)
    torch.manual_seed(tc.seed)

    tokenizer, train_data, valid, valid_pairs = (
        data.tokenizer,
        data.train,
        data.valid,
        data.valid_pairs,
    )
    src_vocab, tgt_vocab = tokenizer.src_vocab_size, tokenizer.tgt_vocab_size
    vocab = Vocabulary(cfg.vocab.out_dir, src_vocab, tgt_vocab, vocab_sha256)
    model = build_model(cfg.model, src_vocab, tgt_vocab).to(device)
    optimizer = build_optimizer(list(model.parameters()), tc)
    horizon = Horizon.of(tc, train_data, topo.world)
    schedule = LearningRate.from_config(tc, horizon)
    identity = source_identity(warm_start, tc.reset_optimizer)
    fingerprint = run_fingerprint(cfg, src_vocab, tgt_vocab, train_data, valid_pairs, identity)
    snapshots = Snapshots(checkpoint_dir, tc.average_checkpoints, fingerprint)
    run = Run(
        cfg, topo, device, model, wrap(model, topo, device), optimizer, schedule, tokenizer,
        train_data, valid, checkpoint_dir, fingerprint, vocab, callbacks, horizon, snapshots,
        state=TrainState(), budget=TimeBudget(tc.time_budget_min, 0.0, clock),
    )  # fmt: skip
    if topo.rank:  # the same weights on every rank; from here its own dropout and coins
        torch.manual_seed(rank_seed(tc.seed, topo.rank))
    run.state = starting_state(run, warm_start)
    if topo.is_main:  # snapshots of steps this run trains (again) or of another run go
        snapshots.forget_after(run.state.step)
    # The budget counts the seconds that earlier runs of this one (resumed) already spent.
    run.budget = TimeBudget(tc.time_budget_min, run.state.elapsed, clock)
    return run


def starting_state(run: Run, warm_start: WarmStartSource | None) -> TrainState:
    """This run's own last.pt if it has one (it wins over a warm start), else the warm-start
    source's weights in the fresh model, else the fresh model as built."""
    last = run.checkpoint_dir / "last.pt"
    state = resume(
        last, run.fingerprint, run.model, run.optimizer, run.schedule, run.device, run.topo.rank
    )
    if state is not None:
        if warm_start is not None:
            log.info(
                "not warm-starting from %s: resuming this run's own %s", warm_start.label, last
            )
        return state
    state = TrainState()
    if warm_start is not None:
        state.step = load_warm_start(
            warm_start, run.model, run.optimizer, run.schedule,
            model_cfg=run.cfg.model, tc=run.cfg.train, vocab=run.vocab,
        )  # fmt: skip
    else:
        log.info("training from scratch (train.init_from: none)")
    return state


# --- train --------------------------------------------------------------------------------


def train_epoch(run: Run) -> EpochOutcome:
    """Train the current epoch from the batch where the state stands, one optimizer step
    (one group of ``train.accumulate_steps`` batches) at a time, until the epoch's end or
    the time budget, which is checked between steps only (under DDP, where all ranks must
    agree, every ``train.log_every_steps`` steps). The steps' numbers stay on the device
    until ``report_steps`` reads them: every ``log_every_steps``, before a checkpoint and
    at the end."""
    tc, state, pos, topo = run.cfg.train, run.state, run.state.position, run.topo
    epoch, start = state.epoch + 1, pos.batch
    run.model.train()
    order = shard(epoch_order(run.train_data, tc.batch_tokens, tc.seed, epoch), topo)
    progress = StepProgress(
        epoch=epoch, total=len(order), done=start, log_every=tc.log_every_steps,
        main=topo.is_main,
    )  # fmt: skip
    pending: list[PendingStep] = []
    batches = feed(run.train_data, order[start:], run.device)
    t0 = time.monotonic() - pos.seconds
    spent = run.budget.spent()
    try:
        while pos.batch < len(order):
            if pos.batch == start or not topo.distributed or state.step % tc.log_every_steps == 0:
                # One clock for every rank (the latest), read only where the ranks meet
                # anyway: the budget LR schedules take it, so replicas step at one rate.
                spent = max_over_ranks(run.budget.spent(), topo, run.device)
                if spent >= run.budget.seconds:
                    break
            end = min(len(order), (pos.batch // tc.accumulate_steps + 1) * tc.accumulate_steps)
            group = list(itertools.islice(batches, end - pos.batch))
            ratio, lr = (
                teacher_forcing_ratio(tc, state.step),
                run.schedule.at(state.step + 1, spent),
            )
            losses, grad_norm = train_step(
                run.model, run.optimizer, group, teacher_forcing=ratio, lr=lr, tc=tc,
                trainer=run.trainer,
            )  # fmt: skip
            pos.tokens += sum(batch.ntokens for batch in group)
            pos.batch, state.step = end, state.step + 1
            pos.seconds = time.monotonic() - t0
            tok_s = pos.tokens / max(pos.seconds, 1e-9) * topo.world
            pending.append(PendingStep(
                state.step, losses, [b.ntokens for b in group], grad_norm, lr, ratio, tok_s,
                run.budget.spent(),
            ))  # fmt: skip
            progress.advance(len(group))
            checkpoint = state.step % tc.checkpoint_every_steps == 0
            if checkpoint or state.step % tc.log_every_steps == 0:
                report_steps(run, pending, progress)
            if checkpoint:
                save_last(run)  # mid-epoch: a kill loses at most checkpoint_every_steps steps
        report_steps(run, pending, progress)
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


def report_steps(run: Run, pending: list[PendingStep], progress: StepProgress) -> None:
    """Read the pending steps' numbers off the device at once (one sync), then, step by
    step as if each had been read at once: the epoch's loss sum, progress, callbacks."""
    if not pending:
        return
    numbers = [t.float() for p in pending for t in (*p.losses, p.grad_norm)]
    values = iter(torch.stack(numbers).tolist())
    steps = list(pending)
    pending.clear()
    pos = run.state.position
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
        for cb in run.callbacks:
            cb.on_step(p.step, metrics)


def train_step(
    model: Seq2Seq,
    optimizer: torch.optim.Optimizer,
    batches: Sequence[Batch],
    *,
    teacher_forcing: float,
    lr: float,
    tc: TrainConfig,
    trainer: torch.nn.Module | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One optimizer update from ``batches`` (one accumulation group, on the model's
    device): forward/backward of each, learning rate ``lr``, gradient clipping at
    ``tc.clip_grad``, the optimizer's step. Returns (loss per target token of each batch,
    gradient norm before clipping) as 0-dim tensors on the device: reading them makes the
    host wait, which the caller does once in a while. ``trainer`` is the model as DDP wraps
    it, if it does: its gradients are all-reduced once, after the last batch's backward.
    The training loop and bench/train_throughput.py both step through here."""
    trainer = trainer or model
    losses = []
    for i, batch in enumerate(batches):
        with accumulating(trainer) if i < len(batches) - 1 else contextlib.nullcontext():
            losses.append(forward_backward(trainer, batch, teacher_forcing, tc))
    for group in optimizer.param_groups:
        group["lr"] = lr
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_grad).detach()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return losses, grad_norm


def forward_backward(
    model: torch.nn.Module, batch: Batch, teacher_forcing: float, tc: TrainConfig
) -> torch.Tensor:
    """Loss and gradients of one batch, scaled for `train.accumulate_steps` batches per
    step; returns the loss per target token (0-dim, on the device). `model` may be
    DDP-wrapped: the loss goes through `forward` so that its gradient hooks run."""
    with autocast(batch.src.device, tc.precision):
        loss = model(
            batch.src, batch.src_len, batch.tgt_in,
            tgt_out=batch.tgt_out, teacher_forcing=teacher_forcing,
            label_smoothing=tc.label_smoothing, real=batch.real,
        )  # fmt: skip
    loss = loss / batch.ntokens
    (loss / tc.accumulate_steps).backward()
    return loss.detach()


# --- validate -----------------------------------------------------------------------------


def validate(run: Run) -> dict[str, float]:
    """On rank 0: loss over every validation pair and BLEU on greedy decodes of the first
    ``train.valid_bleu_sentences``, with the epoch's training numbers; every rank gets them."""
    state, pos, t0 = run.state, run.state.position, time.monotonic()
    metrics = None
    if run.topo.is_main:
        cfg, device = run.cfg, run.device
        valid_loss = evaluate_loss(run.model, run.valid.batches, device, cfg.train.precision)
        valid_bleu = validation_bleu(
            run.model, run.tokenizer, run.valid.bleu_src, run.valid.bleu_refs, cfg, device
        )
        metrics = {
            "train_loss": pos.loss_sum / max(pos.tokens, 1),
            "valid_loss": valid_loss,
            "valid_ppl": math.exp(min(valid_loss, 100.0)),
            "valid_bleu": valid_bleu,
            "epoch_seconds": pos.seconds + time.monotonic() - t0,
            "tokens_per_s": pos.tokens * run.topo.world / max(pos.seconds, 1e-9),
            "lr": run.schedule.at(max(state.step, 1), run.budget.spent()),
        }
    return broadcast(metrics, run.topo)


# --- checkpoint ---------------------------------------------------------------------------


def end_epoch(run: Run, metrics: dict[str, float]) -> None:
    """A completed epoch: totals, the LR schedule's view of BLEU, history, best.pt when
    BLEU (ties: loss) improved, last.pt, the log line and the callbacks."""
    state, pos, world = run.state, run.state.position, run.topo.world
    state.train_tokens += pos.tokens * world
    state.train_seconds += pos.seconds
    run.schedule.observe(metrics["valid_bleu"])
    state.epoch += 1
    state.position = EpochPosition()
    state.history.append({"epoch": state.epoch, **metrics})
    if state.best.improved_by(metrics):
        state.best.bad_epochs = 0
        save_best(run, metrics, {"epoch": state.epoch})
    else:
        state.best.bad_epochs += 1
    save_last(run)
    log_epoch(run, state.epoch, metrics)
    for cb in run.callbacks:
        cb.on_epoch(state.epoch, metrics)


def end_partial_epoch(run: Run, metrics: dict[str, float], outcome: EpochOutcome) -> None:
    """The time budget ran out inside the epoch: keep best.pt up to date, and last.pt at
    this batch, so that a resumed run trains the rest of the epoch. The LR schedule and
    the early-stopping count see completed epochs only (though a better partial validation
    is the best that later epochs must beat), and no callback hears of it."""
    state, epoch = run.state, run.state.epoch + 1
    where = {"partial": True, "batches": state.position.batch, "batches_total": outcome.total}
    state.history.append({"epoch": epoch, **metrics, **where})
    if state.best.improved_by(metrics):
        save_best(run, metrics, {"epoch": epoch, **where})
    save_last(run)
    log_epoch(run, epoch, metrics, partial=(state.position.batch, outcome.total))


def save_best(run: Run, metrics: dict[str, float], extra: dict[str, Any]) -> None:
    best = run.state.best
    best.valid_bleu, best.valid_loss = metrics["valid_bleu"], metrics["valid_loss"]
    if run.topo.is_main:
        save_checkpoint(
            run.checkpoint_dir / "best.pt", {**_payload(run), **extra, "valid": metrics}
        )


def save_last(run: Run) -> None:
    """last.pt: the model, optimizer, LR schedule, RNG and state, to resume exactly here."""
    run.state.elapsed = run.budget.spent()
    rng = gather(rng_state(run.device), run.topo)  # every rank's: a collective
    if run.topo.is_main:
        payload, fraction = _payload(run), run.horizon.fraction(run.state.step, run.state.elapsed)
        run.snapshots.take(run.state.step, fraction, payload)  # before last.pt: forget_after
        resumable = resume_payload(run.optimizer, run.schedule, run.state, run.fingerprint, rng)
        save_checkpoint(run.checkpoint_dir / "last.pt", {**payload, **resumable})
        _write_json(run.checkpoint_dir / "history.json", run.state.history)


def _payload(run: Run) -> dict[str, Any]:
    v = run.vocab
    return model_payload(run.model, run.cfg.model, v.src_size, v.tgt_size, v.sha256)


def log_epoch(
    run: Run, epoch: int, metrics: dict[str, float], partial: tuple[int, int] | None = None
) -> None:
    line = epoch_line(
        epoch, run.cfg.train.max_epochs, metrics, elapsed=run.budget.spent(),
        budget_left=run.budget.left(), partial=partial,
    )  # fmt: skip
    log.info("%s", line)


# --- stop ---------------------------------------------------------------------------------


def stop_reason(run: Run, outcome: EpochOutcome) -> str | None:
    tc, state = run.cfg.train, run.state
    if not outcome.finished:
        return "time_budget"
    if tc.early_stopping_patience and state.best.bad_epochs >= tc.early_stopping_patience:
        return "early_stopping"
    if run.budget.exhausted() and state.epoch < tc.max_epochs:
        return "time_budget"
    if state.epoch >= tc.max_epochs:
        return "max_epochs"
    return None


def finish(run: Run, stop: str) -> TrainResult:
    state = run.state
    log.info("stopping: %s", stop_message(run, stop))
    if run.topo.is_main:
        _write_json(run.checkpoint_dir / "history.json", state.history)
    for cb in run.callbacks:
        if hasattr(cb, "on_train_end"):
            cb.on_train_end(run.model)
    choice = average_snapshots(run)
    return TrainResult(
        best_checkpoint=str(run.checkpoint_dir / "best.pt"),
        last_checkpoint=str(run.checkpoint_dir / "last.pt"),
        epochs=state.epoch,
        steps=state.step,
        best_valid_bleu=state.best.valid_bleu,
        best_valid_loss=state.best.valid_loss,
        stop_reason=stop,
        train_tokens_per_s=state.train_tokens / max(state.train_seconds, 1e-9),
        seconds=run.budget.spent(),
        skipped_long=run.train_data.skipped_long,
        history=state.history,
        kept_checkpoint=choice.kept_checkpoint if choice else "single",
        averaging=dataclasses.asdict(choice) if choice else None,
    )


def average_snapshots(run: Run) -> CheckpointChoice | None:
    """train.average_checkpoints: best.pt becomes the snapshots' average if it validates
    at least as well as the best single checkpoint (rank 0 decides, every rank hears)."""
    choice = None
    if run.topo.is_main and run.snapshots.enabled:
        best = run.checkpoint_dir / "best.pt"
        choice = choose_checkpoint(run.snapshots, best, run.state.best.valid_bleu, run)
    return broadcast(choice, run.topo)


def stop_message(run: Run, stop: str) -> str:
    tc, state = run.cfg.train, run.state
    if stop == "max_epochs":
        return f"train.max_epochs reached ({state.epoch}/{tc.max_epochs} epochs done)"
    if stop == "early_stopping":
        return (
            f"early stopping: no better valid BLEU for {state.best.bad_epochs} epochs "
            f"(train.early_stopping_patience {tc.early_stopping_patience})"
        )
    budget = f"time budget of {duration(run.budget.seconds)} spent"
    if state.position.batch:
        return (
            f"{budget} in epoch {state.epoch + 1} after {state.position.batch} batches; "
            "last.pt keeps that place: a rerun with a larger train.time_budget_min continues it"
        )
    return f"{budget} after epoch {state.epoch}/{tc.max_epochs}"


def _write_json(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
