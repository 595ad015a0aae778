"""training.optim: learning-rate and teacher-forcing schedules, AdamW."""

from __future__ import annotations

import pytest
import torch

from seq2seq_core.config import TrainConfig
from seq2seq_core.training.optim import LearningRate, build_optimizer, teacher_forcing_ratio


def test_learning_rate_schedules() -> None:
    warm = LearningRate.from_config(TrainConfig(lr=1.0, warmup_steps=4, lr_schedule="inverse_sqrt"))
    assert [warm.at(s) for s in (1, 2, 4)] == [0.25, 0.5, 1.0]
    assert warm.at(16) == pytest.approx(0.5)  # sqrt(4 / 16)
    plateau = LearningRate.from_config(
        TrainConfig(lr=1.0, lr_schedule="plateau", plateau_patience=2, plateau_factor=0.5,
                    min_lr=0.2)
    )  # fmt: skip
    for bleu in (10.0, 9.0, 8.0):  # best, then two without improvement
        plateau.observe(bleu)
    assert plateau.at(100) == 0.5
    for bleu in (7.0, 6.0, 5.0, 4.0):
        plateau.observe(bleu)
    assert plateau.at(100) == 0.2  # floored at min_lr
    restored = LearningRate.from_config(TrainConfig(lr=1.0, lr_schedule="plateau"))
    restored.load_state_dict(plateau.state_dict())
    assert restored == plateau
    assert LearningRate.from_config(TrainConfig(lr=0.3, lr_schedule="constant")).at(10_000) == 0.3


def test_teacher_forcing_schedules() -> None:
    linear = TrainConfig(teacher_forcing=1.0, teacher_forcing_schedule="linear",
                         teacher_forcing_min=0.2, teacher_forcing_decay_steps=100)  # fmt: skip
    assert [teacher_forcing_ratio(linear, s) for s in (0, 50, 100, 500)] == [1.0, 0.6, 0.2, 0.2]
    sigmoid = TrainConfig(
        teacher_forcing_schedule="inverse_sigmoid", teacher_forcing_decay_steps=10
    )
    values = [teacher_forcing_ratio(sigmoid, s) for s in (0, 10, 50, 100)]
    assert values[0] == pytest.approx(10 / 11) and values == sorted(values, reverse=True)
    assert values[-1] < 0.01
    assert teacher_forcing_ratio(TrainConfig(teacher_forcing=0.5), 10**6) == 0.5


def test_adamw_decouples_weight_decay() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    opt = build_optimizer([p], TrainConfig(optimizer="adamw", lr=0.1, weight_decay=0.5))
    p.grad = torch.zeros(3)
    opt.step()
    assert torch.allclose(p.detach(), torch.full((3,), 1 - 0.1 * 0.5))  # decay only
    assert isinstance(build_optimizer([p], TrainConfig(optimizer="adam")), torch.optim.Adam)
