"""The end of an epoch, whole or cut by the time budget: history, best.pt, last.pt (with
the snapshot for averaging), the epoch's log line and the callbacks."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from seq2seq_core.model.checkpoint import CheckpointDir, model_payload, save_checkpoint
from seq2seq_core.runtime.distributed import all_gather_uint8
from seq2seq_core.runtime.files import write_json
from seq2seq_core.training.log_lines import epoch_line
from seq2seq_core.training.resume import resume_payload, rng_state
from seq2seq_core.training.session import TrainingSession
from seq2seq_core.training.state import EpochPosition

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochOutcome:
    finished: bool  # every batch of the epoch is trained
    trained: int  # batches trained by this call
    total: int  # batches in the epoch (this rank's share)


def end_epoch(session: TrainingSession, metrics: dict[str, float]) -> None:
    """A completed epoch: totals, the LR schedule's view of BLEU, history, best.pt when
    BLEU (ties: loss) improved, last.pt, the log line and the callbacks."""
    state, pos, world = session.state, session.state.position, session.topo.world
    state.train_tokens += pos.tokens * world
    state.train_seconds += pos.seconds
    session.schedule.observe(metrics["valid_bleu"])
    state.epoch += 1
    state.position = EpochPosition()
    state.history.append({"epoch": state.epoch, **metrics})
    if state.best.improved_by(metrics):
        state.best.bad_epochs = 0
        save_best(session, metrics, {"epoch": state.epoch})
    else:
        state.best.bad_epochs += 1
    save_last(session)
    log_epoch(session, state.epoch, metrics)
    for cb in session.callbacks:
        cb.on_epoch(state.epoch, metrics)


def end_partial_epoch(
    session: TrainingSession, metrics: dict[str, float], outcome: EpochOutcome
) -> None:
    """The time budget ran out inside the epoch: keep best.pt up to date, and last.pt at
    this batch, so that a resumed run trains the rest of the epoch. The LR schedule and
    the early-stopping count see completed epochs only (though a better partial validation
    is the best that later epochs must beat), and no callback hears of it."""
    state, epoch = session.state, session.state.epoch + 1
    where = {"partial": True, "batches": state.position.batch, "batches_total": outcome.total}
    state.history.append({"epoch": epoch, **metrics, **where})
    if state.best.improved_by(metrics):
        save_best(session, metrics, {"epoch": epoch, **where})
    save_last(session)
    log_epoch(session, epoch, metrics, partial=(state.position.batch, outcome.total))


def save_best(session: TrainingSession, metrics: dict[str, float], extra: dict[str, Any]) -> None:
    best = session.state.best
    best.valid_bleu, best.valid_loss = metrics["valid_bleu"], metrics["valid_loss"]
    if session.topo.is_main:
        save_checkpoint(
            CheckpointDir(session.checkpoint_dir).best,
            {**_payload(session), **extra, "valid": metrics},
        )


def save_last(session: TrainingSession) -> None:
    """last.pt: the model, optimizer, LR schedule, RNG and state, to resume exactly here."""
    session.state.elapsed = session.budget.spent()
    rng = all_gather_uint8(rng_state(session.device), session.topo)  # a collective
    if session.topo.is_main:
        payload, fraction = (
            _payload(session),
            session.horizon.fraction(session.state.step, session.state.elapsed),
        )
        session.snapshots.take(
            session.state.step, fraction, payload
        )  # before last.pt: forget_after
        resumable = resume_payload(
            session.optimizer, session.schedule, session.state, session.fingerprint, rng
        )
        save_checkpoint(CheckpointDir(session.checkpoint_dir).last, {**payload, **resumable})
        write_json(CheckpointDir(session.checkpoint_dir).history, session.state.history)


def _payload(session: TrainingSession) -> dict[str, Any]:
    v = session.vocab
    return model_payload(session.model, session.cfg.model, v.src_size, v.tgt_size, v.sha256)


def log_epoch(
    session: TrainingSession,
    epoch: int,
    metrics: dict[str, float],
    partial: tuple[int, int] | None = None,
) -> None:
    line = epoch_line(
        epoch, session.cfg.train.max_epochs, metrics, elapsed=session.budget.spent(),
        budget_left=session.budget.left(), partial=partial,
    )  # fmt: skip
    log.info("%s", line)
