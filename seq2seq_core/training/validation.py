"""Validation during training: the encoded pairs, teacher-forced loss per token and
greedy-decoded BLEU."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import sacrebleu
import torch

from seq2seq_core.config import PipelineConfig, TrainConfig
from seq2seq_core.data.batches import Batch, encode_pairs, fixed_batches
from seq2seq_core.decoding.greedy import greedy_decode
from seq2seq_core.evaluation.metrics import bleu_tokenizer, target_language
from seq2seq_core.model.seq2seq import Seq2Seq
from seq2seq_core.runtime.precision import autocast


class ValidationTokenizer(Protocol):
    def encode_src(self, texts: list[str]) -> list[list[int]]: ...
    def encode_tgt(self, texts: list[str]) -> list[list[int]]: ...
    def decode_tgt(self, ids: list[list[int]]) -> list[str]: ...


@dataclass
class Validation:
    """The validation pairs as the training loop uses them, encoded once."""

    batches: list[Batch]  # every validation pair, for the loss
    bleu_src: list[list[int]]  # the first train.valid_bleu_sentences, for BLEU
    bleu_refs: list[str]

    @classmethod
    def from_pairs(
        cls, tokenizer: ValidationTokenizer, pairs: Sequence[tuple[str, str]], tc: TrainConfig
    ) -> Validation:
        encoded = encode_pairs(tokenizer, list(pairs), tc.max_len)
        bleu_pairs = pairs[: tc.valid_bleu_sentences]
        return cls(
            fixed_batches(encoded, tc.batch_tokens),
            tokenizer.encode_src([s for s, _ in bleu_pairs]),
            [t for _, t in bleu_pairs],
        )


def validation_loss(
    model: Seq2Seq, batches: Sequence[Batch], device: torch.device, precision: str = "fp32"
) -> float:
    """Teacher-forced loss per target token (nan when there are no batches)."""
    model.eval()
    total, tokens = 0.0, 0
    with torch.inference_mode(), autocast(device, precision):
        for batch in batches:
            b = batch.to(device)
            total += float(model(b.src, b.src_len, b.tgt_in, tgt_out=b.tgt_out, real=b.real))
            tokens += b.ntokens
    return total / tokens if tokens else math.nan


def validation_bleu(
    model: Seq2Seq,
    tokenizer: ValidationTokenizer,
    src_ids: list[list[int]],
    refs: list[str],
    cfg: PipelineConfig,
    device: torch.device,
) -> float:
    if not src_ids:
        return 0.0
    out = greedy_decode(
        model,
        src_ids,
        batch_size=cfg.decode.batch_size,
        max_len_ratio=cfg.decode.max_len_ratio,
        max_len_extra=cfg.decode.max_len_extra,
        device=device,
        precision=cfg.decode.precision,
    )
    # The evaluation's tokenizer for the target language: 13a on unsegmented zh/ja is ~0.
    tokenize = bleu_tokenizer(target_language(Path(cfg.data.prepared_dir), cfg.data.tgt_lang))
    hypotheses = tokenizer.decode_tgt(out.ids)
    return float(sacrebleu.corpus_bleu(hypotheses, [refs], tokenize=tokenize).score)
