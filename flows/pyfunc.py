"""The registered translator as an MLflow pyfunc: DataFrame with column ``src`` in, strings out.

The model directory carries everything it needs (checkpoint, tokenizer files, a JSON file
with the decode settings and the input limit, and the ``seq2seq_core`` code), so
``mlflow.pyfunc.load_model("models:/seq2seq-translator@champion")`` translates in a fresh
process that cannot see the training folders. ``flows.tracking.log_translator_model``
writes that directory.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

SRC_COLUMN = "src"
# Keys of the `config` artifact (written by tracking.log_translator_model).
DECODE_KEY = "decode"
MAX_INPUT_KEY = "max_input_chars"


class InputRejectedError(MlflowException, ValueError):
    """Bad model input (no `src` column, a non-string, an over-long sentence).

    An ``MlflowException`` so that `mlflow models serve` answers 400 with this message
    rather than a 500-style "unexpected error"; a ``ValueError`` for everyone else."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


class TranslatorModel(mlflow.pyfunc.PythonModel):
    """Wraps ``seq2seq_core.translator.Translator``; decodes exactly as evaluation did."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        # Imported here: importing this module (tracking does, to log it) stays light;
        # torch and SentencePiece load with a model only.
        from seq2seq_core.config import DecodeConfig
        from seq2seq_core.device import resolve_device
        from seq2seq_core.translator import Translator

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

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> list[str]:
        """Translations in input order, one string per row of ``src``.

        Through ``mlflow.pyfunc.load_model`` the input is always a DataFrame: MLflow builds
        one from a dict ``{"src": [...]}`` and rejects a bare list (the signature names the
        column). Called directly, a list or a dict works too. (The DataFrame hint also
        keeps MLflow from deriving a schema from type hints.)"""
        from seq2seq_core.translator import InputTooLongError

        sentences = source_sentences(model_input)
        try:
            return self.translator.translate(sentences)
        except InputTooLongError as exc:
            raise InputRejectedError(str(exc)) from None


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
