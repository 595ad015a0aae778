"""Decoding speed: greedy and beam 5, batch 1 and 64, ours next to Joey NMT 2.3 and
OpenNMT-py 3.5.1 (bench/onmt_decode.py; the same architectures, skipped without its venv).

Both systems decode the same test-split sources (SentencePiece ids) with randomly
initialised models of the same architecture (issue 5's Joey configuration: BiLSTM 256 per
direction, LSTM decoder 512, Bahdanau attention with input feeding, emb 256) and `</s>`
suppressed, so every hypothesis runs to its length limit (1.5 x source length) and the
two do the same work per token. Ours runs in fp32, bf16 (where the CPU has it natively)
and int8 (`decode.precision`), each with the eager and the compiled step (`compiled`,
`kernels/decode_step.cpp`) alternating, `--repeats` runs each, the median kept. Prints one
JSON line per (system, setting, precision, step), then the single-sentence latency of the
default model, then the test-split BLEU and tokens/s of each precision for a trained model
(`--model`, default the checkpoint `make run` leaves), then the ratios against each peer
(`PEERS`: Joey NMT 2.3 today). Every row's decoder GFLOP/s is also given as a fraction of
the fp32 matmul peak, sampled between the setting's runs (a shared machine's peak moves
with its load as the runs do). Run `python bench/decode_speed.py [--quick] [--model PATH]
[--repeats N]` from the repo root.

Lengths: with `</s>` suppressed ours stops each sentence at 1.5 x its own source length;
Joey stops a batch at 1.5 x its longest source, padding the shorter ones' outputs. At batch
64 Joey therefore decodes more steps than it returns tokens: compare tokens/s (the ratio
lines give both systems' token counts), not sentences/s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from machine import cpu_has_bf16, matmul_peak_gflops  # noqa: E402
from onmt_common import decode_rows, speed_ratios  # noqa: E402

from seq2seq_core.config import DataConfig, DecodeConfig, ModelConfig, VocabConfig  # noqa: E402
from seq2seq_core.data.prepare import prepare_corpus, read_prepared_split  # noqa: E402
from seq2seq_core.data.tokenization import SubwordTokenizer  # noqa: E402
from seq2seq_core.decoding.beam_search import beam_search  # noqa: E402
from seq2seq_core.decoding.greedy import greedy_decode  # noqa: E402
from seq2seq_core.decoding.translator import Translator  # noqa: E402
from seq2seq_core.evaluation.metrics import score_translations  # noqa: E402
from seq2seq_core.kernels import step_extension  # noqa: E402
from seq2seq_core.kernels.packed_weights import PackedWeights  # noqa: E402
from seq2seq_core.model.checkpoint import load_model  # noqa: E402
from seq2seq_core.model.seq2seq import build_model  # noqa: E402
from seq2seq_core.runtime.host_memory import retain_freed_host_memory  # noqa: E402
from seq2seq_core.special_tokens import EOS_ID  # noqa: E402

CACHE = REPO / "bench" / ".cache"
JOEY_PYTHON = CACHE / "joey-venv" / "bin" / "python"
JOEY_ARCH = ModelConfig(
    cell="lstm", attention="bahdanau", input_feeding=True, hidden_size=512,
    bidirectional=True, emb_size=256, dropout=0.0, tie_embeddings="none",
)  # fmt: skip
JOEY_MODEL_CFG = {
    "encoder": {
        "type": "recurrent", "rnn_type": "lstm", "hidden_size": 256, "bidirectional": True,
        "embeddings": {"embedding_dim": 256}, "dropout": 0.0, "num_layers": 1,
    },
    "decoder": {
        "type": "recurrent", "rnn_type": "lstm", "hidden_size": 512, "attention": "bahdanau",
        "input_feeding": True, "init_hidden": "bridge", "embeddings": {"embedding_dim": 256},
        "dropout": 0.0, "hidden_dropout": 0.0, "num_layers": 1,
    },
}  # fmt: skip
MAX_LEN_RATIO = 1.5
TRAINED_MODEL = REPO / "models" / "checkpoints" / "best.pt"  # what `make run` trains
BATCH1_SENTENCES = 100  # batch size 1 is slow for both systems: a fixed subset


def decoder_flops_per_token(cfg: ModelConfig, vocab: int, src_len: float) -> float:
    """Matmul FLOPs of one decoder step for one hypothesis (forward only)."""
    h, e = cfg.hidden_size, cfg.emb_size
    gates = 4 if cfg.cell == "lstm" else 3
    rnn_in = e + (h if cfg.input_feeding else 0)
    macs = gates * h * (rnn_in + h) + h * vocab
    if cfg.attention != "none":
        macs += 2 * h * h  # combine [s; c] -> h~
        macs += src_len * h  # scores (dot/general after key projection) and context
        macs += src_len * h + (h * h if cfg.attention == "bahdanau" else 0)
    return 2.0 * macs


def corpus(quick: bool) -> tuple[list[str], SubwordTokenizer]:
    prepared, vocab = REPO / "data" / "prepared", REPO / "data" / "vocab"
    if not (prepared / "test.parquet").exists() or not (vocab / "tokenizer.json").exists():
        prepared, vocab = CACHE / "decode" / "prepared", CACHE / "decode" / "vocab"
        if not (vocab / "tokenizer.json").exists():
            prepare_corpus(DataConfig(), prepared)
            train = read_prepared_split(prepared, "train")
            SubwordTokenizer.train(
                train["src"].tolist(), train["tgt"].tolist(), VocabConfig(), vocab
            )
    sources = read_prepared_split(prepared, "test")["src"].tolist()
    return sources[:64] if quick else sources, SubwordTokenizer.load(vocab)


def sources_for(all_ids: list[list[int]], setting: dict) -> list[list[int]]:
    """Batch size 1 runs a fixed subset (every k-th sentence): same sentences for both."""
    if setting["batch_size"] > 1 or len(all_ids) <= BATCH1_SENTENCES:
        return all_ids
    step = len(all_ids) // BATCH1_SENTENCES
    return all_ids[::step][:BATCH1_SENTENCES]


STEPS = ("eager", "compiled")  # decoding/greedy's and beam_search's `compiled` off and on
PEAK_SAMPLE_S = 0.5  # a matmul peak sample after each round of a setting's runs


def ours(
    cfg: ModelConfig,
    name: str,
    all_ids: list[list[int]],
    vocab: int,
    settings: list[dict],
    peak: float,
    precision: str = "fp32",
    repeats: int = 1,
) -> list[dict]:
    """One row per (setting, step): the eager and the compiled step run alternately,
    `repeats` times each, and each row reports the median run."""
    torch.manual_seed(0)
    model = build_model(cfg, vocab, vocab).eval()
    with torch.no_grad():
        model.decoder.output_layer.bias[EOS_ID] = -1e9  # run every hypothesis to its limit
    mean_src = sum(map(len, all_ids)) / len(all_ids)
    flops_token = decoder_flops_per_token(cfg, vocab, mean_src)
    rows = []
    for setting in settings:
        src_ids = sources_for(all_ids, setting)
        runs: dict[str, list[tuple[float, int, int]]] = {step: [] for step in STEPS}
        peaks = [peak]
        for round_ in range(repeats):
            # interleaved, ABBA: a load change or the order itself hits both alike
            for step in STEPS if round_ % 2 == 0 else STEPS[::-1]:
                runs[step].append(_decode_once(model, src_ids, setting, precision, step))
            # and the peak too: on a shared machine it moves with the load as they do
            peaks.append(matmul_peak_gflops(seconds=PEAK_SAMPLE_S))
        setting_peak = statistics.median(peaks)
        for step in STEPS:
            seconds, tokens, hyp_tokens = sorted(runs[step])[len(runs[step]) // 2]
            rows.append({
                "system": f"ours:{name}", **setting, "precision": precision, "step": step,
                "sentences": len(src_ids), "repeats": repeats,
                "seconds": round(seconds, 3), "sentences_per_s": round(len(src_ids) / seconds, 2),
                "tgt_tokens_per_s": round(tokens / seconds, 1), "tgt_tokens": tokens,
                "hyp_tokens_per_s": round(hyp_tokens / seconds, 1),
                **flop_rates(hyp_tokens, flops_token, seconds, setting_peak),
                "matmul_peak_gflops": round(setting_peak, 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _decode_once(
    model: torch.nn.Module, src_ids: list[list[int]], setting: dict, precision: str, step: str
) -> tuple[float, int, int]:
    """(seconds, output tokens, hypothesis tokens decoded) of one decoding run."""
    kw = {"max_len_ratio": MAX_LEN_RATIO, "max_len_extra": 0, "precision": precision}
    kw.update(batch_size=setting["batch_size"], compiled=step == "compiled")
    start = time.perf_counter()
    if setting["beam"] == 1:
        out = greedy_decode(model, src_ids, **kw).ids
        steps = [len(o) for o in out]
    else:
        found = beam_search(model, src_ids, beam_size=setting["beam"], **kw)
        out = [h[0].ids for h in found]
        steps = [h[0].steps for h in found]
    seconds = time.perf_counter() - start
    return seconds, sum(map(len, out)), setting["beam"] * sum(steps)


def flop_rates(hyp_tokens: int, flops_token: float, seconds: float, peak: float) -> dict:
    """The decoder's matmul GFLOP/s and that as a fraction of the fp32 matmul peak measured
    in the same run: how far from the machine's limit a figure is."""
    gflops = hyp_tokens * flops_token / seconds / 1e9
    return {"decoder_gflop_per_s": round(gflops, 2), "fraction_of_peak": round(gflops / peak, 3)}


def joey(
    src_ids: list[list[int]], vocab: int, settings: list[dict], threads: int, rates: RateFn
) -> list[dict]:
    if not JOEY_PYTHON.exists():
        print(json.dumps({"system": "joeynmt-2.3.0", "skipped": f"{JOEY_PYTHON} missing"}))
        return []
    job = {
        "joey_model": JOEY_MODEL_CFG, "vocab_size": vocab, "sources": src_ids,
        "settings": settings, "threads": threads, "max_len_ratio": MAX_LEN_RATIO,
        "batch1_sentences": BATCH1_SENTENCES,
    }  # fmt: skip
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
    proc = subprocess.run(
        [str(JOEY_PYTHON), str(REPO / "bench" / "joey_decode.py"), f.name],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    os.unlink(f.name)
    if proc.returncode != 0:
        print(json.dumps({"system": "joeynmt-2.3.0", "error": proc.stderr[-800:]}))
        return []
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    for row in rows:
        row.update(rates(row))
        print(json.dumps(row), flush=True)
    return rows


# A peer's FLOP/s figures from its row (hyp_tokens, seconds): flop_rates for its architecture.
RateFn = Callable[[dict], dict]
# Peer systems that decode the same sources with the same architecture (JOEY_ARCH):
# name -> runner(sources, vocab, settings, threads, rates) -> one row per setting with beam,
# batch_size, tgt_tokens, tgt_tokens_per_s, sentences_per_s (and hyp_tokens, seconds for
# the FLOP/s figures). A new peer is a module beside joey_decode.py and one entry here.
PEERS: dict[str, Callable[[list[list[int]], int, list[dict], int, RateFn], list[dict]]] = {
    "joeynmt-2.3.0": joey,
}


def own_ratios(mine: list[dict]) -> dict:
    """Ours against ourselves, per (beam, batch, precision): the compiled step's speed-up on
    the eager one, and each precision's (compiled) on fp32's; no peer needed."""
    rate = {(r["beam"], r["batch_size"], r["precision"], r["step"]): r["tgt_tokens_per_s"]
            for r in mine}  # fmt: skip
    ratios = {}
    for beam, batch, precision, step in rate:
        if step != "compiled":
            continue
        key = f"beam{beam}_batch{batch}_{precision}"
        compiled = rate[beam, batch, precision, "compiled"]
        ratios[key] = {
            "compiled_vs_eager": round(compiled / rate[beam, batch, precision, "eager"], 2),
            "vs_fp32": round(compiled / rate[beam, batch, "fp32", "compiled"], 2),
        }
    return ratios


def peer_ratios(mine: list[dict], theirs: list[dict]) -> dict:
    """Ours against one peer, per (beam, batch, precision, step): tokens/s and sentences/s
    ratios, our fraction of the matmul peak, and, for the compiled step, its speed-up on
    the eager step and on fp32."""
    by_setting = {(r["beam"], r["batch_size"]): r for r in theirs}
    fp32 = {(r["beam"], r["batch_size"], r["step"]): r for r in mine if r["precision"] == "fp32"}
    eager = {(r["beam"], r["batch_size"], r["precision"]): r for r in mine if r["step"] == "eager"}
    ratios = {}
    for a in mine:
        b = by_setting.get((a["beam"], a["batch_size"]))
        if b is None:
            continue
        key = f"beam{a['beam']}_batch{a['batch_size']}_{a['precision']}_{a['step']}"
        same_fp32 = fp32[a["beam"], a["batch_size"], a["step"]]
        same_eager = eager[a["beam"], a["batch_size"], a["precision"]]
        ratios[key] = {
            "tokens_per_s_ratio": round(a["tgt_tokens_per_s"] / b["tgt_tokens_per_s"], 2),
            "sentences_per_s_ratio": round(a["sentences_per_s"] / b["sentences_per_s"], 2),
            "ours_fraction_of_peak": a["fraction_of_peak"],
            "peer_fraction_of_peak": b.get("fraction_of_peak"),
            "tgt_tokens_ours_peer": [a["tgt_tokens"], b["tgt_tokens"]],
            "tokens_per_s_vs_fp32": round(a["tgt_tokens_per_s"] / same_fp32["tgt_tokens_per_s"], 2),
            "tokens_per_s_vs_eager": round(
                a["tgt_tokens_per_s"] / same_eager["tgt_tokens_per_s"], 2
            ),
        }
    return ratios


def latency_ms(tok: SubwordTokenizer, sources: list[str], threads: int) -> list[dict]:
    """Median batch-1 greedy latency of the default model on a ~30-word verse, per step
    (eager, compiled, interleaved) and per packing: `per_call` packs the weights in every
    call (what a bare ``greedy_decode`` does), `kept` packs them once and keeps them (what a
    served model's frozen ``Translator`` does). `first_ms` is the first call; the compiled
    one's extension was loaded before (`extension_load_s`, the build when there was one)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(), tok.src_vocab_size, tok.tgt_vocab_size).eval()
    verse = min(sources, key=lambda s: abs(len(s.split()) - 30))
    ids = tok.encode_src([verse])
    modes = [(step, packing) for packing in ("per_call", "kept") for step in STEPS]
    kept = {mode: PackedWeights() for mode in modes}
    times: dict[tuple[str, str], list[float]] = {mode: [] for mode in modes}
    outputs: dict[tuple[str, str], list[list[int]]] = {}
    for _ in range(21):
        for mode in modes:  # interleaved: a load change hits all alike
            step, packing = mode
            start = time.perf_counter()
            out = greedy_decode(
                model, ids, batch_size=1, max_len_ratio=1.5, max_len_extra=10,
                compiled=step == "compiled", kept_weights=kept[mode] if packing == "kept" else None,
            )  # fmt: skip
            tok.decode_tgt(out.ids)
            times[mode].append((time.perf_counter() - start) * 1000)
            outputs[mode] = out.ids
    if len({str(out) for out in outputs.values()}) != 1:
        raise RuntimeError(f"the steps translated the verse differently: {outputs}")
    return [
        {
            "setting": "latency",
            "model": "default",
            "step": step,
            "packing": packing,
            "words": len(verse.split()),
            "src_tokens": len(ids[0]),
            "out_tokens": len(outputs[step, packing][0]),
            "median_ms": round(statistics.median(times[step, packing][1:]), 2),
            "first_ms": round(times[step, packing][0], 1),
            "threads": threads,
        }
        for step, packing in modes
    ]


def trained_bleu(
    checkpoint: Path, tok: SubwordTokenizer, precisions: list[str], sentences: int | None
) -> list[dict]:
    """Test-split BLEU and tokens/s of a trained model per precision, greedy and beam 5 at
    batch 64, decoded as the evaluate stage does (its default decode settings)."""
    if not checkpoint.exists():
        print(json.dumps({"setting": "trained_bleu", "skipped": f"{checkpoint} missing"}))
        return []
    prepared = REPO / "data" / "prepared"
    test = read_prepared_split(prepared, "test")[:sentences]
    model, _ = load_model(checkpoint)
    rows = []
    for beam in (1, 5):
        for precision in precisions:
            decode = DecodeConfig(beam_size=beam, batch_size=64, precision=precision)
            translator = Translator(model, tok, decode, max_input_chars=100_000, frozen=True)
            start = time.perf_counter()
            hyps = translator.translate(test["src"].tolist())
            seconds = time.perf_counter() - start
            tokens = sum(map(len, tok.encode_tgt(hyps)))
            rows.append({
                "setting": "trained_bleu", "model": str(checkpoint), "beam": beam,
                "precision": precision, "sentences": len(hyps),
                "bleu": round(score_translations(hyps, test["tgt"].tolist())["bleu"], 2),
                "tgt_tokens": tokens, "tgt_tokens_per_s": round(tokens / seconds, 1),
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="64 sentences: a smoke test")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--model", type=Path, default=TRAINED_MODEL, help="for test BLEU")
    parser.add_argument("--bleu-sentences", type=int, help="the first N test pairs only")
    parser.add_argument("--repeats", type=int, default=1, help="runs per step; median kept")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    retain_freed_host_memory()  # as the evaluate stage does
    start = time.perf_counter()
    if step_extension.load() is None:  # built here once (minutes) if not yet
        print(json.dumps({"step": "compiled", "skipped": "no extension: see the log"}))
    extension_load_s = round(time.perf_counter() - start, 2)
    peak = matmul_peak_gflops()
    sources, tok = corpus(args.quick)
    src_ids = [ids for ids in tok.encode_src(sources) if ids]
    vocab = tok.src_vocab_size
    settings = [{"beam": b, "batch_size": n} for b in (1, 5) for n in (1, 64)]
    if args.quick:
        settings = [s for s in settings if s["batch_size"] == 64]
    precisions = ["fp32", "bf16", "int8"]
    if not cpu_has_bf16():  # autocast would only emulate bf16 elsewhere
        precisions.remove("bf16")
        print(json.dumps({"precision": "bf16", "skipped": "no native bf16 on this CPU"}))
    mine = []
    for precision in precisions:
        mine += ours(
            JOEY_ARCH, "joey-arch", src_ids, vocab, settings, peak, precision, args.repeats
        )
    flops_token = decoder_flops_per_token(JOEY_ARCH, vocab, sum(map(len, src_ids)) / len(src_ids))

    def rates(row: dict) -> dict:
        if "hyp_tokens" not in row:
            return {}
        return flop_rates(row["hyp_tokens"], flops_token, row["seconds"], peak)

    peers = {
        name: run(src_ids, vocab, settings, args.threads, rates) for name, run in PEERS.items()
    }
    default_rows = ours(ModelConfig(dropout=0.0), "default", src_ids, vocab, settings, peak)
    onmt_rows = decode_rows({"joey-arch": JOEY_ARCH, "default": ModelConfig(dropout=0.0)},
                            src_ids, vocab, settings, args.threads, MAX_LEN_RATIO,
                            BATCH1_SENTENCES)  # fmt: skip
    for row in latency_ms(tok, sources, args.threads):
        print(json.dumps({**row, "extension_load_s": extension_load_s}))
    trained = trained_bleu(args.model, tok, precisions, args.bleu_sentences)
    test_bleu = {f"beam{r['beam']}_{r['precision']}": r["bleu"] for r in trained}
    print(json.dumps({
        "matmul_peak_gflops": round(peak, 1), "threads": args.threads,
        "compiled_and_precisions": own_ratios(mine),
        "ours_vs": {name: peer_ratios(mine, rows) for name, rows in peers.items()},
        "ours_vs_onmt": speed_ratios(mine + default_rows, onmt_rows),
        "trained_test_bleu": test_bleu,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
