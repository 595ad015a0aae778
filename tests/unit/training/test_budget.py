"""Budget-aware learning rates: they reach train.min_lr exactly where the budget ends (time
or max_epochs, whichever first) and a killed run resumes them exactly."""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import pytest
import torch

from seq2seq_core.config import TrainConfig
from seq2seq_core.data.batches import encode_pairs
from seq2seq_core.training.budget import Horizon, steps_per_epoch
from seq2seq_core.training.optim import LearningRate
from tests.support import (
    PAIRS,
    CharTokenizer,
    FakeClock,
    Recorder,
    StopAt,
    Ticker,
    assert_same_weights,
    run_training,
    train_cfg,
    weights_of,
)


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
    cfg = train_cfg(lr=0.01, lr_schedule="budget_linear", min_lr=0.0, time_budget_min=1.0,
               max_epochs=1000, log_every_steps=1)  # fmt: skip
    ticker = Ticker(clock, 10.0)  # 60 s: six steps of 10 s
    result = run_training(cfg, tmp_path, pairs=PAIRS * 3, callbacks=[ticker], clock=clock)
    assert result.stop_reason == "time_budget" and result.steps == 6
    lrs = [m["lr"] for _, m in ticker.steps]
    assert lrs == pytest.approx([0.01 * (1 - k / 6) for k in range(6)], abs=1e-15)
    assert LearningRate.from_config(cfg.train, Horizon.of(cfg.train, _data())).at(7, 60.0) == 0


def test_cosine_decay_reaches_min_lr_when_max_epochs_end(tmp_path: Path) -> None:
    cfg = train_cfg(lr=0.01, lr_schedule="budget_cosine", min_lr=0.001, max_epochs=2)
    rec = Recorder()
    result = run_training(cfg, tmp_path, callbacks=[rec], clock=FakeClock())  # time stands still
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
    cfg = train_cfg({"dropout": 0.3}, lr_schedule=kind, warmup_steps=2, checkpoint_every_steps=2,
               log_every_steps=1)  # fmt: skip
    whole = Recorder()
    run_training(cfg, tmp_path / "whole", callbacks=[whole], clock=FakeClock())
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, tmp_path / "cut", callbacks=[StopAt(5)], clock=FakeClock())
    resumed = Recorder()
    run_training(cfg, tmp_path / "cut", callbacks=[resumed], clock=FakeClock())
    assert [s for s, _ in resumed.steps] == [5, 6, 7, 8]  # last.pt was written after step 4
    assert [m["lr"] for _, m in resumed.steps] == [m["lr"] for _, m in whole.steps][4:]
    assert [m["loss"] for _, m in resumed.steps] == [m["loss"] for _, m in whole.steps][4:]


def test_resumed_run_continues_from_the_saved_elapsed_time(tmp_path: Path) -> None:
    """By time: the first step after a resume takes the LR of the seconds last.pt saved,
    not of a fresh clock."""
    cfg = train_cfg(lr=0.01, lr_schedule="budget_linear", min_lr=0.0, time_budget_min=2.0,
               max_epochs=1000, checkpoint_every_steps=3, log_every_steps=1)  # fmt: skip
    clock = FakeClock()
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, tmp_path, callbacks=[StopAt(5), Ticker(clock, 10.0)], clock=clock)
    saved = torch.load(tmp_path / "last.pt", weights_only=True)["progress"]
    assert (saved["step"], saved["elapsed"]) == (4, 40.0)  # at epoch 1's end (4 batches)
    fresh = FakeClock()
    fresh.now = 1000.0  # another process: its clock's zero is elsewhere
    ticker = Ticker(fresh, 10.0)
    run_training(cfg, tmp_path, callbacks=[ticker], clock=fresh)
    assert ticker.steps[0][0] == 5
    assert [m["lr"] for _, m in ticker.steps][:3] == pytest.approx(
        [0.01 * (1 - s / 120) for s in (40.0, 50.0, 60.0)], abs=1e-15
    )


def test_time_budget_stops_cleanly_and_keeps_best(tmp_path: Path, caplog) -> None:
    clock = FakeClock()
    # 30 s: three steps of 10 s (the Ticker's, so its callbacks must come every step)
    cfg = train_cfg(max_epochs=1000, time_budget_min=0.5, log_every_steps=1)
    with caplog.at_level(logging.INFO, logger="seq2seq_core"):
        result = run_training(cfg, tmp_path, callbacks=[Ticker(clock, 10.0)], clock=clock)
    assert result.stop_reason == "time_budget" and result.steps == 3
    assert result.epochs == 0  # 3 of the first epoch's 4 batches: not done
    assert result.history == [{**result.history[0], "epoch": 1, "partial": True, "batches": 3,
                               "batches_total": 4}]  # fmt: skip
    assert Path(result.best_checkpoint).is_file() and Path(result.last_checkpoint).is_file()
    last = torch.load(result.last_checkpoint, weights_only=True)
    assert last["progress"]["position"]["batch"] == 3 and last["progress"]["epoch"] == 0
    assert "epoch 1/1000 (partial: 3/4 batches): train loss" in caplog.text
    assert "time budget of 30s spent in epoch 1 after 3 batches" in caplog.text


@pytest.mark.parametrize("accumulate", [1, 2])
def test_budget_stop_mid_epoch_then_resume_completes_it(
    tmp_path: Path, accumulate: int, caplog
) -> None:
    """A rerun with a larger budget starts at the batch where the budget ran out and ends
    where an uninterrupted run ends: same steps, same losses, same weights."""
    cfg = train_cfg(
        {"dropout": 0.3}, teacher_forcing=0.5, accumulate_steps=accumulate, log_every_steps=1
    )  # the Ticker's clock moves in on_step, so that must come every step
    pairs = PAIRS * 3  # 12 batches an epoch
    whole = Recorder()
    straight = run_training(cfg, tmp_path / "whole", pairs=pairs, callbacks=[whole])

    clock = FakeClock()
    short = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, time_budget_min=1.0))
    cut = run_training(
        short, tmp_path / "cut", pairs=pairs, callbacks=[Ticker(clock, 12.0)], clock=clock
    )
    done = cut.steps  # 5 steps of 12 s spend the minute
    assert cut.stop_reason == "time_budget" and done == 5 and cut.history[-1]["partial"]
    assert cut.history[-1]["batches"] == 5 * accumulate
    rest = Recorder()
    with caplog.at_level(logging.INFO, logger="seq2seq_core"):
        resumed = run_training(cfg, tmp_path / "cut", pairs=pairs, callbacks=[rest], clock=clock)
    batch = 5 * accumulate
    assert f"0 epochs done, epoch 1 continues at batch {batch}, step 5" in caplog.text
    assert [s for s, _ in rest.steps] == [s for s, _ in whole.steps][done:]
    assert [m["loss"] for _, m in rest.steps] == [m["loss"] for _, m in whole.steps][done:]
    assert resumed.steps == straight.steps and resumed.epochs == straight.epochs == 2
    complete = [h for h in resumed.history if not h.get("partial")]
    for got, want in zip(complete, straight.history, strict=True):
        assert (got["epoch"], got["train_loss"], got["valid_loss"]) == (
            want["epoch"], want["train_loss"], want["valid_loss"]
        )  # fmt: skip
    assert_same_weights(weights_of(resumed.last_checkpoint), weights_of(straight.last_checkpoint))
