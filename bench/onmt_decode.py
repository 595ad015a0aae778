"""OpenNMT-py 3.5.1 decoding speed, run by bench/decode_speed.py inside the OpenNMT-py venv
(bench/.cache/onmt-venv). Reads a JSON job (OpenNMT-py model options per architecture, from
onmt_common.model_options; source id lists; settings) and prints one JSON line per
(architecture, setting).

The model is randomly initialised and decoded by OpenNMT-py's own Translator: greedy is its
GreedySearch with top-k 1 (argmax), beam its BeamSearch. `</s>` is held back by min_length
= max_length (as bench/joey_decode.py does), so every hypothesis runs to 1.5 x the longest
source of its batch. Not imported by the project."""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import onmt_train  # noqa: F401  (its spacy/fasttext stubs and torch.load allow-list)
import pyonmttok
import torch
import yaml
from onmt.model_builder import build_base_model
from onmt.opts import train_opts
from onmt.translate import GNMTGlobalScorer
from onmt.translate.translator import Translator
from onmt.utils.parse import ArgumentParser
from onmt_common import ONMT_SYSTEM, batch1_subset, onmt_ids

SPECIALS = ["<unk>", "<blank>", "<s>", "</s>"]  # OpenNMT-py's order: ids 0..3
PAD = 1


def build_model(options: dict, vocab_size: int) -> tuple[torch.nn.Module, dict]:
    """OpenNMT-py's own model builder on `options`, parsed and validated as onmt_train
    would (a YAML config, so every other option keeps its OpenNMT-py default)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(options, f)
    parser = ArgumentParser()
    train_opts(parser)
    opt = parser.parse_args(["-config", f.name, "-src_vocab", "unused", "-data", "{}"])
    Path(f.name).unlink()
    ArgumentParser.update_model_opts(opt)
    ArgumentParser.validate_model_opts(opt)
    tokens = [f"w{i}" for i in range(vocab_size - len(SPECIALS))]
    vocab = pyonmttok.build_vocab_from_tokens(tokens, special_tokens=SPECIALS)
    vocabs = {"src": vocab, "tgt": vocab, "decoder_start_token": "<s>"}
    model = build_base_model(opt, vocabs)
    for p in model.parameters():  # OpenNMT-py's default param_init
        p.data.uniform_(-opt.param_init, opt.param_init)
    return model.eval(), vocabs


def decode(translator: Translator, rows: list[list[int]], beam: int, ratio: float) -> int:
    """One batch through OpenNMT-py's search; returns the target tokens produced."""
    width = max(map(len, rows))
    src = torch.full((len(rows), width, 1), PAD, dtype=torch.long)  # (B, S, feats)
    for r, s in enumerate(rows):
        src[r, : len(s), 0] = torch.tensor(s)
    batch = {"src": src, "srclen": torch.tensor([len(s) for s in rows]),
             "ind_in_bucket": torch.arange(len(rows))}  # fmt: skip
    max_len = int(width * ratio)
    translator.max_length = translator.min_length = max_len  # `</s>` never wins
    translator.max_length_ratio = 0  # the limit above, not OpenNMT-py's ratio + 5
    translator.beam_size = beam
    translator.sample_from_topk = 1 if beam == 1 else 0  # GreedySearch (argmax) : BeamSearch
    out = translator.translate_batch(batch, attn_debug=False)
    return sum(len(hyps[0]) for hyps in out["predictions"])


def run_setting(model, vocabs: dict, arch: str, all_sources: list[list[int]], setting: dict,
                job: dict) -> dict:  # fmt: skip
    """Decode the setting's sources, longest first, in batches of its size."""
    scorer = GNMTGlobalScorer(alpha=0.0, beta=0.0, length_penalty="none", coverage_penalty="none")
    translator = Translator(model, vocabs, global_scorer=scorer, report_score=False)
    sources = all_sources
    if setting["batch_size"] == 1:
        sources = batch1_subset(all_sources, job["batch1_sentences"])
    order = sorted(range(len(sources)), key=lambda i: -len(sources[i]))
    tokens = 0
    start = time.perf_counter()
    with torch.no_grad():
        for b in range(0, len(order), setting["batch_size"]):
            rows = [sources[i] for i in order[b : b + setting["batch_size"]]]
            tokens += decode(translator, rows, setting["beam"], job["max_len_ratio"])
    seconds = time.perf_counter() - start
    return {
        "system": f"{ONMT_SYSTEM}:{arch}", **setting, "sentences": len(sources),
        "seconds": round(seconds, 3), "sentences_per_s": round(len(sources) / seconds, 2),
        "tgt_tokens_per_s": round(tokens / seconds, 1), "tgt_tokens": tokens,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }  # fmt: skip


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        job = json.load(f)
    torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    all_sources = [onmt_ids(s) for s in job["sources"]]
    for arch, options in job["archs"].items():
        model, vocabs = build_model(options, job["vocab_size"])
        for setting in job["settings"]:
            row = run_setting(model, vocabs, arch, all_sources, setting, job)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
