"""The time budget: the seconds spent (``TimeBudget``), how much of the budget is spent as
one fraction (``Horizon``), and the budget-aware LR decay.

A run ends at ``train.time_budget_min`` or ``train.max_epochs``, whichever comes first, so
"how far along" is the larger of the two fractions: seconds spent / budget seconds, and
optimizer steps done / (max_epochs x steps per epoch). Budget-aware schedules (Li, Yumer and
Ramanan, "Budgeted Training: Rethinking Deep Neural Network Training Under Resource
Constraints", ICLR 2020) decay the learning rate with that fraction so that it reaches its
floor exactly when the budget ends, whatever the budget is; checkpoint averaging
(``averaging.py``) uses the same fraction for its window.

The seconds are the ones the time budget counts (``TimeBudget.spent``: saved in last.pt as
``TrainState.elapsed``), so a resumed run continues the fraction where its predecessor
left it, and the LR is a pure function of (step, elapsed seconds).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from seq2seq_core.config import TrainConfig
from seq2seq_core.data.batches import EncodedPairs, token_batches


class TimeBudget:
    """``train.time_budget_min`` over the whole run, resumptions included: a resumed run
    starts with the seconds its predecessors spent (``TrainState.elapsed``)."""

    def __init__(
        self, minutes: float, spent: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.seconds = minutes * 60.0
        self.clock = clock
        self._start = clock() - spent

    def spent(self) -> float:
        return self.clock() - self._start

    def left(self) -> float:
        return max(0.0, self.seconds - self.spent())

    def exhausted(self) -> bool:
        return self.spent() >= self.seconds


@dataclass(frozen=True)
class Horizon:
    """Where the budget ends: ``seconds`` of training time or ``steps`` optimizer steps."""

    seconds: float
    steps: int  # max_epochs x optimizer steps per epoch

    @classmethod
    def of(cls, tc: TrainConfig, data: EncodedPairs, world: int = 1) -> Horizon:
        per_epoch = steps_per_epoch(data, tc.batch_tokens, tc.accumulate_steps, world)
        return cls(tc.time_budget_min * 60.0, tc.max_epochs * per_epoch)

    def fraction(self, steps_done: int, elapsed: float) -> float:
        """The spent share of the budget in [0, 1]: time or steps, whichever is further."""
        by_time = elapsed / self.seconds if self.seconds > 0 else 1.0
        by_steps = steps_done / self.steps if self.steps > 0 else 1.0
        return min(1.0, max(0.0, by_time, by_steps))


def steps_per_epoch(data: EncodedPairs, batch_tokens: int, accumulate: int, world: int) -> int:
    """Optimizer steps in one epoch on each rank. The batch count is the same every epoch
    (shuffling reorders pairs of equal lengths and batches, never the length-sorted cuts),
    so the unshuffled batches give it without collating tensors."""
    batches = len(token_batches(data, batch_tokens))
    per_rank = batches // world if world > 1 else batches
    return max(1, math.ceil(per_rank / accumulate))


def budget_decay(schedule: str, fraction: float, base: float, floor: float) -> float:
    """The LR at ``fraction`` of the budget: ``base`` at 0, ``floor`` (``train.min_lr``,
    which may be 0) at 1; linear, or half a cosine wave (flat at both ends)."""
    if schedule == "budget_linear":
        shape = 1.0 - fraction
    elif schedule == "budget_cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * fraction))
    else:
        raise ValueError(f"train.lr_schedule: {schedule!r} is not a budget schedule")
    return floor + (base - floor) * shape
