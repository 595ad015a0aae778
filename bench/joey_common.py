"""Joey NMT 2.3 set-up shared by the benchmarks: export our prepared splits and
SentencePiece model in Joey's layout and write its config for issue 5's architecture
(BiLSTM 256 per direction, LSTM decoder 512, Bahdanau attention, emb 256, ~2000-token
batches). Joey itself runs in its own venv (bench/.cache/joey-venv) via bench/joey_train.py.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
JOEY_PYTHON = REPO / "bench" / ".cache" / "joey-venv" / "bin" / "python"


def plain_lines(sentences: list[str]) -> str:
    return "\n".join(sentences) + "\n"


def write_splits(
    prepared: Path, out: Path, max_train: int | None = None,
    as_text: Callable[[list[str]], str] = plain_lines,
) -> None:  # fmt: skip
    """Our prepared splits as {train,dev,test}.{de,en}, one sentence a line, the layout
    both peers (Joey NMT, OpenNMT-py) read; `as_text` writes a side's sentences (OpenNMT-py
    gets them as SentencePiece pieces)."""
    out.mkdir(parents=True, exist_ok=True)
    for split, name in (("train", "train"), ("valid", "dev"), ("test", "test")):
        df = pd.read_parquet(prepared / f"{split}.parquet")
        if split == "train" and max_train:
            df = df.head(max_train)
        for column, lang in (("src", "de"), ("tgt", "en")):
            (out / f"{name}.{lang}").write_text(as_text(df[column].tolist()), encoding="utf-8")


def export_data(prepared: Path, vocab_dir: Path, out: Path, max_train: int | None = None) -> Path:
    """train/dev/test.{de,en} plain text, the SPM model and a vocab file Joey reads."""
    write_splits(prepared, out, max_train)
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(vocab_dir / "spm.model"))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    specials = {"<pad>", "<unk>", "<s>", "</s>"}
    (out / "vocab.txt").write_text(
        "\n".join(p for p in pieces if p not in specials) + "\n", encoding="utf-8"
    )
    (out / "spm.model").write_bytes((vocab_dir / "spm.model").read_bytes())
    return out


def joey_config(data: Path, model_dir: Path, *, input_feeding: bool, batch_tokens: int = 2000,
                lr: float = 0.002, validation_freq: int = 10**9) -> dict:  # fmt: skip
    """Joey's YAML as a dict; `validation_freq` (steps) is when Joey writes best.ckpt: the
    throughput runs never validate, the BLEU-budget run does (Joey wants its logging
    frequency to divide it)."""
    side = {
        "level": "bpe", "lowercase": False, "max_length": 128,
        "voc_file": str(data / "vocab.txt"), "tokenizer_type": "sentencepiece",
        "tokenizer_cfg": {"model_file": str(data / "spm.model")},
    }  # fmt: skip
    return {
        "name": "joey-bench",
        "data": {
            "train": str(data / "train"), "dev": str(data / "dev"), "test": str(data / "test"),
            "dataset_type": "plain", "sample_dev_subset": 300,
            "src": {"lang": "de", **side}, "trg": {"lang": "en", **side},
        },
        "training": {
            "random_seed": 42, "optimizer": "adam", "learning_rate": lr,
            "learning_rate_min": 1.0e-6, "scheduling": "plateau", "patience": 5,
            "batch_size": batch_tokens, "batch_type": "token", "epochs": 1000,
            "validation_freq": validation_freq, "logging_freq": math.gcd(10, validation_freq),
            "eval_metrics": ["bleu"], "early_stopping_metric": "bleu",
            "model_dir": str(model_dir), "overwrite": True, "shuffle": True,
            "use_cuda": False, "print_valid_sents": [], "keep_best_ckpts": 1,
            "clip_grad_norm": 1.0,
        },
        "testing": {"beam_size": 1, "eval_metrics": ["bleu"]},
        "model": {
            "initializer": "xavier_uniform", "embed_initializer": "normal",
            "encoder": {
                "type": "recurrent", "rnn_type": "lstm", "embeddings": {"embedding_dim": 256},
                "hidden_size": 256, "bidirectional": True, "dropout": 0.1, "num_layers": 1,
            },
            "decoder": {
                "type": "recurrent", "rnn_type": "lstm", "embeddings": {"embedding_dim": 256},
                "hidden_size": 512, "attention": "bahdanau", "input_feeding": input_feeding,
                "init_hidden": "bridge", "dropout": 0.1, "hidden_dropout": 0.1, "num_layers": 1,
            },
        },
    }  # fmt: skip


def write_config(cfg: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def parse_tokens_per_s(log: str, skip: int = 2) -> float | None:
    """Mean of Joey's 'Tokens per Sec' log values, leaving out the first `skip` windows."""
    values = []
    for line in log.splitlines():
        if "Tokens per Sec:" in line:
            values.append(float(line.split("Tokens per Sec:")[1].split(",")[0]))
    values = values[skip:] or values
    return round(sum(values) / len(values), 1) if values else None


if __name__ == "__main__":
    print(json.dumps({"joey_python": str(JOEY_PYTHON), "exists": JOEY_PYTHON.exists()}))
