"""Optimizer, learning-rate schedule and teacher-forcing schedule, built from `train.*`.

The schedules are small classes with plain-number state (`state_dict`), so they travel in
last.pt through `torch.load(weights_only=True)` and a resumed run continues them exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from seq2seq_core.config import BUDGET_LR_SCHEDULES, TrainConfig
from seq2seq_core.training.budget import Horizon, budget_decay


def build_optimizer(params: list[torch.nn.Parameter], tc: TrainConfig) -> torch.optim.Optimizer:
    """Adam or AdamW (decoupled weight decay; with weight_decay 0 the two are the same).

    The fused kernels (CPU and CUDA) update every parameter in one pass instead of torch's
    default loop of small per-tensor ops, whose overhead is a visible share of a CPU step.
    Their state dicts are the same, so checkpoints move freely.
    """
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") for p in params)
    kw = {"lr": tc.lr, "weight_decay": tc.weight_decay, "fused": fused or None}
    if tc.optimizer == "adamw":
        return torch.optim.AdamW(params, **kw)
    if tc.optimizer == "adam":
        return torch.optim.Adam(params, **kw)
    raise ValueError(f"train.optimizer: {tc.optimizer!r} is not one of adam, adamw")


@dataclass
class LearningRate:
    """lr(step) = base x warmup x decay. Warmup is linear over `warmup_steps`; decay is
    constant, inverse-sqrt after warmup, or plateau: x `plateau_factor` after
    `plateau_patience` validations without a better BLEU. Never below `min_lr` (except
    during warmup). The budget schedules (``budget.py``) go from `base` to `min_lr` over the
    ``horizon``'s fraction of the budget spent, which ``at`` takes as (step, elapsed seconds).

    The ``horizon`` comes from the config and the data at every set-up, not from last.pt
    (``state_dict`` leaves it out): a rerun with a larger budget stretches the decay."""

    base: float
    schedule: str
    warmup_steps: int
    plateau_factor: float
    plateau_patience: int
    min_lr: float
    plateau_scale: float = 1.0
    best_metric: float = -math.inf
    bad_validations: int = 0
    horizon: Horizon | None = field(default=None, compare=False)

    @classmethod
    def from_config(cls, tc: TrainConfig, horizon: Horizon | None = None) -> LearningRate:
        return cls(
            tc.lr, tc.lr_schedule, tc.warmup_steps, tc.plateau_factor, tc.plateau_patience,
            tc.min_lr, horizon=horizon,
        )  # fmt: skip

    def at(self, step: int, elapsed: float = 0.0) -> float:
        """The learning rate for optimizer step `step` (1-based), taken when `elapsed`
        seconds of the time budget are spent (the budget schedules use both; the others
        only `step`)."""
        warm = min(1.0, step / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        if self.schedule in BUDGET_LR_SCHEDULES:
            if self.horizon is None:
                raise ValueError(f"train.lr_schedule {self.schedule}: no budget horizon set")
            fraction = self.horizon.fraction(step - 1, elapsed)
            return budget_decay(self.schedule, fraction, self.base, self.min_lr) * warm
        if self.schedule == "inverse_sqrt":
            decay = math.sqrt(max(self.warmup_steps, 1) / max(step, self.warmup_steps, 1))
        elif self.schedule == "plateau":
            decay = self.plateau_scale
        else:
            decay = 1.0
        lr = self.base * decay
        if step >= self.warmup_steps:
            lr = max(lr, self.min_lr) if self.schedule != "constant" else lr
        return lr * warm

    def observe(self, valid_bleu: float) -> None:
        """After each validation: count validations without improvement (plateau)."""
        if valid_bleu > self.best_metric:
            self.best_metric, self.bad_validations = valid_bleu, 0
            return
        self.bad_validations += 1
        if self.schedule == "plateau" and self.bad_validations >= self.plateau_patience:
            self.plateau_scale *= self.plateau_factor
            self.bad_validations = 0

    def apply(self, optimizer: torch.optim.Optimizer, step: int, elapsed: float = 0.0) -> float:
        lr = self.at(step, elapsed)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict[str, float | int | str]:
        return {k: v for k, v in asdict(self).items() if k != "horizon"}

    def load_state_dict(self, state: dict[str, float | int | str]) -> None:
        for key, value in state.items():
            if key != "horizon":
                setattr(self, key, value)


def teacher_forcing_ratio(tc: TrainConfig, step: int) -> float:
    """The chance of feeding the gold token at optimizer step `step` (scheduled sampling,
    Bengio et al. 2015): constant, linear decay to `teacher_forcing_min` over
    `teacher_forcing_decay_steps`, or inverse sigmoid k / (k + exp(step / k))."""
    start, floor, k = tc.teacher_forcing, tc.teacher_forcing_min, tc.teacher_forcing_decay_steps
    if tc.teacher_forcing_schedule == "constant":
        return start
    if tc.teacher_forcing_schedule == "linear":
        return max(floor, start - (start - floor) * step / k)
    if tc.teacher_forcing_schedule == "inverse_sigmoid":
        return max(floor, start * k / (k + math.exp(min(step / k, 700.0))))
    raise ValueError(f"train.teacher_forcing_schedule: {tc.teacher_forcing_schedule!r}")
