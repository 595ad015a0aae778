"""training.log_lines: progress lines for logs, a bar for terminals."""

import io
import logging
import re
import sys
from pathlib import Path

import pytest

from tests.support import FakeClock, Ticker, run_training, train_cfg


class TerminalStderr(io.StringIO):
    def isatty(self) -> bool:
        return True


EPOCH_LINE = re.compile(
    r"epoch 1/2: train loss \d+\.\d{3}, valid loss \d+\.\d{3}, valid BLEU \d+\.\d{2}, "
    r"[\d,]+ tok/s, elapsed 4s, budget left 4m56s"
)


def test_progress_is_logged_when_stderr_is_not_a_terminal(tmp_path: Path, caplog) -> None:
    clock = FakeClock()
    with caplog.at_level(logging.INFO, logger="seq2seq_core"):
        result = run_training(
            train_cfg(log_every_steps=2), tmp_path, callbacks=[Ticker(clock, 1.0)], clock=clock
        )
    messages = [r.getMessage() for r in caplog.records]
    assert result.steps == 8
    steps = [m for m in messages if m.startswith("step ")]
    assert [m.split(":")[0] for m in steps] == ["step 2", "step 4", "step 6", "step 8"]
    # Steps 1 and 2 are read (and their callbacks, the Ticker's, run) after step 2.
    assert re.fullmatch(r"step 2: loss \d\.\d{3}, lr 0\.01, [\d,]+ tok/s, elapsed 0s", steps[0])
    assert EPOCH_LINE.fullmatch(next(m for m in messages if m.startswith("epoch 1/2")))
    assert "training from scratch (train.init_from: none)" in messages
    assert messages[-1] == "stopping: train.max_epochs reached (2/2 epochs done)"


def test_a_terminal_gets_the_bar_and_no_step_lines(
    tmp_path: Path, caplog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stderr", TerminalStderr())
    with caplog.at_level(logging.INFO, logger="seq2seq_core"):
        run_training(train_cfg(log_every_steps=1), tmp_path)
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if m.startswith("step ")]
    assert len([m for m in messages if m.startswith("epoch ")]) == 2  # epoch lines stay
    assert "epoch 1" in sys.stderr.getvalue()  # tqdm's bar went to the terminal
