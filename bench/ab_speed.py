"""Training and decoding speed of two checkouts, measured alternately in one run.

For a change that must not move speed (a refactor): each round times, in a fresh process
per checkout and side by side, the default model's training steps (``train_step``, the
step the loop takes) and its greedy and beam-5 decoding at batch 64, on the same synthetic
Bible-like pairs. Rounds alternate which checkout goes first, so a machine that speeds up
or slows down during the run hurts both alike. Prints one JSON line per measurement, then
one with the medians and the after/before ratios.

    .venv/bin/python bench/ab_speed.py --before /path/to/old/.venv/bin/python --rounds 5

``--before``/``--after`` are Python interpreters whose environment imports each
checkout's ``seq2seq_core`` (an editable install). The child code imports the modules
by their current paths and falls back to the flat layout before the folder move.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(int(sys.argv[1]))
seconds = float(sys.argv[2])
try:
    from seq2seq_core.data.batches import EncodedPairs, epoch_batches
    from seq2seq_core.decoding.beam_search import beam_search
    from seq2seq_core.decoding.greedy import greedy_decode
    from seq2seq_core.model.seq2seq import build_model
    from seq2seq_core.training.optim import build_optimizer
    from seq2seq_core.training.step import train_step
except ImportError:  # the flat layout before the move
    from seq2seq_core.batching import EncodedPairs, epoch_batches
    from seq2seq_core.beam_search import beam_search
    from seq2seq_core.decoding import greedy_decode
    from seq2seq_core.seq2seq import build_model
    from seq2seq_core.optim import build_optimizer
    from seq2seq_core.training import train_step
from seq2seq_core.config import ModelConfig, TrainConfig

VOCAB = 8000
g = torch.Generator().manual_seed(0)
n = 1200
tgt_len = (torch.randn(n, generator=g) * 14 + 35).clamp(3, 120).long()
src_len = (tgt_len * torch.empty(n).uniform_(0.85, 1.35, generator=g)).long().clamp(2, 128)
src = [torch.randint(4, VOCAB, (int(s),), generator=g).tolist() for s in src_len]
tgt = [torch.randint(4, VOCAB, (int(t),), generator=g).tolist() for t in tgt_len]
data = EncodedPairs(src, tgt, skipped_long=0, skipped_empty=0)
torch.manual_seed(0)
model = build_model(ModelConfig(dropout=0.0), VOCAB, VOCAB)
tc = TrainConfig()
optimizer = build_optimizer(list(model.parameters()), tc)
batches = epoch_batches(data, tc.batch_tokens, tc.seed, 1)
model.train()
for b in batches[:2]:  # warm-up
    train_step(model, optimizer, [b], teacher_forcing=1.0, lr=1e-4, tc=tc)
tokens, t0, i = 0, time.perf_counter(), 0
while time.perf_counter() - t0 < seconds:
    b = batches[i % len(batches)]
    losses, _ = train_step(model, optimizer, [b], teacher_forcing=1.0, lr=1e-4, tc=tc)
    losses[0].item()
    tokens += b.ntokens
    i += 1
train = tokens / (time.perf_counter() - t0)
model.eval()
with torch.no_grad():
    model.decoder.output_layer.bias[3] = -1e4  # no </s>: every sentence runs to its limit
sources = src[:128]
out = {"train_tgt_tokens_per_s": train}
for name, fn in (
    ("greedy_b64", lambda: [len(h) for h in greedy_decode(model, sources, batch_size=64,
                    max_len_ratio=1.5, max_len_extra=0).ids]),
    ("beam5_b64", lambda: [len(h[0].ids) for h in beam_search(model, sources[:64], beam_size=5,
                    batch_size=64, max_len_ratio=1.5, max_len_extra=0)]),
):
    fn()
    t0 = time.perf_counter()
    lens = fn()
    out[name + "_tokens_per_s"] = sum(lens) / (time.perf_counter() - t0)
print(json.dumps(out))
"""


def measure(python: str, threads: int, seconds: float) -> dict[str, float]:
    done = subprocess.run(
        [python, "-c", CHILD, str(threads), str(seconds)],
        capture_output=True, text=True, check=True, cwd="/",
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="python of the earlier checkout")
    parser.add_argument("--after", default=sys.executable, help="python of this checkout")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=15.0, help="timed training per run")
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    sides = {"before": args.before, "after": args.after}
    for r in range(args.rounds):
        order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
        for side in order:
            row = measure(sides[side], args.threads, args.seconds)
            results[side].append(row)
            print(
                json.dumps({"round": r, "side": side, **{k: round(v, 1) for k, v in row.items()}})
            )
    summary: dict[str, object] = {"rounds": args.rounds, "threads": args.threads}
    for key in results["before"][0]:
        before = statistics.median(row[key] for row in results["before"])
        after = statistics.median(row[key] for row in results["after"])
        summary[key] = {"before": round(before, 1), "after": round(after, 1),
                        "after_over_before": round(after / before, 3)}  # fmt: skip
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
