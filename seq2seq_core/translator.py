"""Text in, text out: tokenizer + checkpoint + decoding settings as one object.

The evaluate stage, the CLI and the MLflow pyfunc model all translate through this class,
so a registered model decodes exactly as it was evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seq2seq_core.checkpoint import load_model
from seq2seq_core.config import DecodeConfig
from seq2seq_core.decoding import greedy_decode
from seq2seq_core.tokenization import SubwordTokenizer


class InputTooLongError(ValueError):
    """A source sentence exceeds the configured limit; decoding it would waste minutes."""


@dataclass
class Translation:
    text: str
    src_tokens: list[str]
    tgt_tokens: list[str]
    attention: Any | None  # (T_out, S) tensor when the model has attention


class Translator:
    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: SubwordTokenizer,
        decode: DecodeConfig,
        device: torch.device | str = "cpu",
        max_input_chars: int = 2000,
    ) -> None:
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.decode = decode
        self.device = torch.device(device)
        self.max_input_chars = max_input_chars

    @classmethod
    def load(
        cls,
        checkpoint: str | Path,
        vocab_dir: str | Path,
        decode: DecodeConfig | None = None,
        device: str = "cpu",
        max_input_chars: int = 2000,
    ) -> Translator:
        model, _meta = load_model(Path(checkpoint), device=device)
        tokenizer = SubwordTokenizer.load(Path(vocab_dir))
        return cls(model, tokenizer, decode or DecodeConfig(), device, max_input_chars)

    def _check(self, sentences: list[str]) -> None:
        for i, text in enumerate(sentences):
            if not isinstance(text, str):
                raise TypeError(f"input {i}: expected a string, got {type(text).__name__}")
            if len(text) > self.max_input_chars:
                raise InputTooLongError(
                    f"input {i} has {len(text)} characters; the limit is {self.max_input_chars}"
                )

    def translate(self, sentences: list[str]) -> list[str]:
        self._check(sentences)
        if not sentences:
            return []
        src_ids = self.tokenizer.encode_src(sentences)
        out = greedy_decode(
            self.model,
            src_ids,
            batch_size=self.decode.batch_size,
            max_len_ratio=self.decode.max_len_ratio,
            max_len_extra=self.decode.max_len_extra,
            device=self.device,
        )
        return self.tokenizer.decode_tgt(_ids(out))


def _ids(out: Any) -> list[list[int]]:
    return out.ids if hasattr(out, "ids") else out
