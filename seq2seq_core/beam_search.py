"""Batched beam search: sentences x beams flattened into one batch dimension.

Each step runs one `decode_step` for every live hypothesis of every sentence, takes the
top 2K (beam, token) continuations per sentence, moves the ones ending in `</s>` (or at the
length limit) to that sentence's finished list, and keeps the best K others. A sentence
leaves the batch, and its rows are dropped from every tensor, once no live hypothesis can
still beat its n-best finished ones (or it has K finished): long batches shrink as they go.

Scores follow GNMT (Wu et al. 2016): log P(y) / lp(|y|) with lp(n) = ((5 + n) / 6) ** alpha,
where |y| counts the decoding steps taken (content tokens plus `</s>` when emitted).
With beam_size 1 the search takes the argmax at every step: exactly greedy decoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from seq2seq_core.batching import pad_sources
from seq2seq_core.decoder import DecoderState, Memory
from seq2seq_core.kernels import Kernels
from seq2seq_core.precision import autocast
from seq2seq_core.seq2seq import Seq2Seq
from seq2seq_core.special_tokens import BOS_ID, EOS_ID


@dataclass(frozen=True)
class Hypothesis:
    ids: list[int]  # without BOS/EOS
    score: float  # log_prob / length_penalty(steps)
    log_prob: float
    steps: int


def length_penalty(steps: int | Tensor, alpha: float) -> float | Tensor:
    return ((5.0 + steps) / 6.0) ** alpha


def beam_search(
    model: Seq2Seq,
    src_ids: Sequence[list[int]],
    *,
    beam_size: int,
    batch_size: int,
    max_len_ratio: float,
    max_len_extra: int,
    length_penalty_alpha: float = 1.0,
    nbest: int = 1,
    no_repeat_ngram: int = 0,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> list[list[Hypothesis]]:
    """The `nbest` best hypotheses per source (best first); an empty source gives one
    empty hypothesis. `batch_size` counts sentences (each takes `beam_size` rows).
    ``precision="bf16"`` runs the matmuls under bf16 autocast; scores are summed in fp32."""
    if not 1 <= nbest <= beam_size:
        raise ValueError(f"nbest must be in [1, beam_size={beam_size}], got {nbest}")
    device = torch.device(device)
    results: list[list[Hypothesis]] = [[Hypothesis([], 0.0, 0.0, 0)] for _ in src_ids]
    order = sorted((i for i, s in enumerate(src_ids) if s), key=lambda i: -len(src_ids[i]))
    was_training = model.training
    model.eval()
    settings = _Settings(
        beam_size, max_len_ratio, max_len_extra, length_penalty_alpha, nbest, no_repeat_ngram
    )
    with torch.inference_mode(), autocast(device, precision):
        kernels = model.select_kernels()  # this call's fast paths and packed weights
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            found = _search_batch(model, [src_ids[i] for i in rows], settings, device, kernels)
            for row, i in enumerate(rows):
                results[i] = found[row]
    model.train(was_training)
    return results


@dataclass(frozen=True)
class _Settings:
    beam: int
    max_len_ratio: float
    max_len_extra: int
    alpha: float
    nbest: int
    no_repeat_ngram: int


def _search_batch(
    model: Seq2Seq, sources: list[list[int]], s: _Settings, device: torch.device, kernels: Kernels
) -> list[list[Hypothesis]]:
    n_sent, k = len(sources), s.beam
    src, src_len = pad_sources(sources)  # (B, S), (B,)
    limits = torch.tensor(
        [max(1, int(s.max_len_ratio * len(x) + s.max_len_extra)) for x in sources], device=device
    )
    memory, state = model.encode(src.to(device), src_len, kernels)
    expand = torch.arange(n_sent, device=device).repeat_interleave(k)  # (B*K,)
    state = _select_state(state, expand)  # memory stays one row per sentence (see Memory)

    finished: list[list[Hypothesis]] = [[] for _ in sources]
    active = torch.arange(n_sent, device=device)  # sentence index of each live row group
    scores = torch.full((n_sent, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # step 0: expand only the first of K identical beams
    tokens = torch.full((n_sent * k,), BOS_ID, dtype=torch.long, device=device)
    history = torch.empty((n_sent * k, 0), dtype=torch.long, device=device)
    positions = torch.arange(2 * k, device=device)
    step = 0
    while active.numel():
        step += 1
        logits, state, _ = model.decode_step(tokens, state, memory, kernels)  # (B'K, V)
        log_probs = F.log_softmax(logits.float(), dim=-1)
        if s.no_repeat_ngram:
            _block_repeats(log_probs, history, s.no_repeat_ngram)
        vocab = log_probs.size(-1)
        n_live = active.numel()
        candidates = (scores.view(-1, 1) + log_probs).view(n_live, k * vocab)
        top_scores, top_index = candidates.topk(2 * k, dim=1)  # (B', 2K)
        top_beam, top_token = top_index // vocab, top_index % vocab
        at_limit = limits[active] <= step  # (B',)
        is_eos = top_token == EOS_ID
        finishing = (is_eos | at_limit.unsqueeze(1)) & (positions < k)
        if bool(finishing.any()):
            _collect(finishing, top_beam, top_token, top_scores, history, active, step, s, finished)
        # The K best continuations that did not just end (there are always K: at most one
        # `</s>` per beam among the 2K candidates).
        rank = is_eos.long() * (2 * k) + positions  # ended ones sort last
        keep = rank.topk(k, dim=1, largest=False).indices.sort(dim=1).values  # (B', K)
        scores = top_scores.gather(1, keep)
        beam = top_beam.gather(1, keep)
        tokens = top_token.gather(1, keep).view(-1)
        rows = (torch.arange(n_live, device=device).unsqueeze(1) * k + beam).view(-1)
        history = torch.cat([history.index_select(0, rows), tokens.unsqueeze(1)], dim=1)
        state = _select_state(state, rows)

        done = at_limit | _no_live_hope(scores, active, limits, finished, s)
        if bool(done.any()):
            alive = (~done).nonzero().squeeze(1)
            alive_rows = (alive.unsqueeze(1) * k + torch.arange(k, device=device)).view(-1)
            active, scores = active[alive], scores[alive]
            tokens, history = tokens[alive_rows], history.index_select(0, alive_rows)
            state = _select_state(state, alive_rows)
            memory = _select_memory(memory, alive)
    return [sorted(hyps, key=lambda h: -h.score)[: s.nbest] for hyps in finished]


def _collect(
    finishing: Tensor,
    top_beam: Tensor,
    top_token: Tensor,
    top_scores: Tensor,
    history: Tensor,
    active: Tensor,
    step: int,
    s: _Settings,
    finished: list[list[Hypothesis]],
) -> None:
    lp = length_penalty(step, s.alpha)
    k = s.beam
    for live, j in finishing.nonzero().tolist():
        row = live * k + int(top_beam[live, j])
        ids = history[row].tolist()
        token = int(top_token[live, j])
        if token != EOS_ID:  # stopped by the length limit: the token is part of the output
            ids.append(token)
        log_prob = float(top_scores[live, j])
        if log_prob == float("-inf"):  # a copy of an unexpanded first-step beam
            continue
        finished[int(active[live])].append(Hypothesis(ids, log_prob / lp, log_prob, step))


def _no_live_hope(
    scores: Tensor, active: Tensor, limits: Tensor, finished: list[list[Hypothesis]], s: _Settings
) -> Tensor:
    """Per live sentence: K hypotheses finished, or none of the live ones can still beat
    the n-th best finished one. Log-probs only fall as a hypothesis grows, so the best a
    live one can reach is its current log-prob over the penalty at the length limit."""
    done = []
    best_live = scores.max(dim=1).values.tolist()
    for live, sentence in enumerate(active.tolist()):
        hyps = finished[sentence]
        if len(hyps) >= s.beam:
            done.append(True)
            continue
        if len(hyps) < s.nbest:
            done.append(False)
            continue
        nth = sorted((h.score for h in hyps), reverse=True)[s.nbest - 1]
        bound = best_live[live] / length_penalty(int(limits[sentence]), s.alpha)
        done.append(nth >= bound)
    return torch.tensor(done, dtype=torch.bool, device=scores.device)


def _block_repeats(log_probs: Tensor, history: Tensor, n: int) -> None:
    """Forbid any token that would repeat an n-gram already in the hypothesis."""
    if history.size(1) < n - 1 or n < 1:
        return
    for row, seq in enumerate(history.tolist()):
        prefix = tuple(seq[len(seq) - n + 1 :]) if n > 1 else ()
        banned = {
            seq[i + n - 1] for i in range(len(seq) - n + 1) if tuple(seq[i : i + n - 1]) == prefix
        }
        if banned:
            log_probs[row, list(banned)] = float("-inf")


def _select_state(state: DecoderState, index: Tensor) -> DecoderState:
    hidden = state.hidden
    if isinstance(hidden, tuple):
        hidden = tuple(h.index_select(1, index) for h in hidden)
    else:
        hidden = hidden.index_select(1, index)
    att = state.att_vector.index_select(0, index) if state.att_vector is not None else None
    return DecoderState(hidden, att)


def _select_memory(memory: Memory, index: Tensor) -> Memory:
    keys = memory.proj_keys.index_select(0, index) if memory.proj_keys is not None else None
    return Memory(
        memory.outputs.index_select(0, index),
        keys,
        memory.mask.index_select(0, index),
        memory.src_len.index_select(0, index),
    )
