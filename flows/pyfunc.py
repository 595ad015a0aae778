"""The registered translator as an MLflow pyfunc: DataFrame with column ``src`` in, strings out.

The model directory carries everything it needs (checkpoint, tokenizer files, a JSON file
with the decode settings and the input limit, and the ``seq2seq_core`` code), so
``mlflow.pyfunc.load_model("models:/seq2seq-translator@champion")`` translates in a fresh
process that cannot see the training folders. ``flows.tracking.log_translator_model``
writes that directory.

Served, the model decodes concurrent requests together: ``predict`` validates its own
request (bad input gets its 400 alone), then hands the sentences to a
``seq2seq_core.decoding.request_batcher.DynamicBatcher`` and waits for its slice of a shared batch.
MLflow's scoring server calls ``predict`` from a thread pool (``asyncio.to_thread``), so
requests do overlap; ``seq2seq_serve_loop`` makes that pool large enough to fill a batch.
Environment variables, set by ``seq2seq serve`` from the ``serve`` config section, tune
it at serve time: ``SEQ2SEQ_BATCH_WAIT_MS``, ``SEQ2SEQ_BATCH_LOG_S`` and
``SEQ2SEQ_MAX_SENTENCES`` (a request with more sentences gets 413 before anything decodes;
without the variable, as in ``champion_eval``, there is no limit) and
``SEQ2SEQ_MAX_BEAM_SIZE`` (the largest ``beam_size`` a request may ask for).

A request may pass params (the signature's params schema): ``beam_size`` (1 = greedy),
``n_best`` and ``max_length`` (output tokens), checked by
``seq2seq_core.decoding.request_params``; a bad one gets 400 naming it and its bounds. A
request whose params equal the model's defaults takes the default path; others are
batched only with requests of the same settings. With ``n_best`` > 1 each row's
prediction is a list of up to ``n_best`` strings, best first, instead of one string.

Under `seq2seq serve`, ``seq2seq_serve_app.current_request`` holds the HTTP request's
deadline and a cancel event (its client has gone); ``predict`` hands both to the batcher,
which drops the request between chunks. It is imported defensively: the model also loads
where that module is absent or no request is being served. ``healthy()`` tells the serve
app's ``/ping`` whether the decoding thread still runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    CANCELLED,
    DEADLINE_EXCEEDED,
    INVALID_PARAMETER_VALUE,
    TEMPORARILY_UNAVAILABLE,
)

SRC_COLUMN = "src"
# Keys of the `config` artifact (written by tracking.log_translator_model).
DECODE_KEY = "decode"
MAX_INPUT_KEY = "max_input_chars"
BATCH_WAIT_ENV = "SEQ2SEQ_BATCH_WAIT_MS"
BATCH_LOG_ENV = "SEQ2SEQ_BATCH_LOG_S"
MAX_SENTENCES_ENV = "SEQ2SEQ_MAX_SENTENCES"
MAX_BEAM_SIZE_ENV = "SEQ2SEQ_MAX_BEAM_SIZE"
# MLflow's error codes have no 413; the serve app's guard applies this status instead.
TOO_LARGE_STATUS = 413
log = logging.getLogger("seq2seq.serving")


class InputRejectedError(MlflowException, ValueError):
    """Bad model input (no `src` column, a non-string, an over-long sentence).

    An ``MlflowException`` so that `mlflow models serve` answers 400 with this message
    rather than a 500-style "unexpected error"; a ``ValueError`` for everyone else."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


class RequestTooLargeError(InputRejectedError):
    """More sentences than ``serve.max_sentences_per_request``: refused before decoding
    (HTTP 413 under `seq2seq serve`, 400 elsewhere)."""


class TranslatorModel(mlflow.pyfunc.PythonModel):
    """Wraps ``seq2seq_core.decoding.translator.Translator``; decodes exactly as evaluation did."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        # Imported here: importing this module (tracking does, to log it) stays light;
        # torch and SentencePiece load with a model only.
        from seq2seq_core.config import DecodeConfig, ServeConfig
        from seq2seq_core.decoding import request_params
        from seq2seq_core.decoding.request_batcher import DynamicBatcher
        from seq2seq_core.decoding.translator import Translator
        from seq2seq_core.runtime.device import resolve_device

        settings = json.loads(Path(context.artifacts["config"]).read_text(encoding="utf-8"))
        known = {f.name for f in dataclasses.fields(DecodeConfig)}
        decode = DecodeConfig(**{k: v for k, v in settings[DECODE_KEY].items() if k in known})
        self.translator = Translator.load(
            context.artifacts["checkpoint"],
            context.artifacts["vocab"],
            decode,
            # The serving machine's GPU when it has one (CUDA_VISIBLE_DEVICES="" keeps the
            # CPU); the decision is logged.
            device=resolve_device("auto"),
            max_input_chars=int(settings[MAX_INPUT_KEY]),
        )
        defaults = ServeConfig()
        wait_ms = float(os.environ.get(BATCH_WAIT_ENV, defaults.batch_wait_ms))
        self.batch_log = BatchLog(float(os.environ.get(BATCH_LOG_ENV, defaults.batch_log_s)))
        limit = os.environ.get(MAX_SENTENCES_ENV, "").strip()
        self.max_sentences = int(limit) if limit else None
        max_beam = int(os.environ.get(MAX_BEAM_SIZE_ENV, "").strip() or defaults.max_beam_size)
        self.default_params = request_params.model_defaults(decode)
        self.param_bounds = request_params.bounds_for(decode, max_beam)
        self.batcher = DynamicBatcher(
            self.translator.translate,
            max_sentences=decode.batch_size,
            max_wait_s=wait_ms / 1000,
            on_batch=self.batch_log,
            decode_with=self._decode_with,
        )

    def _decode_with(self, sentences: list[str], settings: Any) -> list[Any]:
        """A batch of requests sharing non-default settings (a ``DecodeRequest``)."""
        found = self.translator.translate_nbest(
            sentences, settings.beam_size, settings.n_best, settings.max_length
        )
        if settings.n_best == 1:
            return [hyps[0][0] for hyps in found]
        return [[text for text, _score in hyps] for hyps in found]

    def healthy(self) -> bool:
        """False once the decoding thread has stopped (the serve app's /ping says 503)."""
        return self.batcher.alive

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> list[str] | list[list[str]]:
        """Translations in input order, one string per row of ``src`` (a list of up to
        ``n_best`` strings, best first, when ``params`` asks for ``n_best`` > 1).

        Through ``mlflow.pyfunc.load_model`` the input is always a DataFrame: MLflow builds
        one from a dict ``{"src": [...]}`` and rejects a bare list (the signature names the
        column). Called directly, a list or a dict works too. (The DataFrame hint also
        keeps MLflow from deriving a schema from type hints.)"""
        from seq2seq_core.decoding import request_batcher as rb
        from seq2seq_core.decoding import request_params
        from seq2seq_core.decoding.translator import InputTooLongError

        request = _served_request()
        sentences = source_sentences(model_input)
        if self.max_sentences is not None and len(sentences) > self.max_sentences:
            if request is not None:
                request.status = TOO_LARGE_STATUS
            raise RequestTooLargeError(
                f"{len(sentences)} sentences in one request; the limit is "
                f"{self.max_sentences} (serve.max_sentences_per_request)"
            )
        try:
            settings = request_params.parse_request_params(
                params, self.default_params, self.param_bounds
            )
            self.translator.validate(sentences)
            return self.batcher.submit(
                sentences,
                deadline=getattr(request, "deadline", None),
                cancelled=getattr(request, "cancelled", None),
                # The default settings take the batcher's default (fast) path.
                settings=None if settings == self.default_params else settings,
            )
        except (InputTooLongError, request_params.RequestParamError) as exc:
            raise InputRejectedError(str(exc)) from None
        except rb.BatcherUnavailableError as exc:
            raise MlflowException(str(exc), error_code=TEMPORARILY_UNAVAILABLE) from None
        except rb.DeadlineExceededError as exc:
            raise MlflowException(str(exc), error_code=DEADLINE_EXCEEDED) from None
        except rb.RequestDroppedError as exc:
            raise MlflowException(str(exc), error_code=CANCELLED) from None


def _served_request() -> Any:
    """The serve app's state of the HTTP request being answered, or None (no serve app in
    this process, or a call from outside a request)."""
    try:
        from seq2seq_serve_app import current_request
    except ImportError:
        return None
    return current_request.get()


class BatchLog:
    """Logs a worker's batching totals at most every ``every_s`` seconds (0: per batch).

    One line per interval, e.g. ``batching pid=12 {"batches": 40, "requests": 310,
    "sentences": 310, "max_batch_sentences": 16, "sentences_per_batch": {"4-7": 9,
    "8-15": 30, "16-31": 1}}``: requests per batch well above 1 under load shows that
    coalescing works; a histogram stuck at 1 means requests never overlap (too few predict
    threads, or clients that wait for each other)."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._last = 0.0
        self._lock = threading.Lock()
        if not log.handlers:  # uvicorn configures its own loggers only
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
            log.addHandler(handler)
            log.setLevel(logging.INFO)
            log.propagate = False

    def __call__(self, stats: Any) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last < self.every_s:
                return
            self._last = now
        log.info("batching pid=%d %s", os.getpid(), json.dumps(stats.summary()))


def source_sentences(model_input: Any) -> list[str]:
    """Accept a DataFrame / dict with column ``src``, a Series, or a list of strings."""
    if hasattr(model_input, "columns"):  # pandas DataFrame
        if SRC_COLUMN not in model_input.columns:
            raise InputRejectedError(
                f"model input needs a column {SRC_COLUMN!r}; got columns "
                f"{[str(c) for c in model_input.columns]}"
            )
        values = model_input[SRC_COLUMN].tolist()
        if len(values) == 1 and _is_sequence(values[0]):
            # MLflow's schema step turns {"src": [a, b]} into ONE row whose cell is [a, b].
            values = list(values[0])
    elif isinstance(model_input, dict):
        if SRC_COLUMN not in model_input:
            raise InputRejectedError(
                f"model input needs a key {SRC_COLUMN!r}; got keys {sorted(map(str, model_input))}"
            )
        values = model_input[SRC_COLUMN]
        values = [values] if isinstance(values, str) else list(values)
    elif isinstance(model_input, str):
        values = [model_input]
    elif hasattr(model_input, "tolist"):  # Series / ndarray
        values = model_input.tolist()
    else:
        values = list(model_input)
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise InputRejectedError(
                f"{SRC_COLUMN}[{i}]: expected a string, got {type(value).__name__}"
            )
    return values


def _is_sequence(value: Any) -> bool:
    return isinstance(value, list | tuple) or getattr(value, "ndim", 0) == 1
