import pytest
import torch

from seq2seq_core.config import ModelConfig
from seq2seq_core.decoding.greedy import greedy_decode
from seq2seq_core.model.seq2seq import build_model
from seq2seq_core.special_tokens import EOS_ID
from tests.support import DECODER_VARIANTS, random_model, random_sources, variant_id


@pytest.mark.parametrize("cfg", DECODER_VARIANTS, ids=variant_id)
def test_batched_equals_one_by_one_in_original_order(cfg: ModelConfig) -> None:
    model = random_model(cfg)
    sources = random_sources()
    kw = {"max_len_ratio": 1.5, "max_len_extra": 3, "device": "cpu"}
    batched = greedy_decode(model, sources, batch_size=4, **kw).ids
    single = [greedy_decode(model, [s], batch_size=1, **kw).ids[0] for s in sources]
    assert batched == single
    for src, out in zip(sources, batched, strict=True):
        assert len(out) <= int(1.5 * len(src) + 3)
        assert EOS_ID not in out


def test_eos_ends_a_sentence_and_is_not_returned() -> None:
    model = random_model(DECODER_VARIANTS[1])
    with torch.no_grad():
        model.decoder.output_layer.bias[EOS_ID] += 100.0
    out = greedy_decode(
        model, random_sources(), batch_size=3, max_len_ratio=2.0, max_len_extra=5, device="cpu"
    )
    assert out.ids == [[] for _ in range(11)]


def test_max_length_cuts_output() -> None:
    model = random_model(DECODER_VARIANTS[1])
    with torch.no_grad():
        model.decoder.output_layer.bias[EOS_ID] -= 100.0
    sources = random_sources()
    out = greedy_decode(
        model, sources, batch_size=5, max_len_ratio=1.0, max_len_extra=2, device="cpu"
    )
    assert [len(o) for o in out.ids] == [len(s) + 2 for s in sources]


def test_empty_source_gives_empty_output_and_attention_shapes() -> None:
    model = random_model(DECODER_VARIANTS[1])
    sources = [[5, 6, 7], [], [8]]
    out = greedy_decode(
        model,
        sources,
        batch_size=8,
        max_len_ratio=1.5,
        max_len_extra=3,
        device="cpu",
        return_attention=True,
    )
    assert out.ids[1] == []
    for src, ids, att in zip(sources, out.ids, out.attention, strict=True):
        if src:
            assert att.shape == (len(ids), len(src))
            torch.testing.assert_close(att.sum(-1), torch.ones(len(ids)))


def test_model_mode_is_restored() -> None:
    model = random_model(DECODER_VARIANTS[0]).train()
    greedy_decode(model, [[4, 5]], batch_size=1, max_len_ratio=1.0, max_len_extra=1, device="cpu")
    assert model.training


def test_decoding_sees_weights_changed_without_a_version_bump() -> None:
    """Fused AdamW (the pipeline's optimizer on CPU) and ``p.data`` writes leave a
    parameter's version counter alone; decoding after them must use the new weights."""
    from seq2seq_core.config import TrainConfig
    from seq2seq_core.decoding.beam_search import beam_search
    from seq2seq_core.training.optim import build_optimizer

    cfg = DECODER_VARIANTS[3]  # gru, bahdanau, input feeding
    model, sources = random_model(cfg), random_sources()
    kw = {"batch_size": 4, "max_len_ratio": 1.5, "max_len_extra": 3}
    before = greedy_decode(model, sources, **kw).ids  # packs and caches the weights
    optimizer = build_optimizer(list(model.parameters()), TrainConfig(lr=0.5))
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    versions = [p._version for p in model.parameters()]
    optimizer.step()
    with torch.no_grad():
        model.decoder.output_layer.weight.data.mul_(3.0)
    assert [p._version for p in model.parameters()] == versions  # nothing to see there
    fresh = build_model(cfg, 30, 30).eval()
    fresh.load_state_dict(model.state_dict())
    after = greedy_decode(model, sources, **kw).ids
    assert after == greedy_decode(fresh, sources, **kw).ids
    assert after != before
    beam = [h[0].ids for h in beam_search(model, sources, beam_size=3, **kw)]
    assert beam == [h[0].ids for h in beam_search(fresh, sources, beam_size=3, **kw)]


@pytest.mark.parametrize("cfg", DECODER_VARIANTS, ids=variant_id)
def test_finished_rows_stop_being_computed_and_the_tokens_stay(
    cfg: ModelConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch whose sentences end at different steps computes fewer rows as they end
    (Joey NMT computes every row to the last step), with the tokens of never dropping."""
    from seq2seq_core.decoding import greedy

    # No EOS bias: the rows end at their different length limits.
    model, sources = random_model(cfg, eos_bias=0.0), random_sources(16)
    kw = {"max_len_ratio": 1.5, "max_len_extra": 3, "device": "cpu", "return_attention": True}
    rows_per_step: list[int] = []
    decode_step = model.decode_step

    def counting_step(tokens, *args, **kwargs):
        rows_per_step.append(tokens.size(0))
        return decode_step(tokens, *args, **kwargs)

    monkeypatch.setattr(greedy, "DROP_FINISHED_AT", 0)  # never drop
    kept = greedy_decode(model, sources, batch_size=16, **kw)
    monkeypatch.setattr(model, "decode_step", counting_step)
    monkeypatch.setattr(greedy, "DROP_FINISHED_AT", 10**6)  # drop at every finished row
    dropped = greedy_decode(model, sources, batch_size=16, **kw)
    assert rows_per_step[0] == 16 and rows_per_step[-1] < 16
    assert rows_per_step == sorted(rows_per_step, reverse=True)
    assert dropped.ids == kept.ids
    if kept.attention is not None:
        for a, b in zip(dropped.attention, kept.attention, strict=True):
            assert (a is None and b is None) or torch.allclose(a, b, atol=1e-6)
