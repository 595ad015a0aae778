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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from seq2seq_core.data.batches import pad_sources
from seq2seq_core.decoding.limits import output_limits
from seq2seq_core.kernels import Kernels
from seq2seq_core.kernels.packed_weights import PackedWeights
from seq2seq_core.model.compiled_step import compile_step
from seq2seq_core.model.decoder import DecoderState, Memory, select_memory, select_state
from seq2seq_core.model.seq2seq import Seq2Seq
from seq2seq_core.runtime.precision import autocast
from seq2seq_core.special_tokens import BOS_ID, EOS_ID

# tokens (B,), state, memory -> logits (B, V), next state, probs: the model's step on the
# call's kernels, eager or compiled.
StepFn = Callable[[Tensor, DecoderState, Memory], tuple[Tensor, DecoderState, Tensor | None]]


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
    kept_weights: PackedWeights | None = None,
    max_output_tokens: int | None = None,
    compiled: bool = False,
) -> list[list[Hypothesis]]:
    """The `nbest` best hypotheses per source (best first); an empty source gives one
    empty hypothesis. `batch_size` counts sentences (each takes `beam_size` rows).
    ``precision="bf16"`` runs the matmuls under bf16 autocast, ``"int8"`` the decoder's from
    int8 weights (CPU only); scores are summed in fp32. ``kept_weights``: packed weights kept
    across calls (``Translator``), else packed anew. ``max_output_tokens`` caps every
    sentence's length limit (``limits.output_limits``). ``compiled``: each step's model
    work in one C++ call (``model/compiled_step.py``: the same scores) where it can run."""
    if not 1 <= nbest <= beam_size:
        raise ValueError(f"nbest must be in [1, beam_size={beam_size}], got {nbest}")
    device = torch.device(device)
    results: list[list[Hypothesis]] = [[Hypothesis([], 0.0, 0.0, 0)] for _ in src_ids]
    order = sorted((i for i, s in enumerate(src_ids) if s), key=lambda i: -len(src_ids[i]))
    was_training = model.training
    model.eval()
    settings = _Settings(
        beam_size,
        max_len_ratio,
        max_len_extra,
        length_penalty_alpha,
        nbest,
        no_repeat_ngram,
        max_output_tokens,
    )
    with torch.inference_mode(), autocast(device, precision):
        # This call's fast paths and packed weights (int8 ones for int8 decoding).
        kernels = model.select_kernels(int8=precision == "int8", kept=kept_weights)
        step = compile_step(model.decoder, kernels) if compiled else None
        decode_step = step or partial(model.decode_step, kernels=kernels)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            sources = [src_ids[i] for i in rows]
            found = _search_batch(model, sources, settings, device, kernels, decode_step)
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
    max_output_tokens: int | None = None


def _search_batch(
    model: Seq2Seq,
    sources: list[list[int]],
    s: _Settings,
    device: torch.device,
    kernels: Kernels,
    decode_step: StepFn,
) -> list[list[Hypothesis]]:
    n_sent, k = len(sources), s.beam
    src, src_len = pad_sources(sources)  # (B, S), (B,)
    host_limits = output_limits(sources, s.max_len_ratio, s.max_len_extra, s.max_output_tokens)
    limits = torch.tensor(host_limits, device=device)
    # The penalty at each sentence's length limit, in Python floats as the scores are.
    limit_lp = torch.tensor(
        [float(length_penalty(n, s.alpha)) for n in host_limits], dtype=torch.float64, device=device
    )
    memory, state = model.encode(src.to(device), src_len, kernels)
    expand = torch.arange(n_sent, device=device).repeat_interleave(k)  # (B*K,)
    state = select_state(state, expand)  # memory stays one row per sentence (see Memory)

    finished = _Finished(n_sent, k, max(host_limits), device)
    active = torch.arange(n_sent, device=device)  # sentence index of each live row group
    scores = torch.full((n_sent, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # step 0: expand only the first of K identical beams
    tokens = torch.full((n_sent * k,), BOS_ID, dtype=torch.long, device=device)
    history = torch.empty((n_sent * k, 0), dtype=torch.long, device=device)
    positions = torch.arange(2 * k, device=device)
    first_limit, any_finished = min(host_limits), False
    step = 0
    while active.numel():
        step += 1
        logits, state, _ = decode_step(tokens, state, memory)  # (B'K, V)
        log_probs = F.log_softmax(logits.float(), dim=-1)
        if s.no_repeat_ngram:
            _block_repeats(log_probs, history, s.no_repeat_ngram)
        n_live = active.numel()
        # Each hypothesis's 2K best tokens first: a sentence's 2K best continuations are
        # among them, and ranking K x 2K candidates instead of K x V is a far smaller
        # top-k than over the whole vocabulary.
        width = min(2 * k, log_probs.size(-1))
        row_scores, row_tokens = log_probs.topk(width, dim=1)  # (B'K, width)
        candidates = (scores.view(-1, 1) + row_scores).view(n_live, k * width)
        top_scores, top_index = candidates.topk(2 * k, dim=1)  # (B', 2K)
        top_beam = top_index // width
        top_token = row_tokens.view(n_live, k * width).gather(1, top_index)
        at_limit = limits[active] <= step  # (B',)
        is_eos = top_token == EOS_ID
        finishing = (is_eos | at_limit.unsqueeze(1)) & (positions < k)
        if step >= first_limit or bool(finishing.any()):  # the step's one sync, mostly
            finished.add(finishing, top_beam, top_token, top_scores, history, active, step, s)
            any_finished = True
        # The K best continuations that did not just end (there are always K: at most one
        # `</s>` per beam among the 2K candidates).
        rank = is_eos.long() * (2 * k) + positions  # ended ones sort last
        keep = rank.topk(k, dim=1, largest=False).indices.sort(dim=1).values  # (B', K)
        scores = top_scores.gather(1, keep)
        beam = top_beam.gather(1, keep)
        tokens = top_token.gather(1, keep).view(-1)
        rows = (torch.arange(n_live, device=device).unsqueeze(1) * k + beam).view(-1)
        history = torch.cat([history.index_select(0, rows), tokens.unsqueeze(1)], dim=1)
        state = select_state(state, rows)

        if not any_finished:  # no sentence can be done before one of its hypotheses ends
            continue
        done = at_limit | _no_live_hope(
            scores.max(dim=1).values,
            finished.scores.index_select(0, active),
            finished.count.index_select(0, active),
            limit_lp.index_select(0, active),
            s,
        )
        alive = (~done).nonzero().squeeze(1)  # the step's second sync
        if alive.numel() < n_live:
            alive_rows = (alive.unsqueeze(1) * k + torch.arange(k, device=device)).view(-1)
            active, scores = active[alive], scores[alive]
            tokens, history = tokens[alive_rows], history.index_select(0, alive_rows)
            state = select_state(state, alive_rows)
            memory = select_memory(memory, alive)
    return finished.to_host(s)


class _Finished:
    """The finished hypotheses of one batch, kept on the device: slot j of sentence i is
    its j-th finished hypothesis, in the order they ended (so that a stable sort by score at
    the end breaks ties as the search found them). Adding them costs no host sync; they
    reach the host once, when the batch is done.

    A live sentence has fewer than K finished (else it is done) and at most K end in one
    step: 2K slots suffice. One more slot per sentence takes the writes of candidates that
    did not end, so that every step writes the same fixed number of rows.
    """

    def __init__(self, n_sent: int, k: int, max_len: int, device: torch.device) -> None:
        self.slots = 2 * k + 1  # the last one is the discard slot
        shape = (n_sent, self.slots)
        self.log_prob = torch.full(shape, float("-inf"), device=device)
        # log_prob / lp(steps) in float64, as the host computes the scores; -inf when empty.
        self._scores = torch.full(shape, float("-inf"), dtype=torch.float64, device=device)
        self.steps = torch.zeros(shape, dtype=torch.long, device=device)
        self.eos = torch.zeros(shape, dtype=torch.bool, device=device)
        self.ids = torch.zeros((n_sent, self.slots, max_len), dtype=torch.long, device=device)
        self.count = torch.zeros(n_sent, dtype=torch.long, device=device)

    @property
    def scores(self) -> Tensor:
        """(n_sent, 2K) float64: what the stop rule compares, -inf in empty slots."""
        return self._scores[:, : self.slots - 1]

    def add(
        self,
        finishing: Tensor,
        top_beam: Tensor,
        top_token: Tensor,
        top_scores: Tensor,
        history: Tensor,
        active: Tensor,
        step: int,
        s: _Settings,
    ) -> None:
        """Store the candidates of this step that end (`finishing`, (B', 2K), only in the
        first K columns): `</s>` or the length limit."""
        k = s.beam
        log_prob = top_scores[:, :k]  # (B', K)
        # A -inf candidate is a copy of an unexpanded first-step beam: never a hypothesis.
        ends = finishing[:, :k] & (log_prob > float("-inf"))
        slot = self.count.index_select(0, active).unsqueeze(1) + ends.long().cumsum(1) - 1
        slot = torch.where(ends, slot, self.slots - 1)
        flat = (active.unsqueeze(1) * self.slots + slot).view(-1)  # (B'K,)
        rows = (torch.arange(active.numel(), device=active.device).unsqueeze(1) * k).view(-1, 1)
        rows = (rows + top_beam[:, :k]).view(-1)
        token = top_token[:, :k].reshape(-1, 1)
        seqs = torch.cat([history.index_select(0, rows), token], dim=1)  # (B'K, step)
        self.ids.view(-1, self.ids.size(2))[:, :step].index_copy_(0, flat, seqs)
        self.log_prob.view(-1).index_copy_(0, flat, log_prob.reshape(-1))
        lp = float(length_penalty(step, s.alpha))
        self._scores.view(-1).index_copy_(0, flat, log_prob.reshape(-1).double() / lp)
        self.steps.view(-1).index_fill_(0, flat, step)
        self.eos.view(-1).index_copy_(0, flat, (token.view(-1) == EOS_ID))
        self.count.index_add_(0, active, ends.sum(dim=1))

    def to_host(self, s: _Settings) -> list[list[Hypothesis]]:
        """Per sentence, its n-best, best first (ties in the order they ended)."""
        count, log_prob = self.count.tolist(), self.log_prob.tolist()
        steps, eos, ids = self.steps.tolist(), self.eos.tolist(), self.ids.tolist()
        results = []
        for i, n in enumerate(count):
            hyps = [
                Hypothesis(
                    ids[i][j][: steps[i][j] - eos[i][j]],
                    log_prob[i][j] / length_penalty(steps[i][j], s.alpha),
                    log_prob[i][j],
                    steps[i][j],
                )
                for j in range(n)
            ]
            results.append(sorted(hyps, key=lambda h: -h.score)[: s.nbest])
        return results


def _no_live_hope(
    best_live: Tensor, finished: Tensor, count: Tensor, limit_lp: Tensor, s: _Settings
) -> Tensor:
    """Per live sentence: K hypotheses finished, or none of the live ones can still beat
    the n-th best finished one. Log-probs only fall as a hypothesis grows, so the best a
    live one can reach is its current log-prob over the penalty at the length limit.

    best_live (B',) the best live log-prob; finished (B', slots) finished scores, -inf in
    empty slots; count (B',) how many finished; limit_lp (B',) float64 lp(length limit)."""
    nth = finished.topk(s.nbest, dim=1).values[:, -1]  # (B',)
    bound = best_live.double() / limit_lp
    return (count >= s.beam) | ((count >= s.nbest) & (nth >= bound))


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
