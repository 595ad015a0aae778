"""The compiled decoding step (C++, kernels/decode_step.cpp) decodes exactly as the eager
step: the same tokens and beam scores for every decoder variant and precision, and the
eager path, logged once, where the extension cannot be built."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil

import pytest
import torch

from seq2seq_core.config import DecodeConfig, ModelConfig
from seq2seq_core.decoding.beam_search import beam_search
from seq2seq_core.decoding.greedy import greedy_decode
from seq2seq_core.decoding.translator import Translator
from seq2seq_core.kernels import step_extension
from seq2seq_core.model.compiled_step import CompiledStep, compile_step
from seq2seq_core.model.seq2seq import build_model
from seq2seq_core.runtime.precision import autocast
from tests.support import (
    DECODER_VARIANTS,
    CharTokenizer,
    random_model,
    random_sources,
    variant_id,
)

KW = {"max_len_ratio": 1.5, "max_len_extra": 3, "device": "cpu"}
PRECISIONS = ("fp32", "bf16", "int8")
VARIANTS = [*DECODER_VARIANTS, dataclasses.replace(DECODER_VARIANTS[-1], layers=2)]


def _id(cfg: ModelConfig) -> str:
    return variant_id(cfg) + ("-2layers" if cfg.layers > 1 else "")


@pytest.fixture(scope="module")
def built() -> None:
    """The extension, built once (one to two minutes on two cores; then cached)."""
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler: decoding runs eagerly (tested below)")
    if step_extension.load() is None:
        pytest.fail("the decoding step extension did not build (see the log)")


@pytest.mark.usefixtures("built")
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("cfg", VARIANTS, ids=_id)
def test_compiled_greedy_and_beam_equal_eager(cfg: ModelConfig, precision: str) -> None:
    model, sources = random_model(cfg), random_sources()
    kw = {**KW, "precision": precision}
    eager = greedy_decode(model, sources, batch_size=4, return_attention=True, **kw)
    compiled = greedy_decode(
        model, sources, batch_size=4, return_attention=True, compiled=True, **kw
    )
    assert compiled.ids == eager.ids
    if eager.attention is not None:
        for a, b in zip(compiled.attention, eager.attention, strict=True):
            assert (a is None and b is None) or torch.equal(a, b)
    beam = {"beam_size": 3, "nbest": 3, "batch_size": 3, **kw}
    assert beam_search(model, sources, compiled=True, **beam) == beam_search(model, sources, **beam)
    # Without the EOS bias the rows run to their different limits: finished rows are
    # dropped from the batch mid-call, in C++ as in Python.
    unbiased, sixteen = random_model(cfg, eos_bias=0.0), random_sources(16)
    eager = greedy_decode(unbiased, sixteen, batch_size=16, **kw)
    assert greedy_decode(unbiased, sixteen, batch_size=16, compiled=True, **kw).ids == eager.ids


@pytest.mark.usefixtures("built")
@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_compiled_step_gives_the_eager_logits_and_state_bitwise(precision: str) -> None:
    """One step at the tensor level (beam's grouping: 2 rows per source), so that equal
    tokens are not luck of the argmax."""
    model = random_model(VARIANTS[-1])  # LSTM, Bahdanau, input feeding, 2 layers
    src = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]])
    with torch.inference_mode(), autocast(torch.device("cpu"), precision):
        kernels = model.select_kernels(int8=precision == "int8")
        step = compile_step(model.decoder, kernels)
        assert step is not None
        memory, state = model.encode(src, torch.tensor([4, 3]), kernels)
        state = state._replace(
            hidden=tuple(t.repeat_interleave(2, 1) for t in state.hidden),
            att_vector=state.att_vector.repeat_interleave(2, 0),
        )
        tokens = torch.tensor([1, 12, 13, 14])
        eager = model.decode_step(tokens, state, memory, kernels)
        compiled = step(tokens, state, memory)
    assert torch.equal(compiled[0], eager[0])
    for a, b in zip(compiled[1].hidden, eager[1].hidden, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(compiled[1].att_vector, eager[1].att_vector)
    assert torch.equal(compiled[2], eager[2])


@pytest.mark.usefixtures("built")
def test_the_translator_decodes_through_the_compiled_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """What `seq2seq translate` and the served model run: decode.compiled_step on, the
    compiled greedy loop and beam step are called and translate as the eager path does."""
    calls = {"greedy": 0, "step": 0}
    greedy, step = CompiledStep.greedy, CompiledStep.__call__

    def counted_greedy(self, *args):
        calls["greedy"] += 1
        return greedy(self, *args)

    def counted_step(self, *args):
        calls["step"] += 1
        return step(self, *args)

    monkeypatch.setattr(CompiledStep, "greedy", counted_greedy)
    monkeypatch.setattr(CompiledStep, "__call__", counted_step)
    tok = CharTokenizer()
    torch.manual_seed(0)
    model = build_model(VARIANTS[-1], tok.src_vocab_size, tok.tgt_vocab_size)
    sources = ["abc", "hello world", "xyz"]
    for beam in (1, 3):
        out = {}
        for compiled in (False, True):
            decode = DecodeConfig(beam_size=beam, compiled_step=compiled)
            out[compiled] = Translator(model, tok, decode, frozen=True).translate(sources)
        assert out[True] == out[False]
    assert calls["greedy"] == 1 and calls["step"] > 0, calls


def test_without_a_compiler_decoding_runs_eagerly_and_says_so_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(step_extension, "_loaded", {})
    monkeypatch.setenv("CXX", "no-such-compiler")
    monkeypatch.setenv(step_extension.EXTENSIONS_DIR_ENV, str(tmp_path))
    model, sources = random_model(DECODER_VARIANTS[1]), random_sources()
    eager = greedy_decode(model, sources, batch_size=4, **KW).ids
    with caplog.at_level(logging.INFO, logger=step_extension.__name__):
        for _ in range(2):
            assert greedy_decode(model, sources, batch_size=4, compiled=True, **KW).ids == eager
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no C++ compiler" in warnings[0].getMessage()
    assert not any(tmp_path.iterdir())  # nothing was built


def test_a_changed_source_or_torch_builds_under_another_name() -> None:
    source = step_extension.SOURCE.read_text(encoding="utf-8")
    name = step_extension.extension_name(source)
    assert name == step_extension.extension_name(source)
    assert name != step_extension.extension_name(source + "\n// edited")
