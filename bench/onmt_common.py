"""OpenNMT-py 3.5.1 set-up shared by the benchmarks (issue 26): export our prepared splits
as SentencePiece pieces (our own spm.model, so all three systems see the same tokens) and
write OpenNMT-py's YAML for our architecture, Joey's, or OpenNMT-py's own RNN recipe.

OpenNMT-py runs in its own venv (bench/.cache/onmt-venv, `make onmt-venv`) through
bench/onmt_train.py and bench/onmt_decode.py; this module runs in the project's venv: pure
functions that tests check without that venv, and the hooks bench/train_throughput.py and
bench/decode_speed.py call (each skipped, with its reason, when the venv is missing).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ONMT_PYTHON = REPO / "bench" / ".cache" / "onmt-venv" / "bin" / "python"
ONMT_SYSTEM = "opennmt-py-3.5.1"
# SentencePiece's own specials; OpenNMT-py adds its <unk> <blank> <s> </s> itself.
SPM_SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")

# OpenNMT-py's own RNN recipe: its defaults (onmt/opts.py 3.5.1), what `onmt_train` trains
# when a config names only data: a 2-layer unidirectional LSTM of 500 units, input feeding,
# general attention, SGD at 1.0 (halving from step 50,000), batches of 64 sentences,
# dropout 0.3, gradient norm 5, uniform init 0.1. Only data, vocabulary, run length and
# threads are ours.
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
    from joey_common import plain_lines, write_splits  # our venv only (pandas)

    sp = spm.SentencePieceProcessor(model_file=str(vocab_dir / "spm.model"))
    write_splits(
        prepared, out, max_train, lambda texts: pieces_lines(sp.encode(texts, out_type=str))
    )
    refs = pd.read_parquet(prepared / "test.parquet")["tgt"].tolist()
    (out / "test.ref.en").write_text(plain_lines(refs), encoding="utf-8")
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
        # every budget saves once (save_checkpoint_steps is the whole run): keep them all
        "save_model": str(save_dir / "model"), "keep_checkpoint": -1,
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


def run_training(
    cfg: dict[str, Any], path: Path, budgets_s: list[float], threads: int
) -> list[dict[str, Any]]:
    """bench/onmt_train.py on config `cfg` (written to `path`), saving a checkpoint when each
    of `budgets_s` (seconds of wall time) runs out and stopping at the last: one result per
    budget (steps, target tokens/s after two warm-up steps, checkpoint) with the mean of
    OpenNMT-py's own logged tokens/s, or one holding the log's tail when there is none."""
    import subprocess

    write_config(cfg, path)
    proc = subprocess.run(
        [str(ONMT_PYTHON), str(REPO / "bench" / "onmt_train.py"), "train", str(path),
         ",".join(str(s) for s in budgets_s), str(threads)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    results = result_lines(proc.stdout) or [{"error": log[-800:]}]
    return [{**r, "logged_tgt_tokens_per_s": parse_tokens_per_s(log)} for r in results]


def train_rows(
    names: list[str], configs: dict[str, tuple[dict, dict]], seconds: float, threads: int,
    ours: dict[str, dict],
) -> list[dict[str, Any]]:  # fmt: skip
    """bench/train_throughput.py's hook: OpenNMT-py trains each of our configurations
    (`configs[name]`: ModelConfig and TrainConfig overrides) on the default split for
    `seconds`; prints one line per configuration and its ratio to ours (`ours[name]`)."""
    import dataclasses

    from seq2seq_core.config import ModelConfig, TrainConfig

    if not ONMT_PYTHON.exists():
        rows = [{"system": ONMT_SYSTEM, "skipped": f"{ONMT_PYTHON} missing: make onmt-venv"}]
        print(json.dumps(rows[0]))
        return rows
    work = REPO / "bench" / ".cache" / "onmt-train"
    data = export_data(REPO / "data" / "prepared", REPO / "data" / "vocab", work / "data")
    rows = []
    for name in names:
        model = dataclasses.replace(ModelConfig(), **configs[name][0])
        train = dataclasses.replace(TrainConfig(), **configs[name][1])
        row: dict[str, Any] = {"system": ONMT_SYSTEM, "config": name, "threads": threads}
        try:
            if train.precision != "fp32" or train.teacher_forcing != 1.0:
                raise UnsupportedArchitecture("OpenNMT-py's CPU runs: fp32, teacher forcing only")
            options = model_options(**dataclasses.asdict(model))
        except UnsupportedArchitecture as err:
            rows.append({**row, "skipped": str(err)})
            print(json.dumps(rows[-1]), flush=True)
            continue
        optim = our_train_options(train.lr, train.batch_tokens, train.label_smoothing,
                                  train.clip_grad)  # fmt: skip
        cfg = onmt_config(data, work / f"model-{name}", options, train=optim, seed=train.seed)
        row.update(run_training(cfg, work / f"{name}.yaml", [seconds], threads)[-1])
        mine = ours.get(name, {}).get("tgt_tokens_per_s")
        if mine and row.get("tgt_tokens_per_s"):
            row["ours_vs_onmt"] = round(mine / row["tgt_tokens_per_s"], 2)
        rows.append(row)
        print(json.dumps(rows[-1]), flush=True)
    return rows


def onmt_ids(ours: list[int]) -> list[int]:
    """Our special ids (pad 0, unk 1, <s> 2, </s> 3) in OpenNMT-py's order (unk 0, pad 1,
    <s> 2, </s> 3); every other id is the same piece in both vocabularies."""
    swap = {0: 1, 1: 0}
    return [swap.get(i, i) for i in ours]


def batch1_subset(sources: list[list[int]], sentences: int) -> list[list[int]]:
    """Batch size 1 is slow for every system: every k-th sentence, `sentences` of them,
    the same subset as bench/decode_speed.py's own run and Joey's."""
    if len(sources) <= sentences:
        return sources
    return sources[:: len(sources) // sentences][:sentences]


def decode_rows(
    archs: dict[str, Any], src_ids: list[list[int]], vocab: int, settings: list[dict],
    threads: int, max_len_ratio: float, batch1_sentences: int,
) -> list[dict[str, Any]]:  # fmt: skip
    """bench/decode_speed.py's hook: OpenNMT-py decodes `src_ids` (our ids) with a random
    model of each of `archs` (name: our ModelConfig) per setting, in its venv; no bridge
    (ours has none; it runs once per sentence). Prints and returns one dict per (arch,
    setting), or one saying why there are none."""
    import subprocess
    import tempfile

    if not ONMT_PYTHON.exists():
        rows = [{"system": ONMT_SYSTEM, "skipped": f"{ONMT_PYTHON} missing: make onmt-venv"}]
        print(json.dumps(rows[0]))
        return rows
    job = {
        "archs": {name: model_options(**asdict(cfg)) for name, cfg in archs.items()},
        "vocab_size": vocab, "sources": src_ids, "settings": settings,
        "threads": threads, "max_len_ratio": max_len_ratio, "batch1_sentences": batch1_sentences,
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        job_path = Path(tmp) / "job.json"
        job_path.write_text(json.dumps(job), encoding="utf-8")
        proc = subprocess.run(
            [str(ONMT_PYTHON), str(REPO / "bench" / "onmt_decode.py"), str(job_path)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0:
        rows.append({"system": ONMT_SYSTEM, "error": proc.stderr[-800:]})
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


def speed_ratios(ours: list[dict[str, Any]], peer: list[dict[str, Any]]) -> dict[str, float]:
    """tgt tokens/s of ours over the peer's, per `{arch}_beam{b}_batch{n}_{precision}` for
    every row of ours with a peer row of the same arch and setting (the peer is fp32)."""

    def key(row: dict[str, Any]) -> tuple:
        return (row["system"].split(":")[-1], row["beam"], row["batch_size"])

    def name(row: dict[str, Any]) -> str:
        step = f"_{row['step']}" if "step" in row else ""  # ours: the eager or compiled step
        return "{}_beam{}_batch{}_{}".format(*key(row), row.get("precision", "fp32")) + step

    theirs = {key(r): r for r in peer if r.get("tgt_tokens_per_s")}
    ratios = {}
    for row in ours:
        match = theirs.get(key(row))
        if match:
            ratios[name(row)] = round(row["tgt_tokens_per_s"] / match["tgt_tokens_per_s"], 2)
    return ratios


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


def result_lines(output: str) -> list[dict[str, Any]]:
    """The JSON lines bench/onmt_train.py prints, one per budget (steps, tokens/s,
    checkpoint)."""
    return [json.loads(line) for line in output.splitlines() if line.startswith('{"onmt_train"')]


if __name__ == "__main__":
    print(json.dumps({"onmt_python": str(ONMT_PYTHON), "exists": ONMT_PYTHON.exists()}))
