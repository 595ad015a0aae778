"""Each stage function on tiny data, in the order the pipeline runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from seq2seq_core import stages
from seq2seq_core.config import load_config
from seq2seq_core.translator import Translator


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
    assert 0.0 <= test["bleu"] <= 100.0
    assert len(test["test_set_sha256"]) == 64
    samples = pd.read_csv(evaluated.samples_path)
    assert list(samples.columns) == ["id", "src", "ref", "hyp"]
    assert len(samples) == 5
    assert all(Path(p).exists() for p in evaluated.plot_paths)

    translator = Translator.load(trained.best_checkpoint, vocab.vocab_dir, cfg.decode)
    assert samples["hyp"].fillna("").tolist()[:2] == translator.translate(
        samples["src"].tolist()[:2]
    )


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
