import itertools

import pytest
import torch

from seq2seq_core.config import ModelConfig
from seq2seq_core.decoding import greedy_decode
from seq2seq_core.seq2seq import EOS_ID, build_model

torch.set_num_threads(1)

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


def _sources(n: int = 11) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    lens = torch.randint(1, 12, (n,), generator=g).tolist()
    return [torch.randint(4, 30, (k,), generator=g).tolist() for k in lens]


def _model(cfg: ModelConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(cfg, 30, 30)
    with torch.no_grad():  # a bias towards EOS so that some sentences stop early
        model.decoder.output_layer.bias[EOS_ID] += 0.5
    return model.eval()


@pytest.mark.parametrize(
    "cfg", VARIANTS, ids=lambda c: f"{c.cell}-{c.attention}{'-feed' if c.input_feeding else ''}"
)
def test_batched_equals_one_by_one_in_original_order(cfg: ModelConfig) -> None:
    model = _model(cfg)
    sources = _sources()
    kw = {"max_len_ratio": 1.5, "max_len_extra": 3, "device": "cpu"}
    batched = greedy_decode(model, sources, batch_size=4, **kw).ids
    single = [greedy_decode(model, [s], batch_size=1, **kw).ids[0] for s in sources]
    assert batched == single
    for src, out in zip(sources, batched, strict=True):
        assert len(out) <= int(1.5 * len(src) + 3)
        assert EOS_ID not in out


def test_eos_ends_a_sentence_and_is_not_returned() -> None:
    model = _model(VARIANTS[1])
    with torch.no_grad():
        model.decoder.output_layer.bias[EOS_ID] += 100.0
    out = greedy_decode(
        model, _sources(), batch_size=3, max_len_ratio=2.0, max_len_extra=5, device="cpu"
    )
    assert out.ids == [[] for _ in range(11)]


def test_max_length_cuts_output() -> None:
    model = _model(VARIANTS[1])
    with torch.no_grad():
        model.decoder.output_layer.bias[EOS_ID] -= 100.0
    sources = _sources()
    out = greedy_decode(
        model, sources, batch_size=5, max_len_ratio=1.0, max_len_extra=2, device="cpu"
    )
    assert [len(o) for o in out.ids] == [len(s) + 2 for s in sources]


def test_empty_source_gives_empty_output_and_attention_shapes() -> None:
    model = _model(VARIANTS[1])
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
    model = _model(VARIANTS[0]).train()
    greedy_decode(model, [[4, 5]], batch_size=1, max_len_ratio=1.0, max_len_extra=1, device="cpu")
    assert model.training
