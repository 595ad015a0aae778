import dataclasses
import io
import json
import logging
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import CONSTANT_LR_TRAIN

from seq2seq_core.config import ModelConfig, PipelineConfig, TrainConfig
from seq2seq_core.decoding.greedy import greedy_decode
from seq2seq_core.model.checkpoint import load_model
from seq2seq_core.runtime.threads import pick_threads, usable_cores
from seq2seq_core.training.loop import TrainResult, train_model
from seq2seq_core.training.state import Best, EpochPosition, TrainState

torch.set_num_threads(1)

PAIRS = [
    # Four words or more, so that sentence BLEU can reach 100.
    ("das ist das haus", "this is the house"),
    ("der hund ist hier", "the dog is here"),
    ("ein kind ist da", "a child is there"),
    ("die frau sagt ja", "the woman says yes"),
    ("im anfang war gott", "in the beginning was god"),
    ("gott sprach es werde licht", "god said let there be light"),
]


class CharTokenizer:
    """Tiny stand-in for SubwordTokenizer: one id per character, 0-3 reserved."""

    alphabet = "abcdefghijklmnopqrstuvwxyz "
    src_vocab_size = tgt_vocab_size = 4 + len(alphabet)

    def encode_src(self, texts: list[str]) -> list[list[int]]:
        return [[4 + self.alphabet.index(c) for c in t] for t in texts]

    encode_tgt = encode_src

    def decode_tgt(self, ids: list[list[int]]) -> list[str]:
        return ["".join(self.alphabet[i - 4] for i in seq if i >= 4) for seq in ids]


class Recorder:
    def __init__(self) -> None:
        self.steps: list[tuple[int, dict]] = []
        self.epochs: list[tuple[int, dict]] = []

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self.steps.append((step, metrics))

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.epochs.append((epoch, metrics))


def _cfg(model: dict | None = None, **train: object) -> PipelineConfig:
    untied = {"tie_embeddings": "none"}
    m = {"emb_size": 16, "hidden_size": 32, "dropout": 0.0, **untied, **(model or {})}
    t = {"lr": 0.01, "batch_tokens": 40, "max_epochs": 2, "time_budget_min": 5.0}
    t |= {**CONSTANT_LR_TRAIN, **train}
    return PipelineConfig(
        model=dataclasses.replace(ModelConfig(), **m), train=dataclasses.replace(TrainConfig(), **t)
    )


def _train(cfg: PipelineConfig, ckpt: Path, pairs=PAIRS, callbacks=None, **kw) -> TrainResult:
    return train_model(
        cfg,
        tokenizer=CharTokenizer(),
        train_pairs=pairs,
        valid_pairs=pairs[:3],
        checkpoint_dir=ckpt,
        callbacks=callbacks or [],
        **kw,
    )


def _weights(path: str | Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model_state"]


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=0, rtol=0)


@pytest.mark.parametrize(
    "model",
    [
        {"cell": "gru", "attention": "bahdanau"},
        {"cell": "lstm", "attention": "luong", "input_feeding": True},
        {"cell": "lstm", "attention": "none", "bidirectional": False},
    ],
    ids=["gru-bahdanau", "lstm-luong-feed", "lstm-plain"],
)
def test_tiny_model_memorises_pairs(tmp_path: Path, model: dict) -> None:
    cfg = _cfg({**model, "hidden_size": 64}, batch_tokens=1000, max_epochs=150)
    result = _train(cfg, tmp_path)
    assert result.history[-1]["train_loss"] < 0.05
    assert result.best_valid_bleu == pytest.approx(100.0)
    trained, _ = load_model(Path(result.best_checkpoint))
    tok = CharTokenizer()
    out = greedy_decode(
        trained,
        tok.encode_src([s for s, _ in PAIRS]),
        batch_size=4,
        max_len_ratio=2.0,
        max_len_extra=5,
        device="cpu",
    )
    assert tok.decode_tgt(out.ids) == [t for _, t in PAIRS]


def test_seed_config_with_teacher_forcing_half_learns(tmp_path: Path) -> None:
    cfg = _cfg(
        {"cell": "lstm", "attention": "none", "bidirectional": False},
        teacher_forcing=0.5,
        batch_tokens=1000,
        max_epochs=60,
    )
    result = _train(cfg, tmp_path)
    assert result.history[-1]["train_loss"] < 0.5 * result.history[0]["train_loss"]


def test_same_seed_same_losses_and_callbacks(tmp_path: Path) -> None:
    rec = Recorder()
    a = _train(_cfg(), tmp_path / "a", callbacks=[rec])
    b = _train(_cfg(), tmp_path / "b")
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    assert [h["valid_loss"] for h in a.history] == [h["valid_loss"] for h in b.history]
    assert [e for e, _ in rec.epochs] == [1, 2]
    assert [s for s, _ in rec.steps] == list(range(1, a.steps + 1))
    assert set(rec.steps[0][1]) == {"loss", "lr", "grad_norm", "tokens_per_s", "teacher_forcing"}
    assert set(rec.epochs[0][1]) == {
        "train_loss",
        "valid_loss",
        "valid_ppl",
        "valid_bleu",
        "epoch_seconds",
        "tokens_per_s",
        "lr",
    }
    history = json.loads((tmp_path / "a" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert a.stop_reason == "max_epochs" and a.epochs == 2


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    cfg = _cfg(teacher_forcing=0.5, model={"dropout": 0.3})  # coins and dropout use the RNG
    straight = _train(cfg, tmp_path / "straight")
    _train(
        dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_epochs=1)),
        tmp_path / "resumed",
    )
    resumed = _train(cfg, tmp_path / "resumed")
    assert resumed.history == [
        {**h, "epoch_seconds": r["epoch_seconds"], "tokens_per_s": r["tokens_per_s"]}
        for h, r in zip(straight.history, resumed.history, strict=True)
    ]
    assert resumed.steps == straight.steps
    a = torch.load(straight.last_checkpoint, weights_only=True)["model_state"]
    b = torch.load(resumed.last_checkpoint, weights_only=True)["model_state"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=0, rtol=0)


def test_rerun_after_finish_trains_nothing(tmp_path: Path, caplog) -> None:
    first = _train(_cfg(), tmp_path)
    before = _weights(first.last_checkpoint)
    rec = Recorder()
    with caplog.at_level(logging.INFO, logger="seq2seq_core"):
        again = _train(_cfg(), tmp_path, callbacks=[rec])
    assert rec.steps == [] and rec.epochs == []  # resumed at the end: not one more step
    assert again.steps == first.steps and again.history == first.history
    assert again.stop_reason == "max_epochs"
    _assert_same_weights(_weights(again.last_checkpoint), before)
    assert "resuming from" in caplog.text and "max_epochs reached (2/2" in caplog.text


def test_changed_config_starts_fresh(tmp_path: Path, caplog) -> None:
    first = _train(_cfg(max_epochs=1), tmp_path)
    before = _weights(first.last_checkpoint)
    rec = Recorder()
    with caplog.at_level(logging.INFO, logger="seq2seq_core"):
        result = _train(_cfg(max_epochs=1, lr=0.005), tmp_path, callbacks=[rec])
    assert [s for s, _ in rec.steps] == list(range(1, first.steps + 1))  # from step 1 again
    assert result.epochs == 1 and len(result.history) == 1
    assert any(not torch.equal(v, before[k]) for k, v in _weights(result.last_checkpoint).items())
    assert "written by another run" in caplog.text and "starting fresh" in caplog.text


class FakeClock:
    """The time budget's clock, advanced by the test (10 s per optimizer step)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Ticker(Recorder):
    def __init__(self, clock: FakeClock, seconds_per_step: float) -> None:
        super().__init__()
        self.clock, self.seconds = clock, seconds_per_step

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        super().on_step(step, metrics)
        self.clock.now += self.seconds


def test_time_budget_stops_cleanly_and_keeps_best(tmp_path: Path, caplog) -> None:
    clock = FakeClock()
    # 30 s: three steps of 10 s (the Ticker's, so its callbacks must come every step)
    cfg = _cfg(max_epochs=1000, time_budget_min=0.5, log_every_steps=1)
    with caplog.at_level(logging.INFO, logger="seq2seq_core"):
        result = _train(cfg, tmp_path, callbacks=[Ticker(clock, 10.0)], clock=clock)
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
    cfg = _cfg(
        {"dropout": 0.3}, teacher_forcing=0.5, accumulate_steps=accumulate, log_every_steps=1
    )  # the Ticker's clock moves in on_step, so that must come every step
    pairs = PAIRS * 3  # 12 batches an epoch
    whole = Recorder()
    straight = _train(cfg, tmp_path / "whole", pairs=pairs, callbacks=[whole])

    clock = FakeClock()
    short = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, time_budget_min=1.0))
    cut = _train(short, tmp_path / "cut", pairs=pairs, callbacks=[Ticker(clock, 12.0)], clock=clock)
    done = cut.steps  # 5 steps of 12 s spend the minute
    assert cut.stop_reason == "time_budget" and done == 5 and cut.history[-1]["partial"]
    assert cut.history[-1]["batches"] == 5 * accumulate
    rest = Recorder()
    with caplog.at_level(logging.INFO, logger="seq2seq_core"):
        resumed = _train(cfg, tmp_path / "cut", pairs=pairs, callbacks=[rest], clock=clock)
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
    _assert_same_weights(_weights(resumed.last_checkpoint), _weights(straight.last_checkpoint))


def test_progress_written_before_the_state_had_parts_still_resumes() -> None:
    flat = {"epoch": 2, "step": 9, "elapsed": 3.5, "train_tokens": 70, "train_seconds": 1.5,
            "best_valid_bleu": 4.0, "best_valid_loss": 2.5, "bad_epochs": 1,
            "batch_in_epoch": 3, "epoch_loss_sum": 6.0, "epoch_tokens": 20,
            "epoch_seconds": 0.5, "history": [{"epoch": 1}]}  # fmt: skip
    state = TrainState.from_dict(flat)
    assert (state.epoch, state.step, state.elapsed, state.history) == (2, 9, 3.5, [{"epoch": 1}])
    assert state.best == Best(valid_bleu=4.0, valid_loss=2.5, bad_epochs=1)
    assert state.position == EpochPosition(batch=3, loss_sum=6.0, tokens=20, seconds=0.5)
    assert TrainState.from_dict(state.to_dict()) == state


def test_pick_threads_uses_the_idle_cores() -> None:
    usable = usable_cores()
    assert pick_threads(3) == 3  # asked for: no measurement
    assert pick_threads(0, idle=0.0) == 1  # never fewer than one
    assert pick_threads(0, idle=0.4) == 1
    assert pick_threads(0, idle=1.6) == min(2, usable)  # rounded to the nearest core
    assert pick_threads(0, idle=1000.0) == usable  # never more than the process may use


def test_bf16_precision_from_the_config_trains(tmp_path: Path) -> None:
    fp32 = _train(_cfg(max_epochs=3, threads=1), tmp_path / "fp32")
    bf16 = _train(_cfg(max_epochs=3, threads=1, precision="bf16"), tmp_path / "bf16")
    losses = [h["train_loss"] for h in bf16.history]
    assert losses[-1] < losses[0]
    # autocast really ran: bf16 matmuls round differently from fp32
    assert losses != pytest.approx([h["train_loss"] for h in fp32.history], rel=1e-4)


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
        result = _train(
            _cfg(log_every_steps=2), tmp_path, callbacks=[Ticker(clock, 1.0)], clock=clock
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
        _train(_cfg(log_every_steps=1), tmp_path)
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if m.startswith("step ")]
    assert len([m for m in messages if m.startswith("epoch ")]) == 2  # epoch lines stay
    assert "epoch 1" in sys.stderr.getvalue()  # tqdm's bar went to the terminal


def test_early_stopping_says_why(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="seq2seq_core"):
        _train(_cfg(lr=0.0, max_epochs=6, early_stopping_patience=2), tmp_path)
    assert caplog.records[-1].getMessage() == (
        "stopping: early stopping: no better valid BLEU for 2 epochs "
        "(train.early_stopping_patience 2)"
    )
