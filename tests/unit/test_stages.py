"""Each stage function on tiny data, in the order the pipeline runs them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import sacrebleu
import torch

from seq2seq_core import stages
from seq2seq_core.config import ModelConfig, PipelineConfig, config_from_dict, load_config
from seq2seq_core.decoding.translator import Translator
from seq2seq_core.model.seq2seq import build_model
from tests.support import tiny_params


def _assert_scores_are_sacrebleus(scores: dict, hyps: list[str], refs: list[str]) -> None:
    """The reported BLEU/chrF/TER are sacrebleu's own on these lines (English targets: the
    13a tokenizer)."""
    assert len(hyps) == len(refs) == scores["sentences"]
    assert scores["bleu"] == round(sacrebleu.corpus_bleu(hyps, [refs]).score, 4)
    assert scores["chrf"] == round(sacrebleu.corpus_chrf(hyps, [refs]).score, 4)
    assert scores["ter"] == round(sacrebleu.corpus_ter(hyps, [refs]).score, 4)
    assert "tok:13a" in scores["signatures"]["bleu"]


def _written(reports: Path) -> tuple[list[str], list[str]]:
    """The primary system's hypotheses and the references the evaluate stage wrote."""
    return tuple(
        (reports / name).read_text(encoding="utf-8").splitlines()
        for name in ("test_hypotheses.txt", "test_references.txt")
    )


def test_stages_chain_on_tiny_data(tiny_params_file: Path) -> None:
    cfg = load_config(tiny_params_file)

    ingested = stages.ingest(cfg)
    assert sum(ingested.counts.values()) == 208
    train_df = pd.read_parquet(Path(ingested.prepared_dir) / "train.parquet")
    assert list(train_df.columns) == ["id", "src", "tgt"]
    assert json.loads(Path(ingested.report_path).read_text())["pairs_read"] == 208

    vocab = stages.build_vocab(cfg)
    assert 50 < vocab.src_vocab_size <= 200
    assert (Path(vocab.vocab_dir) / "tokenizer.json").exists()

    trained = stages.train(cfg)
    assert trained.epochs == 2
    assert Path(trained.best_checkpoint).exists()
    assert trained.history[-1]["train_loss"] < trained.history[0]["train_loss"] + 1e-6
    assert json.loads(Path("reports/train.json").read_text())["epochs"] == 2

    evaluated = stages.evaluate(cfg)
    test = evaluated.metrics["test"]
    assert test["sentences"] == ingested.counts["test"]
    _assert_scores_are_sacrebleus(test, *_written(Path("reports")))
    assert len(test["test_set_sha256"]) == 64
    # Greedy and beam are both scored; the primary ("test") is beam (decode.beam_size 5).
    metrics = evaluated.metrics
    assert metrics["test"] == metrics["test_beam"]
    assert metrics["test_greedy"]["decode"]["beam_size"] == 1
    assert metrics["test_beam"]["decode"] == {
        "method": "beam", "beam_size": 5, "seconds": metrics["test_beam"]["decode"]["seconds"],
        "length_penalty": 1.2,
    }  # fmt: skip
    samples = pd.read_csv(evaluated.samples_path)
    assert list(samples.columns) == ["id", "src", "ref", "greedy", "beam"]
    assert len(samples) == 5
    plots = sorted(Path(p).name for p in evaluated.plot_paths)
    assert plots == ["attention_1.png", "attention_2.png", "attention_3.png", "length_bleu.png",
                     "loss.png"]  # fmt: skip
    assert all(Path(p).stat().st_size > 3000 for p in evaluated.plot_paths)
    by_length = pd.read_csv("reports/length_bleu.csv")
    assert list(by_length.columns) == ["bucket", "sentences", "bleu"]
    assert by_length["sentences"].sum() == test["sentences"]

    translator = Translator.load(trained.best_checkpoint, vocab.vocab_dir, cfg.decode)
    sources = samples["src"].tolist()[:2]
    assert samples["beam"].fillna("").tolist()[:2] == translator.translate(sources)
    assert samples["greedy"].fillna("").tolist()[:2] == translator.translate(sources, beam_size=1)
    # Both systems' scores are sacrebleu's on what the checkpoint translates; the hypotheses
    # file holds the primary (beam) translations. Two epochs on 166 pairs: greedy already
    # scores above 0 (the beam prefers an immediate </s>), so a wrong pairing shows.
    test_df = pd.read_parquet(Path(ingested.prepared_dir) / "test.parquet")
    written, references = _written(Path("reports"))
    assert references == test_df["tgt"].tolist()
    assert written == translator.translate(test_df["src"].tolist())
    greedy = translator.translate(test_df["src"].tolist(), beam_size=1)
    _assert_scores_are_sacrebleus(metrics["test_greedy"], greedy, references)
    assert metrics["test_greedy"]["bleu"] > 0


@pytest.mark.parametrize(("source", "src_lang"), [("bible:l-4", "fr"), ("bible:c-4", "zh")])
def test_stages_run_on_other_bible_pairs(tmp_path, monkeypatch, source, src_lang) -> None:
    """Only data.source changes (plus a few seconds of training to keep the test short)."""
    monkeypatch.chdir(tmp_path)
    params = tiny_params()
    params["data"].update(source=source, valid_fraction=0.01, test_fraction=0.01)
    params["train"].update(max_epochs=1, time_budget_min=0.1, valid_bleu_sentences=10)
    # Chinese needs ~2,400 characters at the default coverage: tiny_params' 200 is too few.
    # SentencePiece on all ~62k sentences takes ~45 s; 8,000 sampled take ~3 s (unk 0.6%).
    params["vocab"].update(size=4000, max_sentences=8000)
    cfg = config_from_dict(params)

    ingested = stages.ingest(cfg)
    report = json.loads(Path(ingested.report_path).read_text(encoding="utf-8"))
    assert report["languages"] == {"src": src_lang, "tgt": "en"}
    assert sum(ingested.counts.values()) > 30_000
    vocab = stages.build_vocab(cfg)
    assert vocab.coverage["src_unk_rate"] < 0.05
    stages.train(cfg)
    test = stages.evaluate(cfg).metrics["test"]
    assert test["sentences"] == ingested.counts["test"] > 200
    _assert_scores_are_sacrebleus(test, *_written(Path(cfg.evaluate.reports_dir)))


V = 30


# A one-layer bidirectional GRU with Bahdanau attention and input feeding, 30 words.
STUB_MODEL = ModelConfig(
    cell="gru",
    attention="bahdanau",
    bidirectional=True,
    input_feeding=True,
    emb_size=8,
    hidden_size=12,
    layers=1,
    dropout=0.1,
    tie_embeddings="none",
)


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
    model = build_model(STUB_MODEL, V, V)
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
