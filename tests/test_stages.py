"""Each stage function on tiny data, in the order the pipeline runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import sacrebleu

from seq2seq_core import stages
from seq2seq_core.config import config_from_dict, load_config
from seq2seq_core.decoding.translator import Translator
from tests.conftest import tiny_params


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
        "length_penalty": 1.0,
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


def test_cli_reports_bad_input_without_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "nope.tsv"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "ingest",
            "--set",
            f"data.source={missing}",
            "--set",
            f"data.prepared_dir={tmp_path / 'prepared'}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert "nope.tsv" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_rejects_unknown_parameter(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "ingest", "--set", "train.epochs=3"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "train: unknown key(s) epochs" in proc.stderr


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
