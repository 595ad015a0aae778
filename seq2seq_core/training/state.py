"""What a training run carries across a resume.

``TrainState`` is the run's position (epochs done, optimizer steps, where it is inside the
epoch being trained), its best validation so far, its timing totals and its history. It
travels in ``last.pt`` as plain numbers (``to_dict``), so ``torch.load(weights_only=True)``
accepts it and a resumed run continues at the exact batch where the last one stopped.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class EpochPosition:
    """Inside the epoch being trained: what a mid-epoch resume needs to continue it."""

    batch: int = 0  # batches of this epoch already trained
    loss_sum: float = 0.0  # sum over those batches of (loss per token x tokens)
    tokens: int = 0  # target tokens in those batches
    seconds: float = 0.0  # training time spent on them


@dataclass
class Best:
    """The best validation so far (by BLEU, ties to the lower loss) and the early-stopping
    count of full-epoch validations since it."""

    valid_bleu: float = -1.0
    valid_loss: float = math.inf
    bad_epochs: int = 0

    def improved_by(self, metrics: dict[str, float]) -> bool:
        return (metrics["valid_bleu"], -metrics["valid_loss"]) > (
            self.valid_bleu,
            -self.valid_loss,
        )


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    elapsed: float = 0.0  # seconds of the time budget spent (training + validation)
    train_tokens: int = 0  # over completed epochs, all ranks
    train_seconds: float = 0.0
    best: Best = field(default_factory=Best)
    position: EpochPosition = field(default_factory=EpochPosition)
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainState:
        raw = dict(raw)
        if "best" not in raw:  # written before the state had parts (flat keys)
            raw["best"] = {k: raw.pop(old) for k, old in _FLAT_BEST.items()}
            raw["position"] = {k: raw.pop(old) for k, old in _FLAT_POSITION.items()}
        best, position = Best(**raw.pop("best")), EpochPosition(**raw.pop("position"))
        return cls(**raw, best=best, position=position)


_FLAT_BEST = {"valid_bleu": "best_valid_bleu", "valid_loss": "best_valid_loss",
              "bad_epochs": "bad_epochs"}  # fmt: skip
_FLAT_POSITION = {"batch": "batch_in_epoch", "loss_sum": "epoch_loss_sum",
                  "tokens": "epoch_tokens", "seconds": "epoch_seconds"}  # fmt: skip
