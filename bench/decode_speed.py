"""Decoding speed: greedy and beam 5, batch 1 and 64, ours next to Joey NMT 2.3 and
OpenNMT-py 3.5.1 (bench/onmt_decode.py; the same architectures, skipped without its venv).

Both systems decode the same test-split sources (SentencePiece ids) with randomly
initialised models of the same architecture (issue 5's Joey configuration: BiLSTM 256 per
direction, LSTM decoder 512, Bahdanau attention with input feeding, emb 256) and `</s>`
suppressed, so every hypothesis runs to its length limit (1.5 x source length) and the
two do the same work per token. Ours runs in fp32, bf16 (where the CPU has it natively)
and int8 (`decode.precision`). Prints one JSON line per (system, setting, precision), then
the single-sentence latency of the default model, then the test-split BLEU and tokens/s of
each precision for a trained model (`--model`, default the checkpoint `make run` leaves),
then the ratios against Joey, with the fp32 matmul peak used for the FLOP/s fractions.
Run `python bench/decode_speed.py [--quick] [--model PATH]` from the repo root.

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


def ours(
    cfg: ModelConfig,
    name: str,
    all_ids: list[list[int]],
    vocab: int,
    settings: list[dict],
    precision: str = "fp32",
) -> list[dict]:
    torch.manual_seed(0)
    model = build_model(cfg, vocab, vocab).eval()
    with torch.no_grad():
        model.decoder.output_layer.bias[EOS_ID] = -1e9  # run every hypothesis to its limit
    mean_src = sum(map(len, all_ids)) / len(all_ids)
    flops_token = decoder_flops_per_token(cfg, vocab, mean_src)
    rows = []
    for setting in settings:
        src_ids = sources_for(all_ids, setting)
        kw = {"max_len_ratio": MAX_LEN_RATIO, "max_len_extra": 0, "precision": precision}
        kw["batch_size"] = setting["batch_size"]
        start = time.perf_counter()
        if setting["beam"] == 1:
            out = greedy_decode(model, src_ids, **kw).ids
            steps = [len(o) for o in out]
        else:
            found = beam_search(model, src_ids, beam_size=setting["beam"], **kw)
            out = [h[0].ids for h in found]
            steps = [h[0].steps for h in found]
        seconds = time.perf_counter() - start
        tokens = sum(map(len, out))
        hyp_tokens = setting["beam"] * sum(steps)
        rows.append({
            "system": f"ours:{name}", **setting, "precision": precision,
            "sentences": len(src_ids),
            "seconds": round(seconds, 3), "sentences_per_s": round(len(src_ids) / seconds, 2),
            "tgt_tokens_per_s": round(tokens / seconds, 1), "tgt_tokens": tokens,
            "hyp_tokens_per_s": round(hyp_tokens / seconds, 1),
            "decoder_gflop_per_s": round(hyp_tokens * flops_token / seconds / 1e9, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def joey(src_ids: list[list[int]], vocab: int, settings: list[dict], threads: int) -> list[dict]:
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
        print(json.dumps(row), flush=True)
    return rows


def latency_ms(tok: SubwordTokenizer, sources: list[str], threads: int) -> dict:
    """Median batch-1 greedy latency of the default model on a ~30-word verse."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(), tok.src_vocab_size, tok.tgt_vocab_size).eval()
    verse = min(sources, key=lambda s: abs(len(s.split()) - 30))
    ids = tok.encode_src([verse])
    times = []
    for _ in range(21):
        start = time.perf_counter()
        out = greedy_decode(model, ids, batch_size=1, max_len_ratio=1.5, max_len_extra=10)
        tok.decode_tgt(out.ids)
        times.append((time.perf_counter() - start) * 1000)
    return {
        "setting": "latency", "model": "default", "words": len(verse.split()),
        "src_tokens": len(ids[0]), "out_tokens": len(out.ids[0]),
        "median_ms": round(statistics.median(times[1:]), 2), "threads": threads,
    }  # fmt: skip


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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    retain_freed_host_memory()  # as the evaluate stage does
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
        mine += ours(JOEY_ARCH, "joey-arch", src_ids, vocab, settings, precision=precision)
    theirs = {(r["beam"], r["batch_size"]): r for r in joey(src_ids, vocab, settings, args.threads)}
    default_rows = ours(ModelConfig(dropout=0.0), "default", src_ids, vocab, settings)
    onmt_rows = decode_rows({"joey-arch": JOEY_ARCH, "default": ModelConfig(dropout=0.0)},
                            src_ids, vocab, settings, args.threads, MAX_LEN_RATIO,
                            BATCH1_SENTENCES)  # fmt: skip
    print(json.dumps(latency_ms(tok, sources, args.threads)))
    trained = trained_bleu(args.model, tok, precisions, args.bleu_sentences)
    bleu = {f"beam{r['beam']}_{r['precision']}": r for r in trained}
    ratios = {}
    for a in mine:
        b = theirs.get((a["beam"], a["batch_size"]))
        if b is None:
            continue
        key = f"beam{a['beam']}_batch{a['batch_size']}_{a['precision']}"
        ratios[key] = {
            "tokens_per_s_ratio": round(a["tgt_tokens_per_s"] / b["tgt_tokens_per_s"], 2),
            "sentences_per_s_ratio": round(a["sentences_per_s"] / b["sentences_per_s"], 2),
            "ours_fraction_of_peak": round(a["decoder_gflop_per_s"] / peak, 3),
            "tgt_tokens_ours_joey": [a["tgt_tokens"], b["tgt_tokens"]],
        }
        fp32 = next(r for r in mine if r["precision"] == "fp32" and r["beam"] == a["beam"]
                    and r["batch_size"] == a["batch_size"])  # fmt: skip
        ratios[key]["tokens_per_s_vs_fp32"] = round(
            a["tgt_tokens_per_s"] / fp32["tgt_tokens_per_s"], 2
        )
    test_bleu = {key: r["bleu"] for key, r in bleu.items()}
    print(json.dumps({"matmul_peak_gflops": round(peak, 1), "threads": args.threads,
                      "ours_vs_joey": ratios, "trained_test_bleu": test_bleu,
                      "ours_vs_onmt": speed_ratios(mine + default_rows, onmt_rows)}))  # fmt: skip


if __name__ == "__main__":
    main()
