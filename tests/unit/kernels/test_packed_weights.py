"""PackedWeights.linear equals F.linear; one object packs each parameter once."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from seq2seq_core.kernels import select
from seq2seq_core.kernels.packed_weights import PackedWeights


@settings(max_examples=30, deadline=None)
@given(
    rows=st.lists(st.integers(1, 6), min_size=1, max_size=3),  # any leading shape
    sizes=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_linear_equals_f_linear(rows, sizes, bias, seed) -> None:
    torch.manual_seed(seed)
    layer = nn.Linear(*sizes, bias=bias)
    x = torch.randn(*rows, sizes[0])
    packed = PackedWeights()
    with torch.inference_mode():
        for _ in range(2):  # the second call reuses the first call's copy
            out = packed.linear(x, layer.weight, layer.bias)
            torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias))
    assert len(packed) == 1


def test_only_parameters_are_packed_and_autocast_packs_in_its_dtype() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(8, 5)
    x = torch.randn(3, 8)
    packed = PackedWeights()
    with torch.inference_mode():
        plain = layer.weight.detach().clone()  # a tensor, not a parameter: F.linear
        assert torch.equal(packed.linear(x, plain, layer.bias), F.linear(x, plain, layer.bias))
        assert len(packed) == 0
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = packed.linear(x, layer.weight, layer.bias)
            expected = F.linear(x, layer.weight, layer.bias)
        assert out.dtype == torch.bfloat16 == expected.dtype
        torch.testing.assert_close(out, expected, rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(packed.linear(x, layer.weight, layer.bias), layer(x))
    assert len(packed) == 1  # re-packed in fp32 after autocast ended


def test_a_new_object_sees_changed_weights() -> None:
    """What makes one object per decoding call safe: an in-place update that leaves the
    version counter alone (fused AdamW, p.data writes) is seen by the next call's object."""
    layer = nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with torch.inference_mode():
        before = PackedWeights().linear(x, layer.weight, layer.bias)
    layer.weight.data.mul_(2.0)
    with torch.inference_mode():
        after = PackedWeights().linear(x, layer.weight, layer.bias)
        torch.testing.assert_close(after, layer(x))
    assert not torch.allclose(before, after)


def test_kept_weights_must_match_the_precision() -> None:
    with torch.inference_mode():
        select(torch.device("cpu"), torch.float32, int8=True, kept=PackedWeights(int8=True))
        with pytest.raises(ValueError, match="not int8"):
            select(torch.device("cpu"), torch.float32, int8=True, kept=PackedWeights())
