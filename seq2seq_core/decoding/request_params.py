"""Per-request decode settings of the served model: ``beam_size``, ``n_best``, ``max_length``.

A client may ask one request for another beam size (1 = greedy), several hypotheses per
sentence, or shorter outputs. Each is checked against bounds the operator sets (beam size
up to ``serve.max_beam_size``: every beam is a decoder row per sentence) or the model
fixes (an output never longer than the longest the decode settings allow), so one request
cannot buy itself minutes of decoding. The MLflow pyfunc declares the same names, types and
defaults as its signature's params schema (``flows.tracking.log_translator_model``) and
answers a bad value with a 400 that names the parameter and its bounds.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from seq2seq_core.config import DecodeConfig
from seq2seq_core.decoding.limits import longest_output

PARAM_NAMES = ("beam_size", "n_best", "max_length")


class RequestParamError(ValueError):
    """A request's decode parameter is not an integer or is out of its bounds."""


@dataclass(frozen=True)
class DecodeRequest:
    """One request's decode settings (hashable: the serving batcher keys batches by it)."""

    beam_size: int  # 1 = greedy
    n_best: int  # hypotheses per sentence, best first; 1 = one string per sentence
    max_length: int  # output tokens per sentence, at most (below the ratio limit)


@dataclass(frozen=True)
class RequestParamBounds:
    max_beam_size: int  # serve.max_beam_size (the model's own beam size is always allowed)
    max_length: int  # the longest output any accepted input gets (limits.longest_output)


def model_defaults(decode: DecodeConfig) -> DecodeRequest:
    """What a request without params gets: the registered decode settings, one hypothesis,
    and no cap beyond the model's own length limit, i.e. exactly the evaluated decode."""
    longest = longest_output(decode.max_input_tokens, decode.max_len_ratio, decode.max_len_extra)
    return DecodeRequest(beam_size=decode.beam_size, n_best=1, max_length=longest)


def bounds_for(decode: DecodeConfig, max_beam_size: int) -> RequestParamBounds:
    defaults = model_defaults(decode)
    return RequestParamBounds(max(max_beam_size, decode.beam_size), defaults.max_length)


def parse_request_params(
    params: Mapping[str, Any] | None, defaults: DecodeRequest, bounds: RequestParamBounds
) -> DecodeRequest:
    """The request's settings: ``params`` over ``defaults``, each an integer within
    ``beam_size`` 1..``bounds.max_beam_size``, ``n_best`` 1..``beam_size``,
    ``max_length`` 1..``bounds.max_length``; else ``RequestParamError`` naming it.
    Other keys are ignored (MLflow drops and warns about names outside the schema)."""
    given = dict(params or {})
    beam = _bounded(
        given, "beam_size", defaults.beam_size, bounds.max_beam_size, "serve.max_beam_size"
    )
    n_best = _bounded(given, "n_best", defaults.n_best, beam, "the request's beam_size")
    max_length = _bounded(
        given, "max_length", defaults.max_length, bounds.max_length, "the model's longest output"
    )
    return DecodeRequest(beam_size=beam, n_best=n_best, max_length=max_length)


def _bounded(given: Mapping[str, Any], name: str, default: int, high: int, why: str) -> int:
    value = given.get(name)
    if value is None:
        return default
    # bool is an int to Python; `"beam_size": true` is a client's mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise RequestParamError(
            f"param {name}: expected an integer, got {type(value).__name__} {value!r}"
        )
    if not 1 <= int(value) <= high:
        raise RequestParamError(f"param {name}={int(value)} is out of bounds: 1..{high} ({why})")
    return int(value)
