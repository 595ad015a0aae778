"""The training loop's numbers, pinned: a refactor of the engine must not change them.

The values were recorded from the engine before its loop was split into phases (one
torch thread, fixed seeds). A change here is a change of behaviour: the same batches,
RNG draws, accumulation, schedules and loss sums must give the same losses to ~1e-6.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_training import PAIRS, Recorder, _cfg, _train

from seq2seq_core import stages
from seq2seq_core.config import config_from_dict
from tests.conftest import tiny_params

PINNED = {
    # plain: dropout 0, teacher forcing 1, constant lr, one batch per step
    "plain": {
        "config": ({"dropout": 0.0}, {"max_epochs": 3}),
        "train": [2.9550104367377634, 2.3741640740939918, 1.8752350461515308],
        "valid": [2.433485143324908, 1.8525640824261833, 1.3940197439754711],
        "bleu": [0.0, 1.9800104399567056, 1.8899303703253338],
        "steps": 36,
        "step_losses": [
            3.461073398590088,
            3.35298490524292,
            3.2110702991485596,
            3.0879650115966797,
            3.0093820095062256,
            2.8666393756866455,
        ],
    },
    # rich: dropout and coins draw from the RNG, warmup + inverse sqrt, smoothing,
    # accumulation over two batches (odd batch counts leave a short last group)
    "rich": {
        "config": (
            {"dropout": 0.3, "cell": "lstm", "attention": "luong", "input_feeding": True},
            {
                "max_epochs": 3,
                "teacher_forcing": 0.5,
                "lr_schedule": "inverse_sqrt",
                "warmup_steps": 3,
                "label_smoothing": 0.1,
                "accumulate_steps": 2,
                "batch_tokens": 30,
            },
        ),
        "train": [3.2271975017175443, 2.958414099080776, 2.8735048596451924],
        "valid": [2.669146818273208, 2.603308359781901, 2.512227825089997],
        "bleu": [0.0, 0.0, 0.0],
        "steps": 27,
        "step_losses": [
            3.3942995071411133,
            3.436171531677246,
            3.399308204650879,
            3.25604510307312,
            3.266789436340332,
            3.2032630443573,
        ],
    },
}


@pytest.mark.parametrize("name", list(PINNED))
def test_losses_are_pinned(tmp_path: Path, name: str) -> None:
    pinned = PINNED[name]
    model, train = pinned["config"]
    rec = Recorder()
    result = _train(_cfg(model, threads=1, **train), tmp_path, pairs=PAIRS * 3, callbacks=[rec])
    assert result.steps == pinned["steps"]
    assert [h["train_loss"] for h in result.history] == pytest.approx(pinned["train"], rel=1e-6)
    assert [h["valid_loss"] for h in result.history] == pytest.approx(pinned["valid"], rel=1e-6)
    assert [h["valid_bleu"] for h in result.history] == pytest.approx(pinned["bleu"], rel=1e-6)
    step_losses = [m["loss"] for _, m in rec.steps][:6]
    assert step_losses == pytest.approx(pinned["step_losses"], rel=1e-6)


def test_stage_losses_on_genesis_are_pinned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The train stage end to end on the Genesis fixture with its SentencePiece vocabulary."""
    monkeypatch.chdir(tmp_path)
    params = tiny_params()
    params["train"]["threads"] = 1
    cfg = config_from_dict(params)
    stages.ingest(cfg)
    stages.build_vocab(cfg)
    result = stages.train(cfg)
    assert result.steps == 20
    train = [h["train_loss"] for h in result.history]
    valid = [h["valid_loss"] for h in result.history]
    assert train == pytest.approx([5.184900985142202, 4.803964083508238], rel=1e-6)
    assert valid == pytest.approx([5.026119992571935, 4.490467112893557], rel=1e-6)
