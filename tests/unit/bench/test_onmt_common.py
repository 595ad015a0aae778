"""bench/onmt_common.py: our architecture as OpenNMT-py options, the data it reads and the
numbers read back from its logs. The pure parts need no OpenNMT-py; the last test runs
OpenNMT-py itself for one budgeted step and is skipped until `make onmt-venv` built it."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from seq2seq_core.config import ModelConfig

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "bench"))

import onmt_common as oc  # noqa: E402


def options(**overrides) -> dict:
    return oc.model_options(**dataclasses.asdict(dataclasses.replace(ModelConfig(), **overrides)))


def test_default_model_is_a_bigru_with_general_attention_and_tied_output() -> None:
    assert options() == {
        "encoder_type": "brnn", "decoder_type": "rnn", "rnn_type": "GRU",
        "enc_layers": 1, "dec_layers": 1, "enc_hid_size": 256, "dec_hid_size": 256,
        "word_vec_size": 256, "global_attention": "general", "input_feed": 0,
        "bridge": False, "dropout": [0.1], "share_decoder_embeddings": True,
        "share_embeddings": False,
    }  # fmt: skip


def test_joeys_architecture_is_mlp_attention_with_input_feeding() -> None:
    got = options(cell="lstm", hidden_size=512, attention="bahdanau", input_feeding=True,
                  tie_embeddings="none", bidirectional=False)  # fmt: skip
    assert (got["rnn_type"], got["global_attention"], got["input_feed"]) == ("LSTM", "mlp", 1)
    assert (got["encoder_type"], got["dec_hid_size"]) == ("rnn", 512)
    assert not got["share_decoder_embeddings"]


def test_luong_dot_and_full_tying_map_to_their_onmt_names() -> None:
    got = options(luong_score="dot", tie_embeddings="all")
    assert got["global_attention"] == "dot"
    assert got["share_embeddings"] and got["share_decoder_embeddings"]


@pytest.mark.parametrize(
    ("override", "named"), [({"context": "mean"}, "model.context"),
                            ({"attention": "none"}, "model.attention")],
)  # fmt: skip
def test_options_onmt_lacks_are_refused_by_name(override: dict, named: str) -> None:
    with pytest.raises(oc.UnsupportedArchitecture, match=named):
        options(**override)


def test_config_merges_data_model_and_our_optimiser(tmp_path: Path) -> None:
    train = oc.our_train_options(0.003, 3000, 0.1, 1.0)
    cfg = oc.onmt_config(tmp_path / "d", tmp_path / "m", options(tie_embeddings="all"),
                         train=train, train_steps=7)  # fmt: skip
    assert cfg["data"]["corpus_1"]["path_src"] == str(tmp_path / "d" / "train.de")
    assert cfg["data"]["valid"]["path_tgt"] == str(tmp_path / "d" / "dev.en")
    assert (cfg["optim"], cfg["batch_type"], cfg["batch_size"]) == ("adam", "tokens", 3000)
    assert (cfg["label_smoothing"], cfg["max_grad_norm"]) == (0.1, 1.0)
    assert (cfg["train_steps"], cfg["save_checkpoint_steps"]) == (7, 7)
    assert cfg["share_vocab"]  # tie_embeddings: all needs OpenNMT-py's joint vocabulary
    assert cfg["src_seq_length"] == cfg["tgt_seq_length"] == 128


def test_pieces_and_vocab_files() -> None:
    assert oc.pieces_lines([["▁Im", "▁Anfang"], [], ["."]]) == "▁Im ▁Anfang\n\n.\n"
    assert oc.vocab_lines(["<pad>", "<unk>", "<s>", "</s>", "▁the", ","]) == "▁the\n,\n"


def test_our_special_ids_become_onmts() -> None:
    assert oc.onmt_ids([0, 1, 2, 3, 4, 7999]) == [1, 0, 2, 3, 4, 7999]


def test_batch1_subset_is_decode_speeds_own() -> None:
    from decode_speed import BATCH1_SENTENCES, sources_for

    sources = [[i] for i in range(595)]
    ours = sources_for(sources, {"batch_size": 1, "beam": 1})
    assert oc.batch1_subset(sources, BATCH1_SENTENCES) == ours
    assert len(ours) == BATCH1_SENTENCES and ours[1] == [5]


LOG = """[2026-12-05 23:03:12,996 INFO] Step 20/1000000; acc: 5.3; ppl: 1158.4; xent: 7.1; \
lr: 0.00300; sents:    1677; bsz: 2443/2483/84; 2277/2315 tok/s;     21 sec;
[2026-12-05 23:03:30,704 INFO] Step 40/1000000; acc: 8.9; ppl: 682.6; xent: 6.5; lr: 0.00300; \
sents:    1620; bsz: 2562/2584/81; 2894/2918 tok/s;     39 sec;
[2026-12-05 23:03:50,704 INFO] Step 60; acc: 9.9; ppl: 582.6; xent: 6.3; lr: 0.00300; \
sents:    1620; bsz: 2562/2584/81; 2994/3018 tok/s;     59 sec;
{"onmt_train": "budget", "steps": 61, "tgt_tokens_per_s": 2950.0, "checkpoint": "m_step_61.pt"}
"""


def test_log_figures_are_the_target_side_after_the_skipped_windows() -> None:
    assert oc.parse_tokens_per_s(LOG, skip=1) == (2918 + 3018) / 2
    assert oc.parse_tokens_per_s(LOG, skip=5) == round((2315 + 2918 + 3018) / 3, 1)
    assert oc.last_step(LOG) == 60
    assert [r["steps"] for r in oc.result_lines(LOG)] == [61]
    assert oc.parse_tokens_per_s("no report") is None and oc.result_lines("") == []


def test_speed_ratios_pair_rows_by_arch_and_setting() -> None:
    ours = [
        {
            "system": "ours:default",
            "beam": 5,
            "batch_size": 64,
            "tgt_tokens_per_s": 300.0,
            "precision": "int8",
        },
        {"system": "ours:joey-arch", "beam": 1, "batch_size": 1, "tgt_tokens_per_s": 50.0},
    ]
    peer = [{"system": "opennmt-py-3.5.1:default", "beam": 5, "batch_size": 64,
             "tgt_tokens_per_s": 100.0},
            {"system": "opennmt-py-3.5.1:default", "beam": 1, "batch_size": 1,
             "tgt_tokens_per_s": 10.0}]  # fmt: skip
    assert oc.speed_ratios(ours, peer) == {"default_beam5_batch64_int8": 3.0}


@pytest.mark.skipif(not oc.ONMT_PYTHON.exists(), reason="no OpenNMT-py venv: make onmt-venv")
def test_onmt_trains_one_budgeted_step_and_saves_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    pairs = [("▁ein ▁Haus", "▁a ▁house"), ("▁das ▁Haus ▁ist ▁gut", "▁the ▁house ▁is ▁good")] * 8
    for name in ("train", "dev"):
        (data / f"{name}.de").write_text(oc.pieces_lines([s.split() for s, _ in pairs]))
        (data / f"{name}.en").write_text(oc.pieces_lines([t.split() for _, t in pairs]))
    words = sorted({w for pair in pairs for side in pair for w in side.split()})
    (data / "vocab.txt").write_text(oc.vocab_lines(words))
    model = options(emb_size=16, hidden_size=16, tie_embeddings="none")
    cfg = oc.onmt_config(data, tmp_path / "model", model,
                         train=oc.our_train_options(0.003, 64, 0.1, 1.0))  # fmt: skip
    first, row = oc.run_training(cfg, tmp_path / "cfg.yaml", [0.001, 0.002], threads=1)
    assert row["onmt_train"] == "budget", row
    # each budget saves after the step that crossed it; the last one ends the run
    assert (first["steps"], row["steps"]) == (1, 2)
    assert Path(first["checkpoint"]).exists() and Path(row["checkpoint"]).exists()
    saved = yaml.safe_load((tmp_path / "cfg.yaml").read_text())
    assert saved["global_attention"] == "general"
    out = tmp_path / "hyp.txt"
    proc = subprocess.run(
        [str(oc.ONMT_PYTHON), str(REPO / "bench" / "onmt_train.py"), "translate",
         row["checkpoint"], str(data / "dev.de"), str(out), "2", "1"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-800:]
    assert len(out.read_text().splitlines()) == len(pairs)
    json.dumps(row)  # one JSON line, as the benchmarks print it
