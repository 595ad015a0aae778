"""training.step: one optimizer update over accumulated batches equals one over their union."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from seq2seq_core.data.batches import collate
from seq2seq_core.model.seq2seq import build_model
from seq2seq_core.training.step import train_step
from tests.support import PAIRS, CharTokenizer, train_cfg


def _sgd_step(batches: list, accumulate: int) -> tuple[dict[str, torch.Tensor], float, list]:
    """The gradient of one ``train_step`` (read off an SGD step with lr 1), its norm and
    the batches' losses, from the same initial weights every call."""
    cfg = train_cfg({"dropout": 0.0})
    tc = dataclasses.replace(cfg.train, accumulate_steps=accumulate, clip_grad=1e9)
    torch.manual_seed(0)
    model = build_model(cfg.model, CharTokenizer.src_vocab_size, CharTokenizer.tgt_vocab_size)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    losses, norm = train_step(model, optimizer, batches, teacher_forcing=1.0, lr=1.0, tc=tc)
    losses, norm = [float(x) for x in losses], float(norm)
    grads = {k: before[k] - v for k, v in model.state_dict().items()}
    return grads, norm, losses


def test_accumulated_step_equals_one_batch_of_both_halves() -> None:
    tok = CharTokenizer()
    src = tok.encode_src([s for s, _ in PAIRS[:4]])
    tgt = tok.encode_tgt([t for _, t in PAIRS[:4]])
    half_a, half_b = collate(src, tgt, [0, 2]), collate(src, tgt, [1, 3])
    # Equal token counts: the mean of the halves' per-token losses is the whole's.
    assert half_a.ntokens == half_b.ntokens == 35
    acc_grads, acc_norm, acc_losses = _sgd_step([half_a, half_b], accumulate=2)
    one_grads, one_norm, one_losses = _sgd_step([collate(src, tgt, [0, 1, 2, 3])], accumulate=1)
    assert sum(acc_losses) / 2 == pytest.approx(one_losses[0], rel=1e-6)
    assert acc_norm == pytest.approx(one_norm, rel=1e-5)
    for name, grad in one_grads.items():
        torch.testing.assert_close(acc_grads[name], grad, atol=1e-6, rtol=1e-5)
