"""Training throughput on synthetic Bible-like data: one JSON line per configuration.

Each line: target tokens/s of real training steps (forward, backward, clip, Adam) through
the same `train_step` the pipeline uses, peak RSS, parameter count, and model FLOP/s (the
matmuls of one forward+backward, counted on real tokens) as a fraction of an fp32 `torch.mm`
peak measured in the same process, and the time to greedy-decode 300 sentences (a random
model rarely emits EOS, so this is the worst case: every sentence runs to its length limit).
Each configuration runs in its own subprocess so that peak RSS is its own.
Only ratios from one run are comparable: the machines vary from day to day.

    .venv/bin/python bench/train_throughput.py --seconds 30 --threads 1
    .venv/bin/python bench/train_throughput.py --configs default small --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time

import torch

from seq2seq_core.batching import Batch, EncodedPairs, epoch_batches
from seq2seq_core.config import ModelConfig, PipelineConfig, TrainConfig
from seq2seq_core.decoding import greedy_decode
from seq2seq_core.seq2seq import build_model
from seq2seq_core.training import train_step

VOCAB = 8000

CONFIGS: dict[str, tuple[dict, dict]] = {
    # name: (model overrides, train overrides); "precision" is not a TrainConfig key (yet)
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
    "mid": ({"hidden_size": 384, "emb_size": 256}, {}),
    # issue 5's comparison with Joey NMT: BiLSTM 2x256, LSTM 512, Bahdanau, input feeding
    "joey_if": (
        {"cell": "lstm", "hidden_size": 512, "input_feeding": True},
        {"batch_tokens": 2000},
    ),
    "joey_noif": ({"cell": "lstm", "hidden_size": 512}, {"batch_tokens": 2000}),
    "seed": (
        {"cell": "lstm", "attention": "none", "bidirectional": False},
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


def matmul_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9


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
    train_over = dict(train_over)
    precision = train_over.pop("precision", "fp32")
    cfg = PipelineConfig(
        model=dataclasses.replace(ModelConfig(), **model_over),
        train=dataclasses.replace(TrainConfig(), **train_over),
    )
    torch.manual_seed(0)
    model = build_model(cfg.model, VOCAB, VOCAB)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    batches = epoch_batches(pairs, cfg.train.batch_tokens, seed=0, epoch=1)
    device = torch.device("cpu")
    kw = {
        "teacher_forcing": cfg.train.teacher_forcing,
        "clip_grad": cfg.train.clip_grad,
        "precision": precision,
    }
    for batch in batches[:2]:  # warm-up: allocator, oneDNN primitives
        train_step(model, optimizer, batch.to(device), **kw)
    tokens = macs = steps = 0
    t0 = time.perf_counter()
    for batch in batches[2:]:
        train_step(model, optimizer, batch, **kw)
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
        "precision": precision,
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
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.child:  # one subprocess per configuration: its own peak RSS
        for name in args.configs:
            base = ["--seconds", str(args.seconds), "--threads", str(args.threads)]
            cmd = [sys.executable, __file__, "--child", "--configs", name, *base]
            subprocess.run([*cmd, "--pairs", str(args.pairs)], check=True)
        return
    torch.set_num_threads(args.threads)
    pairs = synthetic_pairs(args.pairs)
    peak = matmul_peak_gflops()
    for name in args.configs:
        print(json.dumps(run_config(name, args.seconds, pairs, peak)), flush=True)


if __name__ == "__main__":
    main()
