"""Text in, text out: tokenizer + checkpoint + decoding settings as one object.

The evaluate stage, the CLI and the MLflow pyfunc model all translate through this class,
so a registered model decodes exactly as it was evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seq2seq_core.config import DecodeConfig
from seq2seq_core.data.tokenization import SubwordTokenizer
from seq2seq_core.decoding.beam_search import beam_search
from seq2seq_core.decoding.greedy import greedy_decode
from seq2seq_core.kernels import step_extension
from seq2seq_core.kernels.packed_weights import PackedWeights
from seq2seq_core.model.checkpoint import load_model


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
        frozen: bool = False,
    ) -> None:
        """``frozen``: the model's weights never change while this translator lives (it
        was loaded for inference only), so the decoding weights are packed on the first
        call and kept: a served request then pays neither the packing nor, for int8, the
        check that the weights are still those packed (tens of ms a call for the default model).
        """
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.decode = decode
        self.device = torch.device(device)
        self.max_input_chars = max_input_chars
        self.frozen = frozen
        self._kept: PackedWeights | None = None

    @classmethod
    def load(
        cls,
        checkpoint: str | Path,
        vocab_dir: str | Path,
        decode: DecodeConfig | None = None,
        device: str | torch.device = "cpu",
        max_input_chars: int = 2000,
    ) -> Translator:
        model, _meta = load_model(Path(checkpoint), device=device)
        tokenizer = SubwordTokenizer.load(Path(vocab_dir))
        decode = decode or DecodeConfig()
        if decode.compiled_step and torch.device(device).type == "cpu":
            step_extension.load()  # built (or loaded) now: not in a served first request
        return cls(model, tokenizer, decode, device, max_input_chars, frozen=True)

    def _kept_weights(self) -> PackedWeights | None:
        """The packed weights kept across calls (frozen only), for this call's precision:
        ``decode`` may be replaced between calls (the CLI sets its batch size)."""
        if not self.frozen:
            return None
        int8 = self.decode.precision == "int8"
        if self._kept is None or self._kept.int8 != int8:
            self._kept = PackedWeights(int8)
        return self._kept

    def validate(self, sentences: list[str]) -> None:
        """Raise what `translate` would for bad input, without decoding: a server checks
        each request on its own before it joins a batch shared with other requests."""
        self._check(sentences)

    def _check(self, sentences: list[str]) -> list[list[int]]:
        for i, text in enumerate(sentences):
            if not isinstance(text, str):
                raise TypeError(f"input {i}: expected a string, got {type(text).__name__}")
            if len(text) > self.max_input_chars:
                raise InputTooLongError(
                    f"input {i} has {len(text)} characters; the limit is {self.max_input_chars}"
                )
        src_ids = self.tokenizer.encode_src(sentences)
        limit = self.decode.max_input_tokens
        for i, ids in enumerate(src_ids):
            if len(ids) > limit:
                raise InputTooLongError(
                    f"input {i} has {len(ids)} source tokens; the limit is {limit} "
                    "(decode.max_input_tokens)"
                )
        return src_ids

    def translate(
        self,
        sentences: list[str],
        beam_size: int | None = None,
        max_output_tokens: int | None = None,
    ) -> list[str]:
        """One translation per sentence: greedy when the beam size is 1, else the best
        beam hypothesis (beam size from the argument or `decode.beam_size`)."""
        found = self.translate_nbest(sentences, beam_size, 1, max_output_tokens)
        return [hyps[0][0] for hyps in found]

    def translate_nbest(
        self,
        sentences: list[str],
        beam_size: int | None = None,
        nbest: int | None = None,
        max_output_tokens: int | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Per sentence, up to `nbest` (text, score) pairs, best first. Greedy output has
        the score of its summed log-probability left out (0.0): it is not ranked.
        ``max_output_tokens`` caps each output's length below the decode settings' limit
        (a served request's ``max_length``)."""
        src_ids = self._check(sentences)
        if not sentences:
            return []
        beam = beam_size or self.decode.beam_size
        nbest = min(nbest or self.decode.nbest, beam)
        if beam == 1:
            out = greedy_decode(
                self.model,
                src_ids,
                batch_size=self.decode.batch_size,
                max_len_ratio=self.decode.max_len_ratio,
                max_len_extra=self.decode.max_len_extra,
                device=self.device,
                precision=self.decode.precision,
                kept_weights=self._kept_weights(),
                max_output_tokens=max_output_tokens,
                compiled=self.decode.compiled_step,
            )
            return [[(text, 0.0)] for text in self.tokenizer.decode_tgt(out.ids)]
        found = beam_search(
            self.model,
            src_ids,
            beam_size=beam,
            # batch_size counts decoder rows: keep the work per step like greedy's.
            batch_size=max(1, self.decode.batch_size // beam * 2),
            max_len_ratio=self.decode.max_len_ratio,
            max_len_extra=self.decode.max_len_extra,
            length_penalty_alpha=self.decode.length_penalty,
            nbest=nbest,
            no_repeat_ngram=self.decode.no_repeat_ngram,
            device=self.device,
            precision=self.decode.precision,
            kept_weights=self._kept_weights(),
            max_output_tokens=max_output_tokens,
            compiled=self.decode.compiled_step,
        )
        return [
            list(
                zip(
                    self.tokenizer.decode_tgt([h.ids for h in hyps]),
                    [h.score for h in hyps],
                    strict=True,
                )
            )
            for hyps in found
        ]
