"""Joey NMT 2.3 decoding speed, run by bench/decode_speed.py inside the Joey venv
(bench/.cache/joey-venv). Reads a JSON job (model architecture, source id lists, settings)
and prints one JSON line per setting. Not imported by the project."""

from __future__ import annotations

import json
import resource
import sys
import time
from types import SimpleNamespace

import torch
from joeynmt.batch import Batch
from joeynmt.model import build_model
from joeynmt.search import search
from joeynmt.vocabulary import Vocabulary

PAD, UNK, BOS, EOS = 1, 0, 2, 3  # Joey's default special ids


def _vocab(size: int) -> Vocabulary:
    specials = SimpleNamespace(
        unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        unk_id=UNK, pad_id=PAD, bos_id=BOS, eos_id=EOS, sep_token=None, lang_tags=[],
    )  # fmt: skip
    return Vocabulary([f"w{i}" for i in range(size - 4)], specials)


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        job = json.load(f)
    torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    vocab = _vocab(job["vocab_size"])
    model = build_model(job["joey_model"], src_vocab=vocab, trg_vocab=vocab).eval()
    # Our ids use pad 0 / unk 1; Joey pads with 1. Map both onto Joey's ids.
    remap = {0: PAD, 1: UNK}
    all_sources = [[remap.get(i, i) for i in s] for s in job["sources"]]
    for setting in job["settings"]:
        sources = all_sources
        if setting["batch_size"] == 1 and len(sources) > job["batch1_sentences"]:
            step = len(sources) // job["batch1_sentences"]
            sources = sources[::step][: job["batch1_sentences"]]
        order = sorted(range(len(sources)), key=lambda i: -len(sources[i]))
        tokens = hyp_tokens = 0
        start = time.perf_counter()
        for b in range(0, len(order), setting["batch_size"]):
            rows = [sources[i] for i in order[b : b + setting["batch_size"]]]
            width = max(map(len, rows))
            src = torch.full((len(rows), width), PAD, dtype=torch.long)
            for r, s in enumerate(rows):
                src[r, : len(s)] = torch.tensor(s)
            lengths = torch.tensor([len(s) for s in rows])
            batch = Batch(src, lengths, None, None, None, torch.arange(len(rows)),
                          torch.device("cpu"), PAD, EOS, is_train=False)  # fmt: skip
            max_len = int(width * job["max_len_ratio"])
            out, _, _ = search(
                model, batch, max_output_length=max_len, beam_size=setting["beam"],
                beam_alpha=1.0, n_best=1, min_output_length=max_len,  # equal lengths
            )  # fmt: skip
            tokens += int((out != PAD).sum()) if hasattr(out, "sum") else 0
            hyp_tokens += setting["beam"] * len(rows) * max_len  # every hypothesis runs max_len
        seconds = time.perf_counter() - start
        print(json.dumps({
            "system": "joeynmt-2.3.0", **setting, "sentences": len(sources),
            "seconds": round(seconds, 3), "sentences_per_s": round(len(sources) / seconds, 2),
            "tgt_tokens_per_s": round(tokens / seconds, 1), "tgt_tokens": tokens,
            "hyp_tokens": hyp_tokens,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
