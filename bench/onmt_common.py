"""OpenNMT-py 3.5.1 set-up shared by the benchmarks (issue 26): export our prepared splits
as SentencePiece pieces (our own spm.model, so all three systems see the same tokens) and
write OpenNMT-py's YAML for our architecture, Joey's, or OpenNMT-py's own RNN recipe.

OpenNMT-py runs in its own venv (bench/.cache/onmt-venv, `make onmt-venv`) through
bench/onmt_train.py and bench/onmt_decode.py; this module runs in the project's venv and
holds only pure functions and file writing, so tests need neither venv nor torch import.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ONMT_PYTHON = REPO / "bench" / ".cache" / "onmt-venv" / "bin" / "python"
ONMT_SYSTEM = "opennmt-py-3.5.1"
# SentencePiece's own specials; OpenNMT-py adds its <unk> <blank> <s> </s> itself.
SPM_SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")

# OpenNMT-py's RNN defaults (onmt/opts.py 3.5.1, the model its quickstart trains): a
# 2-layer unidirectional LSTM of 500 units, input feeding, general attention, SGD at 1.0,
# batches of 64 sentences, dropout 0.3, gradient norm 5. Only data, vocabulary, schedule
# lengths and threads are ours.
ONMT_RECIPE: dict[str, Any] = {
    "encoder_type": "rnn", "decoder_type": "rnn", "rnn_type": "LSTM",
    "enc_layers": 2, "dec_layers": 2, "enc_hid_size": 500, "dec_hid_size": 500,
    "word_vec_size": 500, "global_attention": "general", "input_feed": 1, "bridge": False,
    "dropout": [0.3], "optim": "sgd", "learning_rate": 1.0, "max_grad_norm": 5.0,
    "batch_type": "sents", "batch_size": 64, "label_smoothing": 0.0,
}  # fmt: skip


class UnsupportedArchitecture(ValueError):
    """Our model option has no OpenNMT-py equivalent (named in the message)."""


def export_data(prepared: Path, vocab_dir: Path, out: Path, max_train: int | None = None) -> Path:
    """train/dev/test.{de,en} as space-separated SentencePiece pieces, the raw test
    references (test.ref.en) for sacrebleu, and vocab.txt (one piece a line, ours minus
    SentencePiece's specials) for both sides."""
    import pandas as pd
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(vocab_dir / "spm.model"))
    out.mkdir(parents=True, exist_ok=True)
    for split, name in (("train", "train"), ("valid", "dev"), ("test", "test")):
        df = pd.read_parquet(prepared / f"{split}.parquet")
        if split == "train" and max_train:
            df = df.head(max_train)
        for column, lang in (("src", "de"), ("tgt", "en")):
            lines = pieces_lines(sp.encode(df[column].tolist(), out_type=str))
            (out / f"{name}.{lang}").write_text(lines, encoding="utf-8")
    (out / "test.ref.en").write_text("\n".join(df["tgt"]) + "\n", encoding="utf-8")
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    (out / "vocab.txt").write_text(vocab_lines(pieces), encoding="utf-8")
    (out / "spm.model").write_bytes((vocab_dir / "spm.model").read_bytes())
    return out


def pieces_lines(sentences: list[list[str]]) -> str:
    """One sentence a line, pieces joined by spaces (SentencePiece pieces never hold a
    space: it is '▁'); an empty sentence stays an empty line so the sides stay aligned."""
    return "".join(" ".join(pieces) + "\n" for pieces in sentences)


def vocab_lines(pieces: list[str]) -> str:
    """OpenNMT-py's vocabulary file (a token a line, no counts), without SentencePiece's
    specials: OpenNMT-py puts its own <unk> <blank> <s> </s> first."""
    return "".join(p + "\n" for p in pieces if p not in SPM_SPECIALS)


def model_options(
    *, cell: str, attention: str, context: str, emb_size: int, hidden_size: int, layers: int,
    bidirectional: bool, dropout: float, input_feeding: bool, luong_score: str,
    tie_embeddings: str, bridge: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Our ModelConfig's fields as OpenNMT-py options. `bridge` is Joey's init_hidden:
    bridge (a learned layer from the encoder's final state); ours (`context: last`) hands
    the concatenated final states straight to the decoder, as OpenNMT-py does without it.
    Bidirectional: OpenNMT-py's brnn also halves enc_hid_size per direction, as ours."""
    if context != "last":
        raise UnsupportedArchitecture(f"model.context={context!r}: OpenNMT-py has only 'last'")
    if attention == "none":
        raise UnsupportedArchitecture("model.attention='none': OpenNMT-py's RNN decoder attends")
    scores = {"bahdanau": "mlp", "luong": luong_score}
    return {
        "encoder_type": "brnn" if bidirectional else "rnn", "decoder_type": "rnn",
        "rnn_type": cell.upper(), "enc_layers": layers, "dec_layers": layers,
        "enc_hid_size": hidden_size, "dec_hid_size": hidden_size, "word_vec_size": emb_size,
        "global_attention": scores[attention], "input_feed": int(input_feeding),
        "bridge": bridge, "dropout": [dropout],
        "share_decoder_embeddings": tie_embeddings in ("decoder", "all"),
        "share_embeddings": tie_embeddings == "all",
    }  # fmt: skip


def onmt_config(
    data: Path, save_dir: Path, model: dict[str, Any], *, train: dict[str, Any],
    train_steps: int = 1_000_000, valid_steps: int = 1_000_000, max_len: int = 128,
    seed: int = 1234,
) -> dict[str, Any]:  # fmt: skip
    """OpenNMT-py's training YAML as a dict. `model` is `model_options(...)` or ONMT_RECIPE;
    `train` the optimiser and batching (ours: Adam, token batches, label smoothing).
    Sentences over `max_len` pieces are filtered, as our pipeline's train.max_len does."""
    share_vocab = bool(model.get("share_embeddings"))
    return {
        "save_data": str(save_dir / "data"), "overwrite": True,
        "src_vocab": str(data / "vocab.txt"), "tgt_vocab": str(data / "vocab.txt"),
        "share_vocab": share_vocab, "src_vocab_size": 100_000, "tgt_vocab_size": 100_000,
        "data": {
            "corpus_1": {"path_src": str(data / "train.de"), "path_tgt": str(data / "train.en"),
                         "transforms": ["filtertoolong"]},
            "valid": {"path_src": str(data / "dev.de"), "path_tgt": str(data / "dev.en"),
                      "transforms": ["filtertoolong"]},
        },
        "src_seq_length": max_len, "tgt_seq_length": max_len,
        "save_model": str(save_dir / "model"), "keep_checkpoint": 1,
        "save_checkpoint_steps": train_steps, "train_steps": train_steps,
        "valid_steps": valid_steps, "report_every": 20, "seed": seed,
        "world_size": 1, "gpu_ranks": [], "num_workers": 0, "bucket_size": 32768,
        "model_dtype": "fp32", "param_init": 0.1,
        **model, **train,
    }  # fmt: skip


def our_train_options(lr: float, batch_tokens: int, label_smoothing: float,
                      clip_grad: float) -> dict[str, Any]:  # fmt: skip
    """Our optimiser (Adam; our AdamW at weight decay 0 is Adam) and token batches."""
    return {
        "optim": "adam", "learning_rate": lr, "adam_beta2": 0.999, "batch_type": "tokens",
        "batch_size": batch_tokens, "label_smoothing": label_smoothing,
        "max_grad_norm": clip_grad,
    }  # fmt: skip


def write_config(cfg: dict[str, Any], path: Path) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


_REPORT = re.compile(r"Step\s+(\d+)(?:/\s*\d+)?;.*?(\d+)/\s*(\d+) tok/s")


def parse_tokens_per_s(log: str, skip: int = 2) -> float | None:
    """Mean target tokens/s of OpenNMT-py's 'Step N; ... SRC/TGT tok/s' report lines,
    leaving out the first `skip` windows (start-up, the first bucket's reading)."""
    values = [float(m.group(3)) for m in _REPORT.finditer(log)]
    values = values[skip:] or values
    return round(sum(values) / len(values), 1) if values else None


def last_step(log: str) -> int | None:
    """The last training step OpenNMT-py reported."""
    steps = [int(m.group(1)) for m in _REPORT.finditer(log)]
    return steps[-1] if steps else None


def result_line(output: str) -> dict[str, Any] | None:
    """The JSON line bench/onmt_train.py prints last (steps, tokens/s, checkpoint)."""
    lines = [line for line in output.splitlines() if line.startswith('{"onmt_train"')]
    return json.loads(lines[-1]) if lines else None


if __name__ == "__main__":
    print(json.dumps({"onmt_python": str(ONMT_PYTHON), "exists": ONMT_PYTHON.exists()}))
