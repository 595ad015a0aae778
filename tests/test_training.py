import dataclasses
import json
from pathlib import Path

import pytest
import torch

from seq2seq_core.checkpoint import load_model
from seq2seq_core.config import ModelConfig, PipelineConfig, TrainConfig
from seq2seq_core.decoding import greedy_decode
from seq2seq_core.training import TrainResult, pick_threads, train_model

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
    t = {"lr": 0.01, "batch_tokens": 40, "max_epochs": 2, "time_budget_min": 5.0, **train}
    return PipelineConfig(
        model=dataclasses.replace(ModelConfig(), **m), train=dataclasses.replace(TrainConfig(), **t)
    )


def _train(cfg: PipelineConfig, ckpt: Path, pairs=PAIRS, callbacks=None) -> TrainResult:
    return train_model(
        cfg,
        tokenizer=CharTokenizer(),
        train_pairs=pairs,
        valid_pairs=pairs[:3],
        checkpoint_dir=ckpt,
        callbacks=callbacks or [],
    )


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


def test_changed_config_starts_fresh(tmp_path: Path) -> None:
    _train(_cfg(max_epochs=1), tmp_path)
    result = _train(_cfg(max_epochs=1, lr=0.005), tmp_path)
    assert result.epochs == 1 and len(result.history) == 1


def test_time_budget_stops_cleanly_and_keeps_best(tmp_path: Path) -> None:
    pairs = PAIRS * 40
    cfg = _cfg(max_epochs=1000, time_budget_min=0.5 / 60, batch_tokens=30)
    result = _train(cfg, tmp_path, pairs=pairs)
    assert result.stop_reason == "time_budget"
    assert result.epochs == len(result.history) >= 1
    assert Path(result.best_checkpoint).is_file() and Path(result.last_checkpoint).is_file()
    assert result.seconds < 30


def test_pick_threads() -> None:
    assert pick_threads(3) == 3
    assert pick_threads(0) >= 1


def test_bf16_autocast_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from seq2seq_core import training

    # Until config.py has train.precision, training reads it through _precision.
    monkeypatch.setattr(training, "_precision", lambda cfg: "bf16")
    result = _train(_cfg(max_epochs=8), tmp_path)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
