"""Training throughput on synthetic Bible-like data: one JSON line per configuration.

Each line: target tokens/s of real training steps (forward, backward, clip, Adam) through
`seq2seq_core.training.step.train_step`, the very step the training loop takes; peak RSS,
parameter count, the FLOPs per target token the step needs per component (`step_flops`:
the matmuls of forward + backward, counted on real tokens) and tokens/s as a fraction of
the limit: the tokens/s at which those FLOPs would run at an fp32 `torch.mm` peak measured
in the same process; and the time to greedy-decode 300 sentences (a random model rarely
emits EOS, so this is the worst case: every sentence runs to its length limit).
Peers (`--joey`: Joey NMT 2.3) train the same architecture on the same data; each adds its
rows to `peers` in `main`, and `versus_peers` prints one line per config: both systems'
tokens/s against the limit, and the ratio.
Each configuration runs in its own subprocess so that peak RSS is its own.
Only ratios from one run are comparable: the machines vary from day to day.

    .venv/bin/python bench/train_throughput.py --seconds 30 --threads 1
    .venv/bin/python bench/train_throughput.py --configs default small --threads 2
    .venv/bin/python bench/train_throughput.py --real --joey 90 --configs default joey_if joey_noif
    .venv/bin/python bench/train_throughput.py --configs joey_if joey_if_compiled --threads 2
    .venv/bin/python bench/train_throughput.py --onmt 90 --configs default joey_if  (OpenNMT-py)
    .venv/bin/python bench/train_throughput.py --bleu-budget-min 15 --threads 2  (bleu_budget.py)

bf16 configurations run only where the CPU has native bf16 (avx512_bf16 or AMX); elsewhere
autocast emulates it and the line would measure the emulation, so it is reported as skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
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
    # joey_if with train.compile: the input-feeding step through torch.compile
    "joey_if_compiled": (
        {
            "cell": "lstm",
            "hidden_size": 512,
            "attention": "bahdanau",
            "input_feeding": True,
            "tie_embeddings": "none",
        },
        {"batch_tokens": 2000, "compile": True},
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


# What one training step needs, per component: the matmul FLOPs of the forward pass on
# real (unpadded) tokens, times 3 for forward + backward (the backward's two products per
# forward product: the input's gradient and the weight's). Elementwise work is left out: it
# is the overhead the fractions below show.
COMPONENTS = ("encoder", "decoder_cell", "attention", "attentional_vector", "output_layer")


def step_flops(m: ModelConfig, batch: Batch) -> dict[str, int]:
    """Forward + backward FLOPs of one batch per component (``COMPONENTS``)."""
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
    macs = dict.fromkeys(COMPONENTS, 0)
    macs["encoder"] = src_tok * enc
    macs["decoder_cell"] = tgt_tok * dec
    macs["output_layer"] = tgt_tok * h * VOCAB
    if m.attention != "none":
        pairs = sum(s * t for s, t in zip(src_len, tgt_len, strict=True))  # (t, s) scores
        # key projection once per source token, then a score and a context product per pair
        macs["attention"] = src_tok * h * h + pairs * (h + h)
        if m.attention == "bahdanau":
            macs["attention"] += tgt_tok * h * h  # the query projection
        macs["attentional_vector"] = tgt_tok * 2 * h * h  # tanh(W [s_t; c_t])
    return {name: 3 * 2 * n for name, n in macs.items()}


def against_limit(tokens_per_s: float, flop_per_token: float, peak_gflops: float) -> dict:
    """One system's tokens/s as a fraction of the limit: the tokens/s at which the step's
    FLOPs (``step_flops``, per target token) would run at the fp32 matmul peak."""
    limit = peak_gflops * 1e9 / flop_per_token
    return {
        "tgt_tokens_per_s": round(tokens_per_s, 1),
        "limit_tgt_tokens_per_s": round(limit, 1),
        "peak_fraction": round(tokens_per_s / limit, 3),
    }


def run_config(
    name: str,
    seconds: float,
    pairs: EncodedPairs,
    peak: float,
    clock: Callable[[], float] = time.perf_counter,
) -> dict:
    """One configuration's line; tokens/s per second of ``clock`` (the peak's clock)."""
    model_over, train_over = CONFIGS[name]
    cfg = PipelineConfig(
        model=dataclasses.replace(ModelConfig(), **model_over),
        train=dataclasses.replace(TrainConfig(), **train_over),
    )
    torch.manual_seed(0)
    model = build_model(cfg.model, VOCAB, VOCAB)
    model.compile_training = cfg.train.compile  # as the training session sets it
    model.train()
    optimizer = build_optimizer(list(model.parameters()), cfg.train)  # the pipeline's own
    batches = epoch_batches(pairs, cfg.train.batch_tokens, seed=0, epoch=1)
    device = torch.device("cpu")
    # One batch per step (accumulate_steps is 1 in every configuration): the loop's step.
    kw = {"teacher_forcing": cfg.train.teacher_forcing, "lr": cfg.train.lr, "tc": cfg.train}
    t_warm = time.perf_counter()
    for batch in batches[:2]:  # warm-up: allocator, oneDNN primitives, compiling
        train_step(model, optimizer, [batch.to(device)], **kw)
    warmup_s = time.perf_counter() - t_warm
    tokens = steps = 0
    flops = dict.fromkeys(COMPONENTS, 0)
    t0 = clock()
    for batch in batches[2:]:
        train_step(model, optimizer, [batch.to(device)], **kw)
        tokens += batch.ntokens
        for component, n in step_flops(cfg.model, batch).items():
            flops[component] += n
        steps += 1
        if clock() - t0 >= seconds:
            break
    elapsed = clock() - t0
    flop_per_token = sum(flops.values()) / max(tokens, 1)
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
        "clock": clock.__name__,
        "compile": cfg.train.compile,
        "warmup_s": round(warmup_s, 1),
        "steps": steps,
        "params": sum(p.numel() for p in model.parameters()),
        "mflop_per_tgt_token": round(flop_per_token / 1e6, 2),
        "mflop_per_tgt_token_by_component": {
            component: round(n / max(tokens, 1) / 1e6, 2) for component, n in flops.items()
        },
        "model_gflop_s": round(flop_per_token * tokens / elapsed / 1e9, 2),
        "mm_peak_gflop_s": round(peak, 1),
        **against_limit(tokens / elapsed, flop_per_token, peak),
        "greedy_300_s": round(decode_s, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def versus_peers(ours: dict[str, dict], peers: list[dict], peak_gflops: float) -> list[dict]:
    """One line per peer row with a config of ours: both systems' tokens/s against the limit
    (the same FLOPs per target token, ours as counted on this data, since the architecture
    is the same; each system against the matmul peak measured nearest to it) and ours / the
    peer's tokens/s."""
    lines = []
    for row, (name, mine) in itertools.product(peers, ours.items()):
        # joey_if against ours joey_if and its variants (joey_if_compiled)
        if not row.get("tgt_tokens_per_s") or name.split("_compiled")[0] != row.get("config"):
            continue
        flop_per_token = mine["mflop_per_tgt_token"] * 1e6
        lines.append({
            "ours_vs": row["system"], "config": row["config"], "ours_config": name,
            "ours": against_limit(mine["tgt_tokens_per_s"], flop_per_token,
                                  mine["mm_peak_gflop_s"]),
            "peer": against_limit(row["tgt_tokens_per_s"], flop_per_token, peak_gflops),
            "ratio": round(mine["tgt_tokens_per_s"] / row["tgt_tokens_per_s"], 2),
        })  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--seconds", type=float, default=30.0, help="timed training per config")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=4000)
    parser.add_argument("--real", action="store_true", help="data/prepared + data/vocab")
    parser.add_argument(
        "--cpu-clock", action="store_true",
        help="with --threads 1: tokens/s and the peak per CPU second (a shared machine)",
    )  # fmt: skip
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
    if args.cpu_clock and args.threads != 1:
        parser.error("--cpu-clock needs --threads 1 (CPU time of several threads is no clock)")
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
            if args.cpu_clock:
                cmd.append("--cpu-clock")
            out = subprocess.run(
                [*cmd, "--pairs", str(args.pairs)], check=True, capture_output=True, text=True
            ).stdout
            print(out, end="", flush=True)
            ours[name] = json.loads(out.strip().splitlines()[-1])
        peers: list[dict] = []  # other systems, same data and architecture: a row per config
        if args.joey:
            peers += joey_side_by_side(args.joey, args.threads)
        if args.onmt:
            peers += train_rows(args.configs, CONFIGS, args.onmt, args.threads, ours)
        if peers:
            torch.set_num_threads(args.threads)
            peak = matmul_peak_gflops()  # the peers' limit, measured after they ran
            for line in versus_peers(ours, peers, peak):
                print(json.dumps(line), flush=True)
        return
    prepare_host(torch.device("cpu"), args.threads)  # as train_model does
    pairs = real_pairs(args.pairs) if args.real else synthetic_pairs(args.pairs)
    clock = time.process_time if args.cpu_clock else time.perf_counter
    peak = matmul_peak_gflops(clock=clock)
    for name in args.configs:
        print(json.dumps(run_config(name, args.seconds, pairs, peak, clock)), flush=True)


if __name__ == "__main__":
    main()
