"""runtime.threads: how many torch threads a run takes."""

import logging
import re

import pytest
import torch

from seq2seq_core.runtime.threads import pick_threads, prepare_host, usable_cores


def test_pick_threads_uses_the_idle_cores() -> None:
    usable = usable_cores()
    assert pick_threads(3) == 3  # asked for: no measurement
    assert pick_threads(0, idle=0.0) == 1  # never fewer than one
    assert pick_threads(0, idle=0.4) == 1
    assert pick_threads(0, idle=1.6) == min(2, usable)  # rounded to the nearest core
    assert pick_threads(0, idle=1000.0) == usable  # never more than the process may use


def test_the_thread_count_and_why_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    """The run's log says how many threads it trains on: a person comparing two nights'
    tokens/s sees at once whether the machine was shared."""
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="seq2seq_core.runtime.threads"):
            prepare_host(torch.device("cpu"), 1)
            prepare_host(torch.device("cpu"), 0)
    finally:
        torch.set_num_threads(before)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "torch threads: 1 (train.threads: 1)"
    assert re.fullmatch(
        r"torch threads: \d+ \(train\.threads: 0; idle cores over 1 s: \d+\.\d of \d+ usable\)",
        lines[1],
    ), lines[1]
