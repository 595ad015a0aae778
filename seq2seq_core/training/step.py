"""One optimizer update: the step the training loop takes and bench/train_throughput.py
times, so that the benchmark measures exactly what training runs."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from seq2seq_core.config import TrainConfig
from seq2seq_core.data.batches import Batch
from seq2seq_core.model.seq2seq import Seq2Seq
from seq2seq_core.runtime.distributed import accumulating
from seq2seq_core.runtime.precision import autocast


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
    DDP-wrapped: the loss goes through `forward` so that its gradient hooks session."""
    with autocast(batch.src.device, tc.precision):
        loss = model(
            batch.src, batch.src_len, batch.tgt_in,
            tgt_out=batch.tgt_out, teacher_forcing=teacher_forcing,
            label_smoothing=tc.label_smoothing, real=batch.real,
        )  # fmt: skip
    loss = loss / batch.ntokens
    (loss / tc.accumulate_steps).backward()
    return loss.detach()
