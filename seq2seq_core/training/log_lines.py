"""How a training run shows its progress: a tqdm bar on a terminal, log lines elsewhere.

An unattended run (a Prefect worker, DVC in CI) has no terminal; its story is the
``seq2seq_core`` log, which flows/ routes to the CLI's stderr and the flow-run log:
one INFO line per epoch and one every ``train.log_every_steps`` optimizer steps.
"""

from __future__ import annotations

import logging
import sys

from tqdm import tqdm

log = logging.getLogger(__name__)


def duration(seconds: float) -> str:
    """``45s``, ``3m12s``, ``2h05m07s``."""
    total = round(max(seconds, 0.0))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def epoch_line(
    epoch: int,
    max_epochs: int,
    metrics: dict[str, float],
    *,
    elapsed: float,
    budget_left: float,
    partial: tuple[int, int] | None = None,
) -> str:
    """``epoch 3/30: train loss 3.412, valid loss 3.655, valid BLEU 12.31, 6,374 tok/s,
    elapsed 3m12s, budget left 6m48s``; a partial epoch says how many batches it had."""
    where = f"epoch {epoch}/{max_epochs}"
    if partial is not None:
        where += f" (partial: {partial[0]}/{partial[1]} batches)"
    return (
        f"{where}: train loss {metrics['train_loss']:.3f}, "
        f"valid loss {metrics['valid_loss']:.3f}, valid BLEU {metrics['valid_bleu']:.2f}, "
        f"{metrics['tokens_per_s']:,.0f} tok/s, elapsed {duration(elapsed)}, "
        f"budget left {duration(budget_left)}"
    )


class StepProgress:
    """One epoch's progress: a tqdm bar when stderr is a terminal, else an INFO line every
    ``log_every`` optimizer steps. Only the main process shows either."""

    def __init__(self, *, epoch: int, total: int, done: int, log_every: int, main: bool) -> None:
        terminal = sys.stderr.isatty()
        self.bar = tqdm(
            total=total, initial=done, desc=f"epoch {epoch}", disable=not (terminal and main),
            leave=False,
        )  # fmt: skip
        self.log_every = log_every if main and not terminal else 0

    def advance(self, batches: int) -> None:
        """Batches trained (the bar moves every step)."""
        self.bar.update(batches)

    def report(self, *, step: int, loss: float, lr: float, tok_s: float, elapsed: float) -> None:
        """A step's numbers, once read off the device: the bar's postfix, the log line."""
        if not self.bar.disable:
            self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tok_s:.0f}", refresh=False)
        if self.log_every and step % self.log_every == 0:
            log.info(
                "step %d: loss %.3f, lr %.3g, %s tok/s, elapsed %s",
                step, loss, lr, f"{tok_s:,.0f}", duration(elapsed),
            )  # fmt: skip

    def close(self) -> None:
        self.bar.close()
