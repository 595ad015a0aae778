"""Int8 linears: F.linear up to the two roundings, for few rows (fbgemm) and many (oneDNN);
packed once per parameter and repacked when its values change."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seq2seq_core.kernels import int8_linear, select
from seq2seq_core.kernels.int8_linear import LARGE_ROWS, int8_weights
from seq2seq_core.kernels.packed_weights import PackedWeights


@pytest.mark.parametrize("rows", [1, 5, LARGE_ROWS, 64])
def test_int8_linear_is_f_linear_up_to_rounding(rows: int) -> None:
    torch.manual_seed(rows)
    layer = nn.Linear(96, 300)
    x = torch.randn(rows, 96)
    with torch.inference_mode():
        out = PackedWeights(int8=True).linear(x, layer.weight, layer.bias)
        ref = F.linear(x, layer.weight, layer.bias)
    # Weight step max|w|/127 per row, input step range/255 (7 bits for few rows): the
    # error of a 96-term dot product stays within a few percent of the output's scale.
    err = (out - ref).abs().max().item()
    assert out.shape == ref.shape and err < 0.03 * ref.abs().max().item()
    assert err > 0  # it did run in int8


def test_packing_is_kept_across_calls_and_redone_when_values_change() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    x = torch.randn(3, 16)
    with torch.inference_mode():
        first = int8_weights(layer.weight, layer.bias)
        assert int8_weights(layer.weight, layer.bias) is first
        layer.weight.data.mul_(2.0)  # no version bump, as fused AdamW
        second = int8_weights(layer.weight, layer.bias)
        assert second is not first
        out = PackedWeights(int8=True).linear(x, layer.weight, layer.bias)
        torch.testing.assert_close(out, layer(x), atol=0.05, rtol=0)
    key = id(layer.weight)
    del layer
    assert key not in int8_linear._CACHE  # dropped with its parameter


def test_select_gives_int8_weights_only_for_float32_decoding_on_cpu() -> None:
    with torch.inference_mode():
        kernels = select(torch.device("cpu"), torch.float32, int8=True)
        assert kernels.weights is not None and kernels.weights.int8
        with pytest.raises(ValueError, match="int8"):
            select(torch.device("cpu"), torch.float64, int8=True)
    with pytest.raises(ValueError, match="int8"):
        select(torch.device("cpu"), torch.float32, int8=True)  # not inference mode
