"""Budget-aware learning rates: they reach train.min_lr exactly where the budget ends (time
or max_epochs, whichever first) and a killed run resumes them exactly."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_training import PAIRS, CharTokenizer, FakeClock, Recorder, Ticker, _cfg, _train
from test_training_engine import StopAt

from seq2seq_core.config import TrainConfig
from seq2seq_core.data.batches import encode_pairs
from seq2seq_core.training.budget import Horizon, steps_per_epoch
from seq2seq_core.training.optim import LearningRate


def _schedule(kind: str, horizon: Horizon, **train: object) -> LearningRate:
    tc = TrainConfig(lr=1.0, lr_schedule=kind, min_lr=0.1, **{"warmup_steps": 0, **train})
    return LearningRate.from_config(tc, horizon)


def test_budget_schedules_end_at_min_lr_where_time_or_steps_end() -> None:
    horizon = Horizon(seconds=60.0, steps=8)
    for kind in ("budget_linear", "budget_cosine"):
        lr = _schedule(kind, horizon)
        assert lr.at(1, 0.0) == 1.0  # nothing spent
        assert lr.at(9, 0.0) == pytest.approx(0.1, abs=1e-15)  # 8 steps done: the end
        assert lr.at(1, 60.0) == pytest.approx(0.1, abs=1e-15)  # the time is up first
        assert lr.at(100, 600.0) == pytest.approx(0.1, abs=1e-15)  # never below min_lr
        assert lr.at(5, 0.0) == pytest.approx(0.55)  # half way: both shapes at the mean
    linear, cosine = _schedule("budget_linear", horizon), _schedule("budget_cosine", horizon)
    assert linear.at(3, 15.0) == pytest.approx(0.1 + 0.9 * 0.75)  # the further one: time 1/4
    assert linear.at(3, 0.0) == pytest.approx(0.1 + 0.9 * 0.75)  # steps 2/8
    assert cosine.at(3, 0.0) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    warm = _schedule("budget_linear", horizon, warmup_steps=4)
    assert warm.at(1, 0.0) == pytest.approx(0.25)  # x 1/4 warmup over (1 - 0) decay
    assert warm.at(3, 0.0) == pytest.approx(0.75 * (0.1 + 0.9 * 0.75))


def test_schedule_state_round_trips_and_leaves_the_horizon_to_the_config() -> None:
    lr = _schedule("budget_cosine", Horizon(60.0, 8))
    state = lr.state_dict()
    assert "horizon" not in state
    torch.save(state, Path("/dev/null"))  # plain numbers: weights_only loads them
    longer = _schedule("budget_cosine", Horizon(120.0, 16))
    longer.load_state_dict(state)
    assert longer.horizon == Horizon(120.0, 16)  # a rerun with a larger budget stretches it
    assert [longer.at(s, 30.0) for s in (1, 5)] == [lr.at(s, 15.0) for s in (1, 3)]


def test_steps_per_epoch_counts_optimizer_steps_of_every_epoch() -> None:
    data = encode_pairs(CharTokenizer(), PAIRS * 3, 128)
    assert steps_per_epoch(data, 40, 1, 1) == 12
    assert steps_per_epoch(data, 40, 5, 1) == 3  # the last group is short
    assert steps_per_epoch(data, 40, 1, 2) == 6  # each rank's share


def test_linear_decay_reaches_min_lr_when_the_time_budget_ends(tmp_path: Path) -> None:
    clock = FakeClock()
    cfg = _cfg(lr=0.01, lr_schedule="budget_linear", min_lr=0.0, time_budget_min=1.0,
               max_epochs=1000, log_every_steps=1)  # fmt: skip
    ticker = Ticker(clock, 10.0)  # 60 s: six steps of 10 s
    result = _train(cfg, tmp_path, pairs=PAIRS * 3, callbacks=[ticker], clock=clock)
    assert result.stop_reason == "time_budget" and result.steps == 6
    lrs = [m["lr"] for _, m in ticker.steps]
    assert lrs == pytest.approx([0.01 * (1 - k / 6) for k in range(6)], abs=1e-15)
    assert LearningRate.from_config(cfg.train, Horizon.of(cfg.train, _data())).at(7, 60.0) == 0


def test_cosine_decay_reaches_min_lr_when_max_epochs_end(tmp_path: Path) -> None:
    cfg = _cfg(lr=0.01, lr_schedule="budget_cosine", min_lr=0.001, max_epochs=2)
    rec = Recorder()
    result = _train(cfg, tmp_path, callbacks=[rec], clock=FakeClock())  # time stands still
    assert result.stop_reason == "max_epochs" and result.steps == 8  # 4 batches an epoch
    want = [0.001 + 0.009 * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    assert [m["lr"] for _, m in rec.steps] == pytest.approx(want, abs=1e-15)
    horizon = Horizon.of(cfg.train, _data())
    assert horizon.steps == 8
    assert LearningRate.from_config(cfg.train, horizon).at(9) == pytest.approx(0.001, abs=1e-15)


def _data():
    return encode_pairs(CharTokenizer(), PAIRS, 128)


@pytest.mark.parametrize("kind", ["budget_linear", "budget_cosine"])
def test_killed_run_resumes_the_budget_schedule_exactly(tmp_path: Path, kind: str) -> None:
    """By steps (time frozen): the same LRs and losses after the kill as without it."""
    cfg = _cfg({"dropout": 0.3}, lr_schedule=kind, warmup_steps=2, checkpoint_every_steps=2,
               log_every_steps=1)  # fmt: skip
    whole = Recorder()
    _train(cfg, tmp_path / "whole", callbacks=[whole], clock=FakeClock())
    with pytest.raises(KeyboardInterrupt):
        _train(cfg, tmp_path / "cut", callbacks=[StopAt(5)], clock=FakeClock())
    resumed = Recorder()
    _train(cfg, tmp_path / "cut", callbacks=[resumed], clock=FakeClock())
    assert [s for s, _ in resumed.steps] == [5, 6, 7, 8]  # last.pt was written after step 4
    assert [m["lr"] for _, m in resumed.steps] == [m["lr"] for _, m in whole.steps][4:]
    assert [m["loss"] for _, m in resumed.steps] == [m["loss"] for _, m in whole.steps][4:]


def test_resumed_run_continues_from_the_saved_elapsed_time(tmp_path: Path) -> None:
    """By time: the first step after a resume takes the LR of the seconds last.pt saved,
    not of a fresh clock."""
    cfg = _cfg(lr=0.01, lr_schedule="budget_linear", min_lr=0.0, time_budget_min=2.0,
               max_epochs=1000, checkpoint_every_steps=3, log_every_steps=1)  # fmt: skip
    clock = FakeClock()
    with pytest.raises(KeyboardInterrupt):
        _train(cfg, tmp_path, callbacks=[StopAt(5), Ticker(clock, 10.0)], clock=clock)
    saved = torch.load(tmp_path / "last.pt", weights_only=True)["progress"]
    assert (saved["step"], saved["elapsed"]) == (4, 40.0)  # at epoch 1's end (4 batches)
    fresh = FakeClock()
    fresh.now = 1000.0  # another process: its clock's zero is elsewhere
    ticker = Ticker(fresh, 10.0)
    _train(cfg, tmp_path, callbacks=[ticker], clock=fresh)
    assert ticker.steps[0][0] == 5
    assert [m["lr"] for _, m in ticker.steps][:3] == pytest.approx(
        [0.01 * (1 - s / 120) for s in (40.0, 50.0, 60.0)], abs=1e-15
    )
