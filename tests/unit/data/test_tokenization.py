"""SentencePiece tokenizers of `seq2seq_core.data.tokenization`: train, save, load, round trip."""

from __future__ import annotations

import itertools
import json
import pickle
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from seq2seq_core.config import DataConfig, VocabConfig
from seq2seq_core.data import tokenization
from seq2seq_core.data.prepare import clean_text, read_pairs
from seq2seq_core.data.tokenization import SubwordTokenizer, TokenizerError
from seq2seq_core.special_tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID

# Coverage 1.0 so that every training character round-trips; the 400 Chinese verses alone
# hold ~1,000 distinct characters, and SentencePiece needs a piece for each.
SMALL = VocabConfig(size=1600, character_coverage=1.0, max_sentences=5_000)


def bible(codes: str, n: int = 400) -> tuple[list[str], list[str]]:
    """The first `n` verse pairs of two Bible editions, cleaned as the ingest stage does."""
    rows = itertools.islice(read_pairs(f"bible:{codes}", DataConfig()), n)
    pairs = [(clean_text(s), clean_text(t)) for _, s, t, _ in rows]
    return [s for s, _ in pairs], [t for _, t in pairs]


@pytest.fixture(scope="module")
def corpora() -> dict[str, tuple[list[str], list[str]]]:
    return {lang: bible(codes) for lang, codes in (("de", "e-4"), ("fr", "l-4"), ("zh", "c-4"))}


@pytest.fixture(scope="module")
def joint(corpora, tmp_path_factory) -> SubwordTokenizer:
    src = [s for lang in ("de", "fr", "zh") for s in corpora[lang][0]]
    return SubwordTokenizer.train(src, corpora["de"][1], SMALL, tmp_path_factory.mktemp("joint"))


def test_special_ids_are_fixed(joint):
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    assert joint.id_to_piece([0, 1, 2, 3]) == ["<pad>", "<unk>", "<s>", "</s>"]


@pytest.mark.parametrize("lang", ["de", "fr", "zh"])
def test_round_trip(joint, corpora, lang):
    src, tgt = corpora[lang]
    ids = joint.encode_src(src)
    assert all(i > EOS_ID for seq in ids for i in seq)  # no bos/eos/pad/unk inside
    assert joint.decode_src(ids) == src
    assert joint.decode_tgt(joint.encode_tgt(tgt)) == tgt


def test_vocab_size_and_subwords(joint, corpora):
    assert joint.src_vocab_size == joint.tgt_vocab_size == 1600
    ids = joint.encode_src(corpora["de"][0][:50])
    chars = sum(len(s) for s in corpora["de"][0][:50])
    assert sum(map(len, ids)) < chars / 2  # subwords, not characters


def test_unseen_characters_map_to_unk(joint):
    assert UNK_ID in joint.encode_tgt(["Ωμέγα ☃"])[0]


def test_decode_stops_at_eos_and_skips_pad_and_bos(joint):
    ids = joint.encode_tgt(["In the beginning God created."])[0]
    assert joint.decode_tgt([[BOS_ID, *ids, EOS_ID, *ids, PAD_ID], [PAD_ID, EOS_ID], []]) == [
        "In the beginning God created.",
        "",
        "",
    ]


def test_save_and_load(joint):
    files = joint.files()
    assert [p.name for p in files] == ["tokenizer.json", "spm.model"]
    assert all(p.is_file() for p in files)
    manifest = json.loads(files[0].read_text(encoding="utf-8"))
    assert manifest["model_type"] == "unigram" and manifest["joint"] is True
    assert manifest["special_ids"] == {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
    loaded = SubwordTokenizer.load(joint.out_dir)
    assert loaded.joint and loaded.src_vocab_size == joint.src_vocab_size
    text = ["Und Gott sprach: Es werde Licht!"]
    assert loaded.encode_src(text) == joint.encode_src(text)
    clone = pickle.loads(pickle.dumps(loaded))
    assert clone.encode_tgt(text) == joint.encode_tgt(text)


def test_separate_bpe_models(corpora, tmp_path):
    src, tgt = corpora["zh"]
    cfg = replace(SMALL, joint=False, model_type="bpe", size=1200)
    tok = SubwordTokenizer.train(src, tgt, cfg, tmp_path)
    assert not tok.joint
    assert [p.name for p in tok.files()] == ["tokenizer.json", "src.model", "tgt.model"]
    assert tok.src_vocab_size == 1200 and tok.tgt_vocab_size == 1200
    assert tok.decode_src(tok.encode_src(src)) == src
    loaded = SubwordTokenizer.load(tmp_path)
    assert loaded.decode_tgt(loaded.encode_tgt(tgt)) == tgt
    # Retraining as joint replaces the two models instead of leaving them behind.
    SubwordTokenizer.train(src, tgt, SMALL, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spm.model", "tokenizer.json"]


def test_training_is_deterministic_with_sampling(corpora, tmp_path):
    src, tgt = corpora["fr"]
    cfg = replace(SMALL, max_sentences=300)
    a = SubwordTokenizer.train(src, tgt, cfg, tmp_path / "a")
    b = SubwordTokenizer.train(src, tgt, cfg, tmp_path / "b")
    assert (tmp_path / "a" / "spm.model").read_bytes() == (
        tmp_path / "b" / "spm.model"
    ).read_bytes()
    assert a.settings["trained_on"] == {"src_sentences": 400, "tgt_sentences": 400}
    assert tokenization._sample(["a", "", "b", "c"], 2) == tokenization._sample(
        ["a", "", "b", "c"], 2
    )
    assert len(tokenization._sample([str(i) for i in range(100)], 10)) == 10
    assert a.encode_src(src[:3]) == b.encode_src(src[:3])


def test_tiny_corpus_still_trains(tmp_path):
    tok = SubwordTokenizer.train(
        ["Hallo Welt."], ["Hello world."], VocabConfig(size=8000), tmp_path
    )
    assert 4 < tok.src_vocab_size < 8000
    assert tok.decode_tgt(tok.encode_tgt(["Hello world."])) == ["Hello world."]


def test_no_training_text(tmp_path):
    with pytest.raises(TokenizerError, match="no non-empty joint sentences"):
        SubwordTokenizer.train(["", ""], [""], VocabConfig(), tmp_path)
    assert not (tmp_path / "tokenizer.json").exists()


def test_load_missing(tmp_path):
    with pytest.raises(TokenizerError) as exc:
        SubwordTokenizer.load(tmp_path / "vocab")
    assert str(exc.value).startswith(f"{tmp_path / 'vocab'}: no tokenizer here")
    assert "run the vocab stage" in str(exc.value)


def test_load_with_missing_model_file(joint, tmp_path):
    (tmp_path / "tokenizer.json").write_bytes(joint.files()[0].read_bytes())
    with pytest.raises(TokenizerError, match=r"spm\.model: model file missing"):
        SubwordTokenizer.load(Path(tmp_path))


def counted(kind: str, **kw) -> SimpleNamespace:
    # `vocab.kind` / `vocab.min_freq` are read with getattr until config.py has them.
    return SimpleNamespace(**{**asdict(VocabConfig(size=50)), "kind": kind, **kw})


def test_word_vocabulary(tmp_path):
    src = ["der Hund", "der Hund bellt", "die Katze"]
    tgt = ["the dog", "the dog barks", "the cat"]
    tok = SubwordTokenizer.train(src, tgt, counted("word", joint=False, min_freq=2), tmp_path)
    assert tok.kind == "word"
    assert tok.id_to_piece(list(range(tok.src_vocab_size)), side="src") == [
        "<pad>",
        "<unk>",
        "<s>",
        "</s>",
        "Hund",
        "der",
    ]
    assert tok.encode_src(["der Hund schläft"]) == [[5, 4, UNK_ID]]
    assert tok.decode_tgt(tok.encode_tgt(["the dog", "the cat"])) == ["the dog", "the <unk>"]
    loaded = SubwordTokenizer.load(tmp_path)
    assert [p.name for p in loaded.files()] == ["tokenizer.json", "src.json", "tgt.json"]
    assert loaded.encode_tgt(["the dog"]) == tok.encode_tgt(["the dog"])


def test_char_vocabulary_round_trips_chinese(tmp_path):
    texts = ["起初， 神创造天地。", "地是空虚混沌。"]
    tok = SubwordTokenizer.train(texts, ["In the beginning."], counted("char"), tmp_path)
    assert tok.joint and tok.kind == "char"
    assert tok.decode_src(tok.encode_src(texts)) == texts
    assert tok.encode_src(["地"]) == tok.encode_tgt(["地"])
    assert pickle.loads(pickle.dumps(tok)).joint
    assert SubwordTokenizer.load(tmp_path).decode_tgt(tok.encode_tgt(["In"])) == ["In"]


def test_unknown_kind(tmp_path):
    with pytest.raises(TokenizerError, match=r"vocab\.kind: 'bytes' is not one of"):
        SubwordTokenizer.train(["a"], ["b"], counted("bytes"), tmp_path)


def test_coverage_counts_unknown_tokens(tmp_path):
    tok = SubwordTokenizer.train(["a b", "a"], ["x y"], counted("word", joint=False), tmp_path)
    assert tok.coverage(["a b c d", ""], ["x"]) == {
        "src_unk_rate": 0.5,
        "src_tokens_per_sentence": 2.0,
        "tgt_unk_rate": 0.0,
        "tgt_tokens_per_sentence": 1.0,
    }


@pytest.mark.parametrize(
    ("kind", "model_type", "joint"),
    [
        ("sentencepiece", "unigram", True),
        ("sentencepiece", "bpe", False),
        ("word", "unigram", True),
        ("char", "unigram", False),
    ],
)
def test_every_kind_round_trips_german_french_chinese(corpora, tmp_path, kind, model_type, joint):
    src = [s for lang in ("de", "fr", "zh") for s in corpora[lang][0][:150]]
    tgt = [t for lang in ("de", "fr", "zh") for t in corpora[lang][1][:150]]
    # Coverage 1.0: every character of the training text is in the vocabulary.
    cfg = VocabConfig(
        kind=kind, model_type=model_type, joint=joint, size=20_000, character_coverage=1.0
    )
    tok = SubwordTokenizer.train(src, tgt, cfg, tmp_path)
    assert tok.id_to_piece([PAD_ID, UNK_ID, BOS_ID, EOS_ID], side="src")[0] == "<pad>"
    for lang in ("de", "fr", "zh"):
        texts = corpora[lang][0][:150]
        ids = tok.encode_src(texts)
        assert UNK_ID not in {i for seq in ids for i in seq}, lang  # all seen in training
        assert tok.decode_src(ids) == texts, lang
    loaded = SubwordTokenizer.load(tmp_path)
    assert loaded.settings["kind"] == kind and loaded.settings["joint"] == joint
    assert loaded.encode_src(src[:5]) == tok.encode_src(src[:5])


def test_counted_vocabulary_max_size_and_min_freq(tmp_path):
    texts = ["a a a b b c", "a b d"]
    cfg = VocabConfig(kind="word", size=100, max_size=6, min_freq=1)
    tok = SubwordTokenizer.train(texts, texts, cfg, tmp_path)
    assert tok.id_to_piece(list(range(tok.src_vocab_size)), side="src")[4:] == ["a", "b"]
    assert tok.settings["max_size"] == 6
    cfg = VocabConfig(kind="char", size=100, min_freq=2, joint=False)
    tok = SubwordTokenizer.train(["起初起初天"], ["ab a"], cfg, tmp_path / "c")
    assert tok.id_to_piece(list(range(tok.src_vocab_size)), side="src")[4:] == ["初", "起"]
