import pytest

from seq2seq_core.evaluation.metrics import (
    bleu_by_length,
    bleu_tokenizer,
    eval_set_digest,
    metrics_markdown,
    score_translations,
)

REFS = ["the cat sat on the mat .", "god created the heavens and the earth ."]


def test_perfect_hypotheses_score_100_with_signatures() -> None:
    scores = score_translations(list(REFS), REFS)
    assert scores["bleu"] == pytest.approx(100.0)
    assert scores["chrf"] == pytest.approx(100.0)
    assert scores["ter"] == pytest.approx(0.0)
    assert scores["signatures"]["bleu"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert scores["signatures"]["chrf"].startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0")


def test_pinned_scores_on_a_fixed_pair() -> None:
    hyps = ["the cat sat on a mat .", "god made the heaven and earth ."]
    scores = score_translations(hyps, REFS)
    # Pinned from sacrebleu 2.x; a change means the metric configuration changed.
    assert scores["bleu"] == pytest.approx(28.0045, abs=1e-3)
    assert scores["chrf"] == pytest.approx(51.0727, abs=1e-3)
    assert scores["ter"] == pytest.approx(26.6667, abs=1e-3)


def test_length_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="1 hypotheses but 2 references"):
        score_translations(["x"], REFS)


def test_eval_set_digest_depends_on_content_and_order() -> None:
    a = eval_set_digest(["a", "b"], ["x", "y"])
    assert a == eval_set_digest(["a", "b"], ["x", "y"])
    assert a != eval_set_digest(["b", "a"], ["y", "x"])
    assert a != eval_set_digest(["a", "b"], ["x", "z"])


def test_chinese_targets_use_the_zh_tokenizer() -> None:
    assert bleu_tokenizer("zh") == "zh" and bleu_tokenizer("en") == "13a"
    assert bleu_tokenizer(None) == "13a" and bleu_tokenizer("ja") == "char"
    refs, hyps = ["起初神创造天地。"], ["起初神创造了天地。"]
    zh = score_translations(hyps, refs, tokenize="zh")
    assert "tok:zh" in zh["signatures"]["bleu"]
    # Without spaces 13a sees one token per sentence: the near-miss would score 0.
    assert zh["bleu"] > 40 and score_translations(hyps, refs)["bleu"] == 0.0


def test_bleu_by_length_buckets() -> None:
    sources = ["a b", "a b c", " ".join("w" * 1 for _ in range(12)), " ".join(["x"] * 70)]
    refs = ["one two three four", "five six seven eight", "nine ten eleven twelve", "a b c d"]
    hyps = [refs[0], "nothing in common here", refs[2], refs[3]]
    rows = bleu_by_length(sources, hyps, refs, width=10)
    assert [(r["bucket"], r["sentences"]) for r in rows] == [("1-10", 2), ("11-20", 1), ("51+", 1)]
    assert rows[1]["bleu"] == pytest.approx(100.0) and rows[2]["bleu"] == pytest.approx(100.0)
    assert 0.0 < rows[0]["bleu"] < 100.0


def test_metrics_markdown_lists_systems_with_signatures() -> None:
    entry = {**score_translations(list(REFS), REFS), "test_set_sha256": "ab" * 32}
    text = metrics_markdown({"test": entry, "test_greedy": entry, "note": "x"})
    assert text.count("| 100.00 | 100.00 | 0.00 |") == 2
    # Pipes inside a cell are escaped, or the signature would split the table.
    assert "`nrefs:1\\|case:mixed\\|eff:no\\|tok:13a" in text and "ab" * 32 in text
