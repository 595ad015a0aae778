"""Greedy decoding, batched over sentences of similar length, original order restored."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from seq2seq_core.data.batches import pad_sources
from seq2seq_core.decoding.limits import output_limits
from seq2seq_core.kernels import Kernels
from seq2seq_core.kernels.packed_weights import PackedWeights
from seq2seq_core.model.compiled_step import CompiledStep, compile_step
from seq2seq_core.model.decoder import DecoderState, Memory, select_memory, select_state
from seq2seq_core.model.seq2seq import Seq2Seq
from seq2seq_core.runtime.precision import autocast
from seq2seq_core.special_tokens import BOS_ID, EOS_ID

# Finished rows stop being computed once they are 1/DROP_FINISHED_AT of the rows still
# computed (0: never). Each drop copies the batch's memory, so dropping row by row would
# cost more than it saves. A batch sorted by length still ends over many steps (the
# shortest output of 64 is often half the longest), and Joey NMT computes every row to
# the last step.
DROP_FINISHED_AT = 8


@dataclass
class GreedyResult:
    ids: list[list[int]]  # per input sentence, without BOS/EOS
    # Per input sentence (len(ids), source length) attention weights when asked for and the
    # model has attention; otherwise None.
    attention: list[Tensor | None] | None = None


def greedy_decode(
    model: Seq2Seq,
    src_ids: Sequence[list[int]],
    *,
    batch_size: int,
    max_len_ratio: float,
    max_len_extra: int,
    device: str | torch.device = "cpu",
    return_attention: bool = False,
    precision: str = "fp32",
    kept_weights: PackedWeights | None = None,
    max_output_tokens: int | None = None,
    compiled: bool = False,
) -> GreedyResult:
    """Decode each source (subword ids, no BOS/EOS) by argmax, at most
    ``int(max_len_ratio * len(src) + max_len_extra)`` tokens. An empty source gives an
    empty output. The model is put in eval mode for the call and restored afterwards.
    ``precision="bf16"`` runs the matmuls under bf16 autocast (argmax over fp32 logits);
    ``"int8"`` multiplies the decoder's inputs by int8 weights (CPU only).
    ``kept_weights``: packed weights kept across calls (``Translator``), else packed anew.
    ``max_output_tokens`` caps every sentence's limit (``limits.output_limits``).
    ``compiled``: each batch's steps in one C++ call (``model/compiled_step.py``: the same
    tokens, without the Python around each step's ops) where it can run, else eagerly.
    """
    device = torch.device(device)
    ids: list[list[int]] = [[] for _ in src_ids]
    attention: list[Tensor | None] = [None for _ in src_ids]
    # Longest first, so each batch holds sentences of similar length (little padding).
    order = sorted((i for i, s in enumerate(src_ids) if s), key=lambda i: -len(src_ids[i]))
    was_training = model.training
    model.eval()
    with torch.inference_mode(), autocast(device, precision):
        # This call's fast paths and packed weights (int8 ones for int8 decoding).
        kernels = model.select_kernels(int8=precision == "int8", kept=kept_weights)
        step = compile_step(model.decoder, kernels) if compiled else None
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            sources = [src_ids[i] for i in rows]
            limits = output_limits(sources, max_len_ratio, max_len_extra, max_output_tokens)
            out, probs = _decode_batch(model, sources, limits, device, kernels, step)
            if return_attention and probs is not None:
                probs = probs.float().cpu()  # once per batch, not once per sentence
            for row, i in enumerate(rows):
                ids[i] = out[row]
                if return_attention and probs is not None:
                    attention[i] = probs[row, : len(out[row]), : len(src_ids[i])].clone()
    model.train(was_training)
    return GreedyResult(ids, attention if return_attention else None)


def _decode_batch(
    model: Seq2Seq,
    sources: list[list[int]],
    limits: list[int],
    device: torch.device,
    kernels: Kernels,
    step: CompiledStep | None,
) -> tuple[list[list[int]], Tensor | None]:
    src, src_len = pad_sources(sources)  # (B, S), (B,)
    limit_t = torch.tensor(limits, device=device)  # (B,)
    memory, state = model.encode(src.to(device), src_len, kernels)
    if step is not None:
        tokens, probs_all = step.greedy(
            state, memory, limit_t, min(limits), max(limits), DROP_FINISHED_AT
        )
    else:
        tokens, probs_all = _eager_steps(model, state, memory, limit_t, limits, kernels)
    result = []
    for row, seq in enumerate(tokens.tolist()):  # (B, T_out)
        seq = seq[: limits[row]]
        result.append(seq[: seq.index(EOS_ID)] if EOS_ID in seq else seq)
    return result, probs_all


def _eager_steps(
    model: Seq2Seq,
    state: DecoderState,
    memory: Memory,
    limit_t: Tensor,
    limits: list[int],
    kernels: Kernels,
) -> tuple[Tensor, Tensor | None]:
    """Argmax steps until every row emitted ``</s>`` or reached its limit: tokens
    (B, T_out), attention probs (B, T_out, S) or None. A row's positions after its end
    hold ``</s>`` (probs 0) once it was dropped, else whatever followed.
    ``CompiledStep.greedy`` is this loop in C++, the same ops in the same order."""
    batch, device = limit_t.size(0), limit_t.device
    first_limit, max_limit = min(limits), max(limits)
    tokens = torch.full((batch,), BOS_ID, dtype=torch.long, device=device)  # (B',)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)  # (B',)
    rows = torch.arange(batch, device=device)  # (B',) each computed row's row in the batch
    out = torch.full((batch, max_limit), EOS_ID, dtype=torch.long, device=device)
    out_probs: Tensor | None = None
    steps = max_limit
    for t in range(max_limit):
        logits, state, probs = model.decode_step(tokens, state, memory, kernels)  # (B', V)
        # (B',) the first maximum, as argmax's: max(dim) is the faster kernel on CPU, and
        # bf16 logits are cast first because its bf16 kernel is slower still.
        tokens = logits.float().max(dim=-1).indices
        out.select(1, t).index_copy_(0, rows, tokens)
        if probs is not None:
            if out_probs is None:
                out_probs = probs.new_zeros(batch, max_limit, probs.size(-1))
            out_probs.select(1, t).index_copy_(0, rows, probs)
        finished |= tokens == EOS_ID
        if t + 1 >= first_limit:  # a sentence can be at its limit from here on
            finished |= limit_t <= t + 1
        done = int(finished.sum())
        if done == finished.size(0):
            steps = t + 1
            break
        if done * DROP_FINISHED_AT >= finished.size(0):
            keep = (~finished).nonzero().squeeze(1)
            state, memory = select_state(state, keep), select_memory(memory, keep)
            tokens, limit_t, rows = tokens[keep], limit_t[keep], rows[keep]
            finished = finished[keep]
    probs_all = out_probs[:, :steps] if out_probs is not None else None  # (B, T_out, S)
    return out[:, :steps], probs_all
