"""Beam search: greedy at beam 1, GNMT scores, n-best, repeat blocking, batching."""

from __future__ import annotations

import itertools

import pytest
import torch

from seq2seq_core.config import ModelConfig
from seq2seq_core.data.batches import pad_sources
from seq2seq_core.decoding import beam_search as search
from seq2seq_core.decoding.beam_search import Hypothesis, beam_search, length_penalty
from seq2seq_core.decoding.greedy import greedy_decode
from seq2seq_core.special_tokens import EOS_ID
from tests.support import (
    DECODER_VARIANTS,
    HostSyncCounter,
    random_model,
    random_sources,
    variant_id,
)

KW = {"max_len_ratio": 1.5, "max_len_extra": 3, "device": "cpu"}


@pytest.mark.parametrize("cfg", DECODER_VARIANTS, ids=variant_id)
def test_beam_one_is_exactly_greedy(cfg: ModelConfig) -> None:
    model, sources = random_model(cfg), random_sources()
    greedy = greedy_decode(model, sources, batch_size=4, **KW).ids
    beam = beam_search(model, sources, beam_size=1, batch_size=4, **KW)
    assert [h[0].ids for h in beam] == greedy


def test_scores_are_log_prob_over_the_gnmt_penalty_and_sorted() -> None:
    model, sources = random_model(DECODER_VARIANTS[1]), random_sources()
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
                gnmt = ((5.0 + h.steps) / 6.0) ** alpha  # Wu et al. 2016, written out here
                assert h.score == pytest.approx(h.log_prob / gnmt, rel=1e-6)
    assert length_penalty(1, 1.0) == 1.0 and length_penalty(7, 1.0) == 2.0
    assert length_penalty(7, 0.0) == 1.0 and length_penalty(13, 0.5) == pytest.approx(3**0.5)


def test_beam_finds_higher_probability_than_greedy() -> None:
    model, sources = random_model(DECODER_VARIANTS[3], eos_bias=-1.0), random_sources()
    greedy = beam_search(model, sources, beam_size=1, batch_size=11, length_penalty_alpha=0, **KW)
    beam = beam_search(model, sources, beam_size=5, batch_size=11, length_penalty_alpha=0, **KW)
    pairs = [(g[0].log_prob, b[0].log_prob) for g, b in zip(greedy, beam, strict=True)]
    assert all(b >= g - 1e-4 for g, b in pairs)
    assert any(b > g + 1e-3 for g, b in pairs)


def test_batched_beam_equals_one_by_one_and_respects_limits() -> None:
    model, sources = random_model(DECODER_VARIANTS[5]), random_sources()
    batched = beam_search(model, sources, beam_size=3, nbest=2, batch_size=4, **KW)
    single = [beam_search(model, [s], beam_size=3, nbest=2, batch_size=1, **KW)[0] for s in sources]
    assert [[h.ids for h in hs] for hs in batched] == [[h.ids for h in hs] for hs in single]
    for src, hyps in zip(sources, batched, strict=True):
        assert all(len(h.ids) <= int(1.5 * len(src) + 3) and EOS_ID not in h.ids for h in hyps)


def test_no_repeat_ngram_blocks_repeats() -> None:
    model = random_model(
        DECODER_VARIANTS[0], eos_bias=-5.0
    )  # long outputs, many repeats without blocking
    sources = random_sources()
    free = beam_search(model, sources, beam_size=3, batch_size=11, **KW)
    blocked = beam_search(model, sources, beam_size=3, batch_size=11, no_repeat_ngram=2, **KW)

    def repeats(ids: list[int]) -> int:
        bigrams = list(itertools.pairwise(ids))
        return len(bigrams) - len(set(bigrams))

    assert sum(repeats(h[0].ids) for h in free) > 0
    assert all(repeats(h[0].ids) == 0 for h in blocked)


def test_empty_source_and_bad_nbest() -> None:
    model = random_model(DECODER_VARIANTS[0])
    found = beam_search(model, [[], [5, 6]], beam_size=2, batch_size=2, **KW)
    assert found[0][0].ids == [] and len(found) == 2
    with pytest.raises(ValueError, match="nbest"):
        beam_search(model, [[5]], beam_size=2, nbest=3, batch_size=1, **KW)


def test_bf16_decoding_keeps_beam_one_equal_to_greedy_and_rejects_other_precisions() -> None:
    model, sources = random_model(DECODER_VARIANTS[-1]), random_sources()
    greedy = greedy_decode(model, sources, batch_size=4, precision="bf16", **KW).ids
    beam = beam_search(model, sources, beam_size=1, batch_size=4, precision="bf16", **KW)
    assert [h[0].ids for h in beam] == greedy
    fp32 = greedy_decode(model, sources, batch_size=4, **KW).ids
    for src, ids in zip(sources, greedy, strict=True):
        assert len(ids) <= int(1.5 * len(src) + 3) and EOS_ID not in ids
    # bf16 may change a token here and there, not the translations (a broken bf16 path, e.g.
    # argmax over bf16 logits of the wrong rows, changes most of them).
    long_model = random_model(DECODER_VARIANTS[-1], eos_bias=-1.0)
    bf16 = greedy_decode(long_model, sources, batch_size=4, precision="bf16", **KW).ids
    fp32 = greedy_decode(long_model, sources, batch_size=4, **KW).ids
    assert sum(len(ids) for ids in fp32) > 3 * len(sources)  # long outputs to compare
    assert sum(a == b for a, b in zip(bf16, fp32, strict=True)) >= len(sources) // 2 + 1
    with pytest.raises(ValueError, match="fp16"):
        greedy_decode(model, sources, batch_size=4, precision="fp16", **KW)


@pytest.mark.parametrize("cfg", DECODER_VARIANTS, ids=variant_id)
def test_one_memory_row_per_sentence_serves_all_its_hypotheses(cfg: ModelConfig) -> None:
    """Beam search keeps the encoder memory once per sentence; a step over K hypotheses per
    sentence must equal the same step over a memory copied K times."""
    from seq2seq_core.model.decoder import select_memory, select_state

    model, sources, k = random_model(cfg), random_sources(5), 3
    src, src_len = pad_sources(sources)
    expand = torch.arange(len(sources)).repeat_interleave(k)
    with torch.inference_mode():
        memory, state = model.encode(src, src_len)
        state = select_state(state, expand)
        tokens = torch.randint(4, 30, (len(expand),), generator=torch.Generator().manual_seed(1))
        grouped = model.decode_step(tokens, state, memory)
        copied = model.decode_step(tokens, state, select_memory(memory, expand))
    torch.testing.assert_close(grouped[0], copied[0])  # logits
    torch.testing.assert_close(grouped[1].hidden, copied[1].hidden)
    if grouped[2] is not None:  # attention probabilities, one row per hypothesis
        assert grouped[2].shape == (len(expand), src.size(1))
        torch.testing.assert_close(grouped[2], copied[2])
    if cfg.attention != "none":  # 14 rows cannot be split over 5 sentences
        fewer = select_state(state, torch.arange(len(expand) - 1))
        with torch.inference_mode(), pytest.raises(ValueError, match="do not group"):
            model.decode_step(tokens[:-1], fewer, memory)


# Outputs of two seeded random models, recorded before the kernels moved to kernels/:
# a refactor of the model or of the search must not change a single token.
PINNED = {
    2: (
        [[28, 28, 28, 28, 28, 4, 27, 4, 27, 4, 4, 27, 4, 4, 27, 4, 4, 27, 4],
         [27, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11],
         [27, 11, 11, 11, 11, 11], [28, 28, 28, 28, 28, 28, 28, 28, 28],
         [23, 27, 4, 4, 4, 27, 4, 4, 4, 27, 4, 4, 4, 27, 4, 4]],
        [[28, 28, 28, 28, 28, 4, 27, 4, 27, 4, 27, 4, 4, 27, 4, 4, 27, 4, 4],
         [23, 27, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11],
         [23, 27, 4, 27, 11, 11], [28, 28, 28, 28, 28, 28, 28, 28, 28],
         [28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 4]],
    ),
    3: (
        [[12, 4, 4, 10, 4, 10, 4, 10, 4, 10, 4, 10, 4, 10, 4, 10, 4, 10, 4],
         [15, 4, 4, 10, 4, 10, 4, 10, 4, 10, 4, 10, 4, 10, 4],
         [12, 4, 4, 4, 10, 4], [12, 4, 16, 16, 16, 16, 16, 16, 16],
         [4, 16, 10, 4, 10, 4, 10, 4, 10, 4, 10, 4, 10, 4, 10, 4]],
        [[15, 4, 4, 10, 4, 10, 4, 10, 4, 10, 4, 10, 4, 10, 4, 10, 4, 10, 4],
         [15, 4, 4, 10, 4, 10, 4, 10, 4, 10, 4, 10, 4, 10, 4],
         [15, 4, 10, 4, 10, 4], [15, 4, 4, 16, 10, 4, 4, 16, 16],
         [15, 4, 10, 4, 10, 4, 10, 4, 10, 4, 10, 4, 10, 4, 10, 4]],
    ),
}  # fmt: skip


@pytest.mark.parametrize("variant", sorted(PINNED))
def test_greedy_and_beam_outputs_are_pinned(variant: int) -> None:
    model, sources = random_model(DECODER_VARIANTS[variant], eos_bias=-1.0), random_sources(5)
    greedy, beam = PINNED[variant]
    assert greedy_decode(model, sources, batch_size=4, **KW).ids == greedy
    found = beam_search(model, sources, beam_size=3, batch_size=4, **KW)
    assert [h[0].ids for h in found] == beam


def _settings(beam: int = 3, nbest: int = 1, alpha: float = 1.0) -> search._Settings:
    return search._Settings(beam, 1.5, 3, alpha, nbest, 0)


def _hyps(*scores: float) -> list[Hypothesis]:
    return [Hypothesis([4], score, score, 1) for score in scores]


def test_no_live_hope_is_the_best_reachable_score_at_the_length_limit() -> None:
    """A live hypothesis with log-prob p can at best end as p / lp(limit): log-probs only
    fall, and the penalty only grows. A sentence stops when its n-th best finished score
    reaches that bound for the best live one, or when K hypotheses have finished."""
    best_live = torch.tensor([-2.0])  # one sentence, K = 3; the best live is -2
    limit = 7  # lp(7) = 2 at alpha 1, so the best reachable is -1.0

    def stops(finished: list[Hypothesis], **settings) -> bool:
        s = _settings(**settings)
        scores = [h.score for h in finished] + [float("-inf")] * (2 * s.beam - len(finished))
        lp = torch.tensor([length_penalty(limit, s.alpha)], dtype=torch.float64)
        count = torch.tensor([len(finished)])
        table = torch.tensor([scores], dtype=torch.float64)
        return bool(search._no_live_hope(best_live, table, count, lp, s))

    assert stops(_hyps(-0.99)) and stops(_hyps(-1.0))  # the bound is reached
    assert not stops(_hyps(-1.01))  # -2 / lp(7) = -1.0 could still win
    # Not the penalty of a shorter length: -2 / lp(1) = -2 would stop here, wrongly.
    assert not stops(_hyps(-1.5))
    assert not stops(_hyps(-0.5), nbest=2)  # fewer finished than asked for
    assert not stops(_hyps(-0.5, -1.2), nbest=2)  # the 2nd best is below the bound
    assert stops(_hyps(-0.5, -0.9), nbest=2)
    assert stops(_hyps(-50.0, -60.0, -70.0))  # K finished, however bad
    # Without a length penalty the bound is the live log-prob itself.
    assert not stops(_hyps(-2.01), alpha=0.0) and stops(_hyps(-2.0), alpha=0.0)


@pytest.mark.parametrize(("variant", "eos_bias"), [(6, 0.0), (3, 3.0), (0, 2.0)])
def test_stopping_early_changes_no_result(variant: int, eos_bias: float, monkeypatch) -> None:
    """The early stop only drops sentences whose n-best can no longer change: the same
    hypotheses and scores as a search that runs every sentence until K hypotheses finish or
    the length limit, while it does stop some sentences sooner."""
    model, sources = random_model(DECODER_VARIANTS[variant], eos_bias), random_sources()
    kw = {"beam_size": 4, "batch_size": 11, **KW}
    rule = search._no_live_hope
    early_stops = []

    def counted(best_live, finished, count, limit_lp, s):
        done = rule(best_live, finished, count, limit_lp, s)
        early_stops.append(int((done & (count < s.beam)).sum()))
        return done

    def k_finished_only(best_live, finished, count, limit_lp, s):
        return count >= s.beam

    for alpha, nbest in ((1.0, 1), (0.6, 2), (0.0, 1)):
        monkeypatch.setattr(search, "_no_live_hope", counted)
        early = beam_search(model, sources, nbest=nbest, length_penalty_alpha=alpha, **kw)
        monkeypatch.setattr(search, "_no_live_hope", k_finished_only)
        full = beam_search(model, sources, nbest=nbest, length_penalty_alpha=alpha, **kw)
        assert early == full
    assert sum(early_stops)  # the rule did stop sentences before K finished


SOURCES = [[5, 9, 12, 7, 21, 4, 8], [11, 6, 19, 23, 5, 14]]
# Per step: at most this many syncs (the "all finished?" check, and the indices of the
# sentences that leave the batch), plus a constant per call (lengths to the encoder, the
# results to the host once at the end).
PER_STEP, PER_CALL = 2, 12


def _count(model: torch.nn.Module, beam: int, copies: int) -> tuple[int, int, list]:
    """(syncs, decoder steps, outputs) of decoding SOURCES * copies in one batch."""
    steps = 0
    decode_step = model.decode_step

    def counted(*args, **kwargs):
        nonlocal steps
        steps += 1
        return decode_step(*args, **kwargs)

    model.decode_step = counted
    sources = SOURCES * copies
    try:
        with HostSyncCounter() as counter:
            if beam == 1:
                # With the attention weights, which go to the host once per batch too.
                found = greedy_decode(
                    model, sources, batch_size=len(sources), return_attention=True, **KW
                )
                pairs = zip(found.ids, found.attention, strict=True)
                out = [(ids, att.shape) for ids, att in pairs]
            else:
                found = beam_search(model, sources, beam_size=beam, batch_size=len(sources), **KW)
                out = [[(h.ids, round(h.score, 5)) for h in hyps] for hyps in found]
    finally:
        del model.decode_step
    print(f"beam {beam} batch {len(sources)}: {steps} steps, {dict(counter.counts)}")
    return counter.total, steps, out


@pytest.mark.parametrize("beam", [1, 5])
# gru + bahdanau; lstm + luong with input feeding. The EOS bias makes one sentence (or
# some hypotheses) end early and the others run on.
@pytest.mark.parametrize(("variant", "eos_bias"), [(1, 0.2), (8, 0.3)])
def test_syncs_per_step_are_few_and_independent_of_batch_size(
    beam: int, variant: int, eos_bias: float
) -> None:
    model = random_model(DECODER_VARIANTS[variant], eos_bias=eos_bias)
    small, steps, out_small = _count(model, beam, copies=1)
    large, large_steps, out_large = _count(model, beam, copies=8)
    assert out_large == out_small * 8  # the same sentences, the same results
    assert large_steps == steps > 3
    assert large == small
    assert small <= PER_STEP * steps + PER_CALL
