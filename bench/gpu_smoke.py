"""GPU smoke test: train the default model (params.yaml) and Joey NMT's architecture for a
while in fp32, TF32 and bf16 on the real corpus, then decode the test split greedy and beam.

One JSON line per training run: target tokens/s, peak GPU memory, and whether each dtype is
what was asked (the dtypes of the RNN outputs, attentional vectors and logits actually
produced, seen by hooks on one probe batch); then one line per decode with BLEU and
sentences/s. Without CUDA it prints one line saying so and exits 0.

    .venv/bin/python bench/gpu_smoke.py                         # a GPU: 60 s per run
    .venv/bin/python bench/gpu_smoke.py --device cpu --seconds 5 --limit 20   # CPU check

Needs data/prepared and data/vocab (the ingest and vocab stages).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from decode_speed import JOEY_ARCH  # noqa: E402

from seq2seq_core.config import load_config  # noqa: E402
from seq2seq_core.data.batches import encode_pairs, epoch_batches  # noqa: E402
from seq2seq_core.data.prepare import read_prepared_split  # noqa: E402
from seq2seq_core.data.tokenization import SubwordTokenizer  # noqa: E402
from seq2seq_core.decoding.beam_search import beam_search  # noqa: E402
from seq2seq_core.decoding.greedy import greedy_decode  # noqa: E402
from seq2seq_core.evaluation.metrics import bleu_tokenizer, target_language  # noqa: E402
from seq2seq_core.kernels import Kernels  # noqa: E402
from seq2seq_core.model.seq2seq import build_model  # noqa: E402
from seq2seq_core.runtime.precision import autocast, set_tf32  # noqa: E402
from seq2seq_core.training.optim import build_optimizer  # noqa: E402
from seq2seq_core.training.step import train_step  # noqa: E402

# run name -> (train.precision, TF32 on)
RUNS = {"fp32": ("fp32", False), "tf32": ("fp32", True), "bf16": ("bf16", False)}
WANTED = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16}


def dtype_probe(model: torch.nn.Module, batch: Any, precision: str, device: torch.device) -> dict:
    """The dtypes one forward pass actually produces: every RNN output (modules and cell
    steps), the attentional vectors and the logits."""
    seen: dict[str, set[str]] = {"rnn": set(), "vectors": set(), "logits": set()}

    def rnn_hook(_module: Any, _inputs: Any, out: Any) -> None:
        first = out[0]
        seen["rnn"].add(str(getattr(first, "data", first).dtype))

    hooks = [m.register_forward_hook(rnn_hook) for m in (model.encoder.rnn, model.decoder.rnn)]
    real_cell = Kernels.cell

    def cell(self: Kernels, *args: Any, **kwargs: Any) -> Any:
        h, c = real_cell(self, *args, **kwargs)
        seen["rnn"].add(str(h.dtype))
        return h, c

    Kernels.cell = cell  # type: ignore[method-assign]
    try:
        b = batch.to(device)
        with torch.no_grad(), autocast(device, precision):
            kernels = model.select_kernels()
            memory, state = model.encode(b.src, b.src_len, kernels)
            vectors = model.decoder.teacher_forced(b.tgt_in, state, memory, kernels)
            logits = model.decoder.logits(vectors, kernels)
        seen["vectors"].add(str(vectors.dtype))
        seen["logits"].add(str(logits.dtype))
    finally:
        Kernels.cell = real_cell  # type: ignore[method-assign]
        for hook in hooks:
            hook.remove()
    return {k: sorted(v) for k, v in seen.items()}


def train_run(name: str, model_cfg: Any, run: str, args: argparse.Namespace, data: dict) -> Any:
    cfg, device = data["cfg"], data["device"]
    precision, tf32 = RUNS[run]
    set_tf32(device, tf32)
    tc = dataclasses.replace(cfg.train, precision=precision, tf32=tf32)
    torch.manual_seed(0)
    model = build_model(model_cfg, data["src_vocab"], data["tgt_vocab"]).to(device).train()
    optimizer = build_optimizer(list(model.parameters()), tc)
    batches = epoch_batches(data["pairs"], tc.batch_tokens, seed=0, epoch=1)
    kw = {"teacher_forcing": tc.teacher_forcing, "lr": tc.lr, "tc": tc}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for batch in batches[:2]:  # warm-up: allocator, cuDNN plans
        train_step(model, optimizer, [batch.to(device)], **kw)
    tokens = steps = 0
    losses: list[float] = []
    t0 = time.perf_counter()
    for batch in batches[2:]:
        step_losses, _ = train_step(model, optimizer, [batch.to(device)], **kw)
        losses += step_losses
        tokens += batch.ntokens
        steps += 1
        if time.perf_counter() - t0 >= args.seconds:
            break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    dtypes = dtype_probe(model, batches[0], precision, device)
    wanted = str(WANTED[run])
    print(
        json.dumps(
            {
                "model": name,
                "run": run,
                "device": str(device),
                "tf32": tf32 and device.type == "cuda",
                "steps": steps,
                "tokens_per_s": round(tokens / elapsed, 1) if elapsed > 0 else None,
                "peak_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
                if device.type == "cuda"
                else None,
                "last_loss": round(losses[-1], 4) if losses else None,
                "dtypes": dtypes,
                "dtypes_as_asked": all(v == [wanted] for v in dtypes.values()),
            }
        ),
        flush=True,
    )
    return model, precision


def decode_runs(name: str, model: Any, precision: str, data: dict, beam: int) -> None:
    import sacrebleu

    tok, device, sources, refs = data["tok"], data["device"], data["test_src"], data["test_ref"]
    src_ids = tok.encode_src(sources)
    dc = data["cfg"].decode
    for method in ("greedy", "beam"):
        start = time.perf_counter()
        if method == "greedy":
            ids = greedy_decode(
                model, src_ids, batch_size=dc.batch_size, max_len_ratio=dc.max_len_ratio,
                max_len_extra=dc.max_len_extra, device=device, precision=precision,
            ).ids  # fmt: skip
        else:
            found = beam_search(
                model, src_ids, beam_size=beam, batch_size=max(1, dc.batch_size // beam * 2),
                max_len_ratio=dc.max_len_ratio, max_len_extra=dc.max_len_extra,
                length_penalty_alpha=dc.length_penalty, device=device, precision=precision,
            )  # fmt: skip
            ids = [hyps[0].ids for hyps in found]
        seconds = time.perf_counter() - start
        hyps = tok.decode_tgt(ids)
        bleu = sacrebleu.corpus_bleu(hyps, [refs], tokenize=data["tokenize"]).score
        print(
            json.dumps(
                {
                    "model": name,
                    "decode": method,
                    "beam_size": 1 if method == "greedy" else beam,
                    "precision": precision,
                    "sentences": len(sources),
                    "bleu": round(bleu, 2),
                    "sentences_per_s": round(len(sources) / seconds, 2) if seconds > 0 else None,
                }
            ),
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (a quick check)")
    parser.add_argument("--seconds", type=float, default=60.0, help="training time per run")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--limit", type=int, default=0, help="test sentences (0 = all)")
    parser.add_argument("--train-pairs", type=int, default=0, help="train pairs (0 = all)")
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device", "torch": torch.__version__}))
        return
    device = torch.device(args.device)
    cfg = load_config(args.params)
    tok = SubwordTokenizer.load(REPO / cfg.vocab.out_dir)
    prepared = REPO / cfg.data.prepared_dir
    train = read_prepared_split(prepared, "train")
    if args.train_pairs:
        train = train.head(args.train_pairs)
    test = read_prepared_split(prepared, "test")
    if args.limit:
        test = test.head(args.limit)
    pairs = list(zip(train["src"], train["tgt"], strict=True))
    data = {
        "cfg": cfg,
        "device": device,
        "tok": tok,
        "pairs": encode_pairs(tok, pairs, cfg.train.max_len),
        "src_vocab": tok.src_vocab_size,
        "tgt_vocab": tok.tgt_vocab_size,
        "test_src": test["src"].tolist(),
        "test_ref": test["tgt"].tolist(),
        "tokenize": bleu_tokenizer(target_language(prepared, cfg.data.tgt_lang)),
    }
    if device.type == "cuda":
        print(json.dumps({"device": str(device), "name": torch.cuda.get_device_name(device)}))
    beam = max(cfg.decode.beam_size, 2)
    for name, model_cfg in (("default", cfg.model), ("joey-arch", JOEY_ARCH)):
        for run in args.runs:
            model, precision = train_run(name, model_cfg, run, args, data)
            decode_runs(name, model, precision, data, beam)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
