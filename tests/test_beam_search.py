"""Beam search: greedy at beam 1, GNMT scores, n-best, repeat blocking, batching."""

import itertools

import pytest
import torch

from seq2seq_core.beam_search import beam_search, length_penalty
from seq2seq_core.config import ModelConfig
from seq2seq_core.decoding import greedy_decode
from seq2seq_core.seq2seq import EOS_ID, build_model

VARIANTS = [
    ModelConfig(
        cell=c,
        attention=a,
        input_feeding=f,
        emb_size=8,
        hidden_size=16,
        dropout=0.0,
        tie_embeddings="none",
    )
    for c, a, f in itertools.product(("gru", "lstm"), ("none", "bahdanau", "luong"), (0, 1))
    if not (f and a == "none")
]
KW = {"max_len_ratio": 1.5, "max_len_extra": 3, "device": "cpu"}


def _sources(n: int = 11) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    lens = torch.randint(1, 12, (n,), generator=g).tolist()
    return [torch.randint(4, 30, (k,), generator=g).tolist() for k in lens]


def _model(cfg: ModelConfig, eos_bias: float = 0.5) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(cfg, 30, 30)
    with torch.no_grad():  # some sentences stop early, others run to the length limit
        model.decoder.output_layer.bias[EOS_ID] += eos_bias
    return model.eval()


@pytest.mark.parametrize(
    "cfg", VARIANTS, ids=lambda c: f"{c.cell}-{c.attention}{'-feed' if c.input_feeding else ''}"
)
def test_beam_one_is_exactly_greedy(cfg: ModelConfig) -> None:
    model, sources = _model(cfg), _sources()
    greedy = greedy_decode(model, sources, batch_size=4, **KW).ids
    beam = beam_search(model, sources, beam_size=1, batch_size=4, **KW)
    assert [h[0].ids for h in beam] == greedy


def test_scores_are_log_prob_over_the_gnmt_penalty_and_sorted() -> None:
    model, sources = _model(VARIANTS[1]), _sources()
    for alpha in (0.0, 0.6, 1.0):
        found = beam_search(
            model, sources, beam_size=4, nbest=4, batch_size=3, length_penalty_alpha=alpha, **KW
        )
        for hyps in found:
            assert len(hyps) == 4
            assert len({tuple(h.ids) for h in hyps}) == 4  # distinct
            assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
            for h in hyps:
                assert h.steps in (len(h.ids), len(h.ids) + 1)  # + 1 when </s> was emitted
                assert h.score == pytest.approx(h.log_prob / length_penalty(h.steps, alpha))
    assert length_penalty(1, 1.0) == 1.0 and length_penalty(7, 1.0) == 2.0
    assert length_penalty(7, 0.0) == 1.0


def test_beam_finds_higher_probability_than_greedy() -> None:
    model, sources = _model(VARIANTS[3], eos_bias=-1.0), _sources()
    greedy = beam_search(model, sources, beam_size=1, batch_size=11, length_penalty_alpha=0, **KW)
    beam = beam_search(model, sources, beam_size=5, batch_size=11, length_penalty_alpha=0, **KW)
    pairs = [(g[0].log_prob, b[0].log_prob) for g, b in zip(greedy, beam, strict=True)]
    assert all(b >= g - 1e-4 for g, b in pairs)
    assert any(b > g + 1e-3 for g, b in pairs)


def test_batched_beam_equals_one_by_one_and_respects_limits() -> None:
    model, sources = _model(VARIANTS[5]), _sources()
    batched = beam_search(model, sources, beam_size=3, nbest=2, batch_size=4, **KW)
    single = [beam_search(model, [s], beam_size=3, nbest=2, batch_size=1, **KW)[0] for s in sources]
    assert [[h.ids for h in hs] for hs in batched] == [[h.ids for h in hs] for hs in single]
    for src, hyps in zip(sources, batched, strict=True):
        assert all(len(h.ids) <= int(1.5 * len(src) + 3) and EOS_ID not in h.ids for h in hyps)


def test_no_repeat_ngram_blocks_repeats() -> None:
    model = _model(VARIANTS[0], eos_bias=-5.0)  # long outputs, many repeats without blocking
    sources = _sources()
    free = beam_search(model, sources, beam_size=3, batch_size=11, **KW)
    blocked = beam_search(model, sources, beam_size=3, batch_size=11, no_repeat_ngram=2, **KW)

    def repeats(ids: list[int]) -> int:
        bigrams = list(itertools.pairwise(ids))
        return len(bigrams) - len(set(bigrams))

    assert sum(repeats(h[0].ids) for h in free) > 0
    assert all(repeats(h[0].ids) == 0 for h in blocked)


def test_empty_source_and_bad_nbest() -> None:
    model = _model(VARIANTS[0])
    found = beam_search(model, [[], [5, 6]], beam_size=2, batch_size=2, **KW)
    assert found[0][0].ids == [] and len(found) == 2
    with pytest.raises(ValueError, match="nbest"):
        beam_search(model, [[5]], beam_size=2, nbest=3, batch_size=1, **KW)


def test_bf16_decoding_keeps_beam_one_equal_to_greedy_and_rejects_other_precisions() -> None:
    model, sources = _model(VARIANTS[-1]), _sources()
    greedy = greedy_decode(model, sources, batch_size=4, precision="bf16", **KW).ids
    beam = beam_search(model, sources, beam_size=1, batch_size=4, precision="bf16", **KW)
    assert [h[0].ids for h in beam] == greedy
    assert all(0 <= t < 30 for ids in greedy for t in ids)
    with pytest.raises(ValueError, match="fp16"):
        greedy_decode(model, sources, batch_size=4, precision="fp16", **KW)
