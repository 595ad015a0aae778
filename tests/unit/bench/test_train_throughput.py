"""bench/train_throughput.py's FLOP count per component and its figures against the limit:
the issue's count for Joey's architecture, and a peer's line built from ours."""

from __future__ import annotations

import dataclasses
import importlib
import sys
from pathlib import Path

import pytest
import torch

from seq2seq_core.config import ModelConfig
from seq2seq_core.data.batches import Batch

BENCH = Path(__file__).resolve().parents[3] / "bench"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("train_throughput")
    finally:
        sys.path.remove(str(BENCH))


def _one_sentence(src_len: int, tgt_len: int) -> Batch:
    tgt = torch.full((1, tgt_len), 5)
    return Batch(src=torch.full((1, src_len), 5), src_len=torch.tensor([src_len]),
                 tgt_in=tgt, tgt_out=tgt, ntokens=tgt_len, indices=[0])  # fmt: skip


def test_joeys_architecture_per_target_token(bench) -> None:
    """Issue 26: decoder LSTM with input feeding 2.6M multiply-adds per target token,
    attentional vector 0.5M, output layer 4.1M (8k vocabulary); backward is twice forward,
    2 FLOPs per multiply-add."""
    model_over, _ = bench.CONFIGS["joey_if"]
    cfg = dataclasses.replace(ModelConfig(), **model_over)
    flops = bench.step_flops(cfg, _one_sentence(src_len=1, tgt_len=1))
    macs = {name: n / 6 for name, n in flops.items()}
    assert macs["decoder_cell"] == 4 * 512 * (256 + 512 + 512)  # 2.62M
    assert macs["attentional_vector"] == 2 * 512 * 512  # 0.52M
    assert macs["output_layer"] == 512 * 8000  # 4.10M
    # BiLSTM 2 x 256 over 256-d embeddings, per source token
    assert macs["encoder"] == 2 * 4 * 256 * (256 + 256)
    # key and query projections, one score and one context product per (t, s) pair
    assert macs["attention"] == 512 * 512 + 512 * 512 + 2 * 512
    longer = bench.step_flops(cfg, _one_sentence(src_len=10, tgt_len=1))
    assert longer["attention"] - flops["attention"] == 6 * 9 * (512 * 512 + 2 * 512)


def test_figures_against_the_limit_and_a_peer(bench) -> None:
    figures = bench.against_limit(tokens_per_s=1000.0, flop_per_token=50e6, peak_gflops=100.0)
    assert figures == {"tgt_tokens_per_s": 1000.0, "limit_tgt_tokens_per_s": 2000.0,
                       "peak_fraction": 0.5}  # fmt: skip
    ours = {
        "joey_if": {"tgt_tokens_per_s": 1000.0, "mflop_per_tgt_token": 50.0,
                    "mm_peak_gflop_s": 100.0},
        "joey_if_compiled": {"tgt_tokens_per_s": 1200.0, "mflop_per_tgt_token": 50.0,
                             "mm_peak_gflop_s": 100.0},
        "joey_noif": {"tgt_tokens_per_s": 3000.0, "mflop_per_tgt_token": 40.0,
                      "mm_peak_gflop_s": 100.0},
    }  # fmt: skip
    peers = [{"system": "joeynmt-2.3.0", "config": "joey_if", "tgt_tokens_per_s": 400.0}]
    lines = bench.versus_peers(ours, peers, peak_gflops=80.0)
    assert [line["ours_config"] for line in lines] == ["joey_if", "joey_if_compiled"]
    assert [line["ratio"] for line in lines] == [2.5, 3.0]
    assert lines[0]["peer"]["peak_fraction"] == 0.25  # 400 of 80e9 / 50e6 = 1600
