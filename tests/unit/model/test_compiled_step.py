"""train.compile: the input-feeding training step through torch.compile (inductor C++)
gives the eager step's loss and gradients within float32 rounding; without a C++ compiler
the step runs eagerly and the log says so once.

Tolerance: inductor fuses the elementwise work and may reorder its sums (the softmax's, the
gates'), so float32 results differ from eager by rounding only: loss within rtol 1e-5,
gradients within atol 1e-6 / rtol 1e-5. Measured on a 2-core AMD EPYC (AVX-512): the loss
bitwise equal, gradients within 1.2e-7."""

from __future__ import annotations

import logging

import pytest
import torch

from seq2seq_core.config import ModelConfig
from seq2seq_core.kernels import compiled as compiled_module
from seq2seq_core.model import decoder as decoder_module
from seq2seq_core.model.seq2seq import build_model

V = 24
JOEY_LIKE = ModelConfig(cell="lstm", attention="bahdanau", input_feeding=True, emb_size=8,
                        hidden_size=12, tie_embeddings="none", dropout=0.0)  # fmt: skip


def _batch() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    src_len = torch.tensor([7, 3, 5])
    src = torch.randint(4, V, (3, 7), generator=g)
    src[torch.arange(7) >= src_len.unsqueeze(1)] = 0
    tgt_in = torch.randint(4, V, (3, 6), generator=g)
    tgt_out = torch.randint(4, V, (3, 6), generator=g)
    tgt_out[1, 4:] = 0
    return src, src_len, tgt_in, tgt_out


def _loss_and_grads(compile_training: bool, batches) -> list[tuple[torch.Tensor, list]]:
    torch.manual_seed(0)
    model = build_model(JOEY_LIKE, V, V).train()
    model.compile_training = compile_training
    out = []
    for src, src_len, tgt_in, tgt_out in batches:
        model.zero_grad()
        loss = model(src, src_len, tgt_in, tgt_out)
        loss.backward()
        out.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    return out


@pytest.mark.skipif(not compiled_module.can_compile(), reason="no C++ compiler")
def test_compiled_step_equals_eager_within_float_rounding() -> None:
    first = _batch()
    src, src_len, tgt_in, tgt_out = first
    # another batch size, source and target length: the same compiled code (dynamic shapes)
    second = (src[1:, :5], src_len[1:], tgt_in[1:, :4], tgt_out[1:, :4])
    batches = [first, second]
    eager = _loss_and_grads(False, batches)
    fast = _loss_and_grads(True, batches)
    assert hasattr(decoder_module._compiled_feed_step(), "_torchdynamo_orig_callable")
    for (loss, grads), (ref_loss, ref_grads) in zip(fast, eager, strict=True):
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=0.0)
        for g, r in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-5)


def test_without_a_compiler_the_step_is_eager_and_said_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(compiled_module.shutil, "which", lambda name: None)
    compiled_module.can_compile.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=compiled_module.__name__):

            def step(x: torch.Tensor) -> torch.Tensor:
                return x + 1

            assert compiled_module.compiled(step) is step
            assert compiled_module.compiled(step) is step
        warnings = [r for r in caplog.records if "no C++ compiler" in r.getMessage()]
        assert len(warnings) == 1
    finally:
        compiled_module.can_compile.cache_clear()


def test_compile_is_off_by_default_and_outside_training() -> None:
    model = build_model(JOEY_LIKE, V, V).train()
    assert not model.select_kernels().compiled_loop  # train.compile defaults to false
    model.compile_training = True
    assert model.select_kernels().compiled_loop
    with torch.no_grad():  # validation: eager
        assert not model.select_kernels().compiled_loop
