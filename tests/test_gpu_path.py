"""The GPU path's contracts, checked on CPU: what the RNN cells are given, which device
evaluation decodes on, and the validation BLEU's tokenizer."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest
import sacrebleu
import torch

from seq2seq_core.config import ModelConfig, PipelineConfig
from seq2seq_core.decoding.greedy import GreedyResult, greedy_decode
from seq2seq_core.model.seq2seq import build_model

torch.set_num_threads(1)

V = 30


def _cfg(cell: str, feed: bool, layers: int = 2) -> ModelConfig:
    return ModelConfig(
        cell=cell,
        attention="bahdanau",
        bidirectional=True,
        input_feeding=feed,
        emb_size=8,
        hidden_size=12,
        layers=layers,
        dropout=0.1,
        tie_embeddings="none",
    )


def _batch() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    src_len = torch.tensor([7, 3, 5])
    src = torch.randint(4, V, (3, 7), generator=g)
    src[torch.arange(7) >= src_len.unsqueeze(1)] = 0
    tgt_in = torch.randint(4, V, (3, 6), generator=g)
    tgt_out = torch.randint(4, V, (3, 6), generator=g)
    return src, src_len, tgt_in, tgt_out


# --- 1. the cell contract -------------------------------------------------------------------


class CellSpy:
    """Wraps torch's cell functions: records each call's biases, then calls the real one."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, torch.Size, torch.Size]] = []
        for name in ("lstm_cell", "gru_cell"):
            real = getattr(torch, name)
            monkeypatch.setattr(torch, name, self._wrap(name, real))

    def _wrap(self, name, real):
        def spy(x, hidden, w_ih, w_hh, b_ih=None, b_hh=None):
            self.calls.append((name, b_ih.shape, b_hh.shape))
            return real(x, hidden, w_ih, w_hh, b_ih, b_hh)

        return spy


@pytest.mark.parametrize(("cell", "feed"), list(itertools.product(("lstm", "gru"), (False, True))))
def test_rnn_cells_get_one_dimensional_biases_of_b_hh_shape(
    cell: str, feed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch's CUDA cells (``_thnn_fused_*_cell``) take 1-D biases of b_hh's size only
    (aten/src/ATen/native/cuda/RNN.cu, checkSizes): a (B, G) b_ih crashes there."""
    spy = CellSpy(monkeypatch)
    torch.manual_seed(0)
    model = build_model(_cfg(cell, feed), V, V).train()
    src, src_len, tgt_in, tgt_out = _batch()
    model(src, src_len, tgt_in, tgt_out).backward()  # teacher-forced training
    model(src, src_len, tgt_in, tgt_out, teacher_forcing=0.5).backward()  # step by step
    greedy_decode(model, [[5, 6, 7], [8, 9]], batch_size=2, max_len_ratio=1.0, max_len_extra=3)
    assert spy.calls
    for name, b_ih, b_hh in spy.calls:
        assert len(b_ih) == 1 and b_ih == b_hh, f"{name}: b_ih {tuple(b_ih)}, b_hh {tuple(b_hh)}"


# --- 3. one device for evaluation -----------------------------------------------------------


class StubTokenizer:
    def encode_src(self, texts: list[str]) -> list[list[int]]:
        return [[4 + len(w) % 20 for w in t.split()] for t in texts]

    def decode_tgt(self, ids: list[list[int]]) -> list[str]:
        return [" ".join(f"w{i}" for i in seq) for seq in ids]

    def id_to_piece(self, ids: list[int], side: str = "tgt") -> list[str]:
        return [f"p{i}" for i in ids]


def _translator():
    from seq2seq_core.config import DecodeConfig
    from seq2seq_core.decoding.translator import Translator

    torch.manual_seed(0)
    model = build_model(_cfg("gru", True, layers=1), V, V)
    decode = DecodeConfig(beam_size=3, max_len_extra=3, max_len_ratio=1.0)
    return Translator(model, StubTokenizer(), decode, device="cpu")  # type: ignore[arg-type]


def test_evaluation_decodes_every_sentence_on_the_translators_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every decode of the evaluate stage (greedy, beam, the heatmaps) runs on the
    translator's device: a spy records the device asked for, then decodes on CPU."""
    import seq2seq_core.decoding.beam_search as beam_module
    import seq2seq_core.decoding.greedy as decoding_module
    import seq2seq_core.decoding.translator as translator_module
    from seq2seq_core import stages

    asked: list[torch.device] = []

    def spying(real):
        def spy(*args, device="cpu", **kwargs):
            asked.append(torch.device(device))
            return real(*args, device="cpu", **kwargs)

        return spy

    for module, name in (
        (decoding_module, "greedy_decode"),
        (translator_module, "greedy_decode"),
        (translator_module, "beam_search"),
        (beam_module, "beam_search"),
    ):
        monkeypatch.setattr(module, name, spying(getattr(module, name)))
    translator = _translator()
    translator.device = torch.device("meta")  # tensors made without it would not mix
    cfg = PipelineConfig()
    cfg = dataclasses.replace(cfg, decode=dataclasses.replace(cfg.decode, beam_size=3))
    import pandas as pd

    df = pd.DataFrame({"src": ["a bb ccc", "dddd e"], "ref": ["w1 w2", "w3"]})
    stages._decode_and_score(cfg, translator, df, "test", "13a")
    paths = stages._attention_heatmaps(translator, df["src"].tolist(), 2, tmp_path)
    assert paths and len(asked) == 3  # greedy, beam, heatmaps
    assert set(asked) == {torch.device("meta")}, asked


def test_evaluation_loads_the_model_on_the_configured_device(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """train.device: auto on a machine with CUDA evaluates on cuda:0, not on the CPU, and
    says so once; TF32 follows train.tf32."""
    from seq2seq_core import stages
    from seq2seq_core.decoding.translator import Translator
    from seq2seq_core.runtime import device as device_module
    from seq2seq_core.runtime import precision

    monkeypatch.setattr(device_module, "_logged", set())
    tf32: list[tuple[torch.device, bool]] = []
    monkeypatch.setattr(precision, "set_tf32", lambda device, on: tf32.append((device, on)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    loaded: list[torch.device] = []

    def load(cls, checkpoint, vocab_dir, decode=None, device="cpu", max_input_chars=2000):
        loaded.append(torch.device(device))
        return "translator"

    monkeypatch.setattr(Translator, "load", classmethod(load))
    cfg = PipelineConfig()
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device="auto"))
    caplog.set_level("INFO")
    stages._evaluation_translator(cfg)
    assert loaded == [torch.device("cuda", 0)]
    assert "device: cuda:0 (Fake GPU)" in caplog.messages
    assert tf32 == [(torch.device("cuda", 0), True)]  # train.tf32 defaults to on


def test_device_auto_without_cuda_says_so_and_cuda_without_it_fails(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from seq2seq_core.runtime import device as device_module

    monkeypatch.setattr(device_module, "_logged", set())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    caplog.set_level("INFO")
    assert device_module.resolve_device("auto") == torch.device("cpu")
    assert device_module.resolve_device("auto") == torch.device("cpu")
    assert caplog.messages.count("device: cpu (no CUDA available)") == 1
    with pytest.raises(RuntimeError, match="no CUDA device"):
        device_module.resolve_device("cuda")


# --- 17.6. validation BLEU with the target language's tokenizer ----------------------------


def test_zh_validation_bleu_uses_the_zh_tokenizer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unsegmented Chinese is one 13a token per sentence: BLEU ~ 0 for any hypothesis
    short of a perfect one. tok:zh splits characters, as the evaluation does."""
    from seq2seq_core.training import validation

    refs = ["我喜欢吃苹果和香蕉。", "今天天气很好，我们去公园散步吧。"]
    hyps = ["我喜欢吃苹果和橘子。", "今天天气很好，我们去公园走走吧。"]
    monkeypatch.setattr(validation, "greedy_decode", lambda *a, **k: GreedyResult([[1], [2]]))

    class Tok:
        def decode_tgt(self, ids):
            return hyps

    cfg = PipelineConfig()
    data = dataclasses.replace(cfg.data, tgt_lang="zh", prepared_dir=str(tmp_path))
    cfg = dataclasses.replace(cfg, data=data)
    score = validation.validation_bleu(None, Tok(), [[5], [6]], refs, cfg, torch.device("cpu"))  # type: ignore[arg-type]
    zh = sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh").score
    assert sacrebleu.corpus_bleu(hyps, [refs]).score < 1.0  # 13a
    assert score == pytest.approx(zh) and score > 20.0


# --- 1./7. the CUDA branch of the cells, run on CPU -----------------------------------------


def _checked(gi: torch.Tensor, gh: torch.Tensor, state: torch.Tensor, factor: int) -> None:
    # aten/src/ATen/native/cuda/RNN.cu checkSizes, for a call without biases
    assert gi.dim() == 2 and gi.shape == gh.shape
    assert state.dim() == 2 and state.numel() == gi.size(0) * gi.size(1) // factor


def _cpu_fused_lstm(gi, gh, c):
    _checked(gi, gh, c, 4)
    i, f, g, o = (gi + gh).chunk(4, dim=1)
    cy = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(cy), cy, gi.new_empty(0)


def _cpu_fused_gru(gi, gh, h):
    _checked(gi, gh, h, 3)
    i_r, i_z, i_n = gi.chunk(3, 1)
    h_r, h_z, h_n = gh.chunk(3, 1)
    r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return n + z * (h - n), gi.new_empty(0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cuda_kernels_compute_what_the_cpu_ones_do(
    cell: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CUDA's choice (plain attention, fused cells fed precomputed gates) gives the CPU's
    loss and gradients; torch's fused kernels are stood in for by their equations."""
    from seq2seq_core.kernels import Kernels, cells

    monkeypatch.setattr(cells, "fused_lstm_cell", _cpu_fused_lstm)
    monkeypatch.setattr(cells, "fused_gru_cell", _cpu_fused_gru)
    cfg = dataclasses.replace(_cfg(cell, True), dropout=0.0)
    src, src_len, tgt_in, tgt_out = _batch()
    results = []
    for kernels in (None, Kernels(packed_rnn=False, chunked_scores=False, fused_cells=True)):
        torch.manual_seed(0)
        model = build_model(cfg, V, V).double().train()
        if kernels is not None:
            monkeypatch.setattr(model, "select_kernels", lambda k=kernels: k)
        loss = model(src, src_len, tgt_in, tgt_out)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (cpu_loss, cpu_grads), (cuda_loss, cuda_grads) = results
    torch.testing.assert_close(cuda_loss, cpu_loss)
    for a, b in zip(cuda_grads, cpu_grads, strict=True):
        torch.testing.assert_close(a, b)


# --- 2. bf16 really bf16 --------------------------------------------------------------------


@pytest.mark.parametrize(("cell", "feed"), [("lstm", True), ("gru", False), ("gru", True)])
def test_rnns_run_in_the_autocast_dtype_and_cat_mixes_none(
    cell: str, feed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CUDA's bf16 choice (``rnn_dtype``), on CPU: every RNN output and every tensor the
    decoder concatenates is bf16; nothing is promoted to fp32 by a mixed cat."""
    from seq2seq_core.kernels import Kernels

    kernels = Kernels(packed_rnn=False, chunked_scores=False, rnn_dtype=torch.bfloat16)
    torch.manual_seed(0)
    model = build_model(_cfg(cell, feed), V, V).train()
    monkeypatch.setattr(model, "select_kernels", lambda: kernels)
    rnn_dtypes: list[torch.dtype] = []
    for rnn in (model.encoder.rnn, model.decoder.rnn):
        rnn.register_forward_hook(
            lambda m, i, out: rnn_dtypes.append(
                out[0].data.dtype if hasattr(out[0], "batch_sizes") else out[0].dtype
            )
        )
    cat_dtypes: list[set[torch.dtype]] = []
    real_cat = torch.cat

    def cat(tensors, *args, **kwargs):
        cat_dtypes.append({t.dtype for t in tensors if t.is_floating_point()})
        return real_cat(tensors, *args, **kwargs)

    src, src_len, tgt_in, tgt_out = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        monkeypatch.setattr(torch, "cat", cat)
        memory, state = model.encode(src, src_len, kernels)
        vectors = model.decoder.teacher_forced(tgt_in, state, memory, kernels)
        logits, _, _ = model.decode_step(tgt_in[:, 0], state, memory, kernels)
        monkeypatch.setattr(torch, "cat", real_cat)
    assert rnn_dtypes and set(rnn_dtypes) == {torch.bfloat16}
    assert vectors.dtype == torch.bfloat16 and logits.dtype == torch.bfloat16
    assert cat_dtypes and all(len(d) <= 1 for d in cat_dtypes), cat_dtypes
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(src, src_len, tgt_in, tgt_out)
    loss.backward()  # fp32 gradients through the casts
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())
