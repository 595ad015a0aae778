import pytest

from seq2seq_core.evaluation import eval_set_digest, score_translations

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
