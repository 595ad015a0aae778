"""What the training phases share, and how a run gets it: ``set_up`` builds one
``TrainingSession`` (device, data, model, optimizer, schedule, state, budget) and decides
where training starts: this run's own ``last.pt`` if it belongs to this run, else a warm
start, else from scratch.

Called a session, not a run: MLflow and Prefect each have runs of their own, and one
training session may be resumed across several of theirs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from seq2seq_core.config import PipelineConfig, TrainConfig
from seq2seq_core.data.batches import EncodedPairs, encode_pairs
from seq2seq_core.model.checkpoint import CheckpointDir
from seq2seq_core.model.seq2seq import Seq2Seq, build_model
from seq2seq_core.runtime.device import resolve_device
from seq2seq_core.runtime.distributed import Topology, init_distributed, rank_seed, wrap
from seq2seq_core.runtime.precision import set_tf32
from seq2seq_core.runtime.threads import prepare_host
from seq2seq_core.training.averaging import Snapshots
from seq2seq_core.training.budget import Horizon, TimeBudget
from seq2seq_core.training.optim import LearningRate, build_optimizer
from seq2seq_core.training.resume import resume, run_fingerprint
from seq2seq_core.training.state import TrainState
from seq2seq_core.training.validation import Validation
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
class TrainingSession:
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
) -> TrainingSession:
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
    model.compile_training = tc.compile
    optimizer = build_optimizer(list(model.parameters()), tc)
    horizon = Horizon.of(tc, train_data, topo.world)
    schedule = LearningRate.from_config(tc, horizon)
    identity = source_identity(warm_start, tc.reset_optimizer)
    fingerprint = run_fingerprint(cfg, src_vocab, tgt_vocab, train_data, valid_pairs, identity)
    snapshots = Snapshots(checkpoint_dir, tc.average_checkpoints, fingerprint)
    session = TrainingSession(
        cfg, topo, device, model, wrap(model, topo, device), optimizer, schedule, tokenizer,
        train_data, valid, checkpoint_dir, fingerprint, vocab, callbacks, horizon, snapshots,
        state=TrainState(), budget=TimeBudget(tc.time_budget_min, 0.0, clock),
    )  # fmt: skip
    if topo.rank:  # the same weights on every rank; from here its own dropout and coins
        torch.manual_seed(rank_seed(tc.seed, topo.rank))
    session.state = starting_state(session, warm_start)
    if topo.is_main:  # snapshots of steps this run trains (again) or of another run go
        snapshots.forget_after(session.state.step)
    # The budget counts the seconds that earlier runs of this one (resumed) already spent.
    session.budget = TimeBudget(tc.time_budget_min, session.state.elapsed, clock)
    return session


def starting_state(session: TrainingSession, warm_start: WarmStartSource | None) -> TrainState:
    """This run's own last.pt if it has one (it wins over a warm start), else the warm-start
    source's weights in the fresh model, else the fresh model as built."""
    last = CheckpointDir(session.checkpoint_dir).last
    state = resume(
        last,
        session.fingerprint,
        session.model,
        session.optimizer,
        session.schedule,
        session.device,
        session.topo.rank,
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
            warm_start, session.model, session.optimizer, session.schedule,
            model_cfg=session.cfg.model, tc=session.cfg.train, vocab=session.vocab,
        )  # fmt: skip
    else:
        log.info("training from scratch (train.init_from: none)")
    return state
