"""A served request's decode params: defaults, bounds and types, named in the errors."""

from __future__ import annotations

import numpy as np
import pytest

from seq2seq_core.config import DecodeConfig
from seq2seq_core.decoding.request_params import (
    DecodeRequest,
    RequestParamError,
    bounds_for,
    model_defaults,
    parse_request_params,
)

DECODE = DecodeConfig(beam_size=5, max_len_ratio=1.5, max_len_extra=10, max_input_tokens=100)


def test_defaults_decode_as_evaluated_and_the_model_beam_is_always_allowed() -> None:
    defaults = model_defaults(DECODE)
    assert defaults == DecodeRequest(beam_size=5, n_best=1, max_length=160)  # 1.5 x 100 + 10
    assert parse_request_params(None, defaults, bounds_for(DECODE, 8)) == defaults
    # An operator's max_beam_size below the model's own beam still lets the default through.
    assert bounds_for(DECODE, 2).max_beam_size == 5


def test_values_are_integers_within_their_bounds() -> None:
    defaults, bounds = model_defaults(DECODE), bounds_for(DECODE, 8)
    got = parse_request_params(
        {"beam_size": np.int64(3), "n_best": 3, "max_length": 7}, defaults, bounds
    )
    assert got == DecodeRequest(3, 3, 7)
    for params, message in [
        ({"beam_size": 9}, r"beam_size=9 is out of bounds: 1\.\.8 \(serve.max_beam_size\)"),
        ({"beam_size": 1, "n_best": 2}, r"n_best=2 is out of bounds: 1\.\.1"),
        ({"max_length": 161}, r"max_length=161 is out of bounds: 1\.\.160"),
        ({"max_length": 0}, r"max_length=0"),
        ({"beam_size": True}, r"beam_size: expected an integer, got bool"),
        ({"n_best": 2.0}, r"n_best: expected an integer, got float"),
    ]:
        with pytest.raises(RequestParamError, match=message):
            parse_request_params(params, defaults, bounds)
