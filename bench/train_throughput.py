"""Training throughput on synthetic Bible-like data: one JSON line per configuration.

Each line: target tokens/s of real training steps (forward, backward, clip, Adam) through
`seq2seq_core.training.step.train_step`, the very step the training loop takes; peak RSS,
parameter count, and model FLOP/s (the matmuls of one forward+backward, counted on real
tokens) as a fraction of an fp32 `torch.mm` peak measured in the same process, and the
time to greedy-decode 300 sentences (a random model rarely emits EOS, so this is the worst
case: every sentence runs to its length limit).
Each configuration runs in its own subprocess so that peak RSS is its own.
Only ratios from one run are comparable: the machines vary from day to day.

    .venv/bin/python bench/train_throughput.py --seconds 30 --threads 1
    .venv/bin/python bench/train_throughput.py --configs default small --threads 2
    .venv/bin/python bench/train_throughput.py --real --joey 90 --configs default joey_if joey_noif
    .venv/bin/python bench/train_throughput.py --onmt 90 --configs default joey_if  (OpenNMT-py)
    .venv/bin/python bench/train_throughput.py --bleu-budget-min 15 --threads 2  (bleu_budget.py)

bf16 configurations run only where the CPU has native bf16 (avx512_bf16 or AMX); elsewhere
autocast emulates it and the line would measure the emulation, so it is reported as skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_has_bf16, matmul_peak_gflops
from onmt_common import train_rows

from seq2seq_core.config import ModelConfig, PipelineConfig, TrainConfig
from seq2seq_core.data.batches import Batch, EncodedPairs, epoch_batches
from seq2seq_core.decoding.greedy import greedy_decode
from seq2seq_core.model.seq2seq import build_model
from seq2seq_core.runtime.threads import prepare_host
from seq2seq_core.training.optim import build_optimizer
from seq2seq_core.training.step import train_step

VOCAB = 8000
REPO = Path(__file__).resolve().parents[1]

CONFIGS: dict[str, tuple[dict, dict]] = {
    # name: (model overrides, train overrides)
    "default": ({}, {}),
    "default_bf16": ({}, {"precision": "bf16"}),
    "small": ({"hidden_size": 256, "emb_size": 256}, {}),
    "small_luong": ({"hidden_size": 256, "emb_size": 256, "attention": "luong"}, {}),
    "small_luong_bf16": (
        {"hidden_size": 256, "emb_size": 256, "attention": "luong"},
        {"precision": "bf16"},
    ),
    "small_lstm_luong": (
        {"cell": "lstm", "hidden_size": 256, "emb_size": 256, "attention": "luong"},
        {},
    ),
    "mid": ({"hidden_size": 384, "emb_size": 256, "tie_embeddings": "none"}, {}),
    # issue 5's comparison with Joey NMT: BiLSTM 2x256, LSTM 512, Bahdanau, input feeding
    "joey_if": (
        {
            "cell": "lstm",
            "hidden_size": 512,
            "attention": "bahdanau",
            "input_feeding": True,
            "tie_embeddings": "none",
        },
        {"batch_tokens": 2000},
    ),
    "joey_noif": (
        {"cell": "lstm", "hidden_size": 512, "attention": "bahdanau", "tie_embeddings": "none"},
        {"batch_tokens": 2000},
    ),
    "seed": (
        {"cell": "lstm", "attention": "none", "bidirectional": False, "tie_embeddings": "none"},
        {"teacher_forcing": 0.5},
    ),
}


def synthetic_pairs(n: int, seed: int = 0) -> EncodedPairs:
    """Lengths like SentencePiece-8k Bible verses: ~35 target tokens, source ~10% longer."""
    g = torch.Generator().manual_seed(seed)
    tgt_len = (torch.randn(n, generator=g) * 14 + 35).clamp(3, 120).long()
    ratio = torch.empty(n).uniform_(0.85, 1.35, generator=g)
    src_len = (tgt_len * ratio).long().clamp(2, 128)
    src = [torch.randint(4, VOCAB, (int(s),), generator=g).tolist() for s in src_len]
    tgt = [torch.randint(4, VOCAB, (int(t),), generator=g).tolist() for t in tgt_len]
    return EncodedPairs(src, tgt, skipped_long=0, skipped_empty=0)


def real_pairs(n: int) -> EncodedPairs:
    """The first n train pairs of data/prepared, encoded with data/vocab (run ingest and
    vocab first): the data Joey trains on in the side-by-side comparison."""
    import pandas as pd

    from seq2seq_core.data.batches import encode_pairs
    from seq2seq_core.data.tokenization import SubwordTokenizer

    tok = SubwordTokenizer.load(REPO / "data" / "vocab")
    df = pd.read_parquet(REPO / "data" / "prepared" / "train.parquet").head(n)
    return encode_pairs(tok, list(zip(df["src"], df["tgt"], strict=True)), 128)


def joey_side_by_side(seconds: float, threads: int) -> list[dict]:
    """Joey NMT 2.3 on the same data and architecture, `seconds` of wall time per config
    (its start-up excluded: tokens/s is the mean of its own log windows after the first
    two)."""
    sys.path.insert(0, str(REPO / "bench"))
    from joey_common import JOEY_PYTHON, export_data, joey_config, parse_tokens_per_s, write_config

    if not JOEY_PYTHON.exists():
        return [{"system": "joeynmt-2.3.0", "skipped": f"{JOEY_PYTHON} missing"}]
    work = REPO / "bench" / ".cache" / "joey-train"
    data = export_data(REPO / "data" / "prepared", REPO / "data" / "vocab", work / "data")
    rows = []
    for name, feeding in (("joey_if", True), ("joey_noif", False)):
        model_dir = work / f"model-{name}"
        cfg_path = write_config(
            joey_config(data, model_dir, input_feeding=feeding), work / f"{name}.yaml"
        )
        proc = subprocess.run(
            [str(JOEY_PYTHON), str(REPO / "bench" / "joey_train.py"), str(cfg_path),
             str(seconds), str(threads)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        log = proc.stdout + proc.stderr
        rows.append({
            "system": "joeynmt-2.3.0", "config": name, "threads": threads,
            "tgt_tokens_per_s": parse_tokens_per_s(log), "wall_s": seconds,
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def batch_macs(m: ModelConfig, batch: Batch) -> int:
    """Forward multiply-accumulates of the matmuls, on real (unpadded) tokens."""
    h, e = m.hidden_size, m.emb_size
    gates = 4 if m.cell == "lstm" else 3
    src_len = batch.src_len.tolist()
    tgt_len = (batch.tgt_out != 0).sum(1).tolist()
    src_tok, tgt_tok = sum(src_len), sum(tgt_len)
    he = h // 2 if m.bidirectional else h
    dirs = 2 if m.bidirectional else 1
    enc = sum(dirs * gates * he * ((e if i == 0 else h) + he) for i in range(m.layers))
    dec_in = e + (h if m.input_feeding else 0)
    dec = sum(gates * h * ((dec_in if i == 0 else h) + h) for i in range(m.layers))
    macs = src_tok * enc + tgt_tok * (dec + h * VOCAB)
    if m.attention != "none":
        pairs = sum(s * t for s, t in zip(src_len, tgt_len, strict=True))  # (t, s) scores
        macs += src_tok * h * h + tgt_tok * 2 * h * h  # key projection, attentional vector
        if m.attention == "bahdanau":
            macs += tgt_tok * h * h + pairs * (h + h)  # query projection, energy + context
        else:
            macs += pairs * (h + h)  # scores + context
    return macs


def run_config(name: str, seconds: float, pairs: EncodedPairs, peak: float) -> dict:
    model_over, train_over = CONFIGS[name]
    cfg = PipelineConfig(
        model=dataclasses.replace(ModelConfig(), **model_over),
        train=dataclasses.replace(TrainConfig(), **train_over),
    )
    torch.manual_seed(0)
    model = build_model(cfg.model, VOCAB, VOCAB)
    model.train()
    optimizer = build_optimizer(list(model.parameters()), cfg.train)  # the pipeline's own
    batches = epoch_batches(pairs, cfg.train.batch_tokens, seed=0, epoch=1)
    device = torch.device("cpu")
    # One batch per step (accumulate_steps is 1 in every configuration): the loop's step.
    kw = {"teacher_forcing": cfg.train.teacher_forcing, "lr": cfg.train.lr, "tc": cfg.train}
    for batch in batches[:2]:  # warm-up: allocator, oneDNN primitives
        train_step(model, optimizer, [batch.to(device)], **kw)
    tokens = macs = steps = 0
    t0 = time.perf_counter()
    for batch in batches[2:]:
        train_step(model, optimizer, [batch.to(device)], **kw)
        tokens += batch.ntokens
        macs += batch_macs(cfg.model, batch)
        steps += 1
        if time.perf_counter() - t0 >= seconds:
            break
    elapsed = time.perf_counter() - t0
    flops = 3 * 2 * macs / elapsed  # backward ~ 2x forward
    # Validation-style greedy decoding of 300 sentences.
    src = pairs.src[:300]
    t1 = time.perf_counter()
    greedy_decode(model, src, batch_size=64, max_len_ratio=1.5, max_len_extra=10, device="cpu")
    decode_s = time.perf_counter() - t1
    return {
        "config": name,
        "model": dataclasses.asdict(cfg.model),
        "batch_tokens": cfg.train.batch_tokens,
        "precision": cfg.train.precision,
        "teacher_forcing": cfg.train.teacher_forcing,
        "threads": torch.get_num_threads(),
        "steps": steps,
        "tgt_tokens_per_s": round(tokens / elapsed, 1),
        "params": sum(p.numel() for p in model.parameters()),
        "mflop_per_tgt_token": round(6 * macs / max(tokens, 1) / 1e6, 2),
        "model_gflop_s": round(flops / 1e9, 2),
        "mm_peak_gflop_s": round(peak, 1),
        "peak_fraction": round(flops / 1e9 / peak, 3),
        "greedy_300_s": round(decode_s, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--seconds", type=float, default=30.0, help="timed training per config")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=4000)
    parser.add_argument("--real", action="store_true", help="data/prepared + data/vocab")
    parser.add_argument(
        "--joey", type=float, default=0, metavar="SECONDS",
        help="also train Joey NMT 2.3 this long per config (implies --real)",
    )  # fmt: skip
    parser.add_argument(
        "--onmt", type=float, default=0, metavar="SECONDS",
        help="also train OpenNMT-py 3.5.1 this long per config (implies --real)",
    )  # fmt: skip
    parser.add_argument(
        "--bleu-budget-min", type=float, default=0, metavar="MINUTES",
        help="instead: test BLEU after this much training from scratch, ours and Joey's",
    )  # fmt: skip
    parser.add_argument("--joey-valid-freq", type=int, default=50, help="with --bleu-budget-min")
    parser.add_argument(
        "--no-joey-budget", action="store_true",
        help="with --bleu-budget-min: train only ours (Joey's run takes as long again)",
    )  # fmt: skip
    parser.add_argument(
        "--override", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="with --bleu-budget-min: params.yaml overrides for our run (repeatable)",
    )  # fmt: skip
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bleu_budget_min:
        sys.path.insert(0, str(REPO / "bench"))
        from bleu_budget import run

        run(args.bleu_budget_min, args.threads, joey_valid_freq=args.joey_valid_freq,
            overrides=args.override, with_joey=not args.no_joey_budget)  # fmt: skip
        return
    if not args.child:  # one subprocess per configuration: its own peak RSS
        ours = {}
        for name in args.configs:
            if CONFIGS[name][1].get("precision") == "bf16" and not cpu_has_bf16():
                print(json.dumps({"config": name, "skipped": "no native bf16 on this CPU"}))
                continue
            base = ["--seconds", str(args.seconds), "--threads", str(args.threads)]
            cmd = [sys.executable, __file__, "--child", "--configs", name, *base]
            if args.real or args.joey or args.onmt:
                cmd.append("--real")
            out = subprocess.run(
                [*cmd, "--pairs", str(args.pairs)], check=True, capture_output=True, text=True
            ).stdout
            print(out, end="", flush=True)
            ours[name] = json.loads(out.strip().splitlines()[-1])
        if args.joey:
            for row in joey_side_by_side(args.joey, args.threads):
                mine = ours.get(row.get("config", ""))
                if mine and row.get("tgt_tokens_per_s"):
                    ratio = mine["tgt_tokens_per_s"] / row["tgt_tokens_per_s"]
                    print(json.dumps({"ours_vs_joey": row["config"], "ratio": round(ratio, 2)}))
        if args.onmt:
            train_rows(args.configs, CONFIGS, args.onmt, args.threads, ours)  # onmt_common.py
        return
    prepare_host(torch.device("cpu"), args.threads)  # as train_model does
    pairs = real_pairs(args.pairs) if args.real else synthetic_pairs(args.pairs)
    peak = matmul_peak_gflops()
    for name in args.configs:
        print(json.dumps(run_config(name, args.seconds, pairs, peak)), flush=True)


if __name__ == "__main__":
    main()
