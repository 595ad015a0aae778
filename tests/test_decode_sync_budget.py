"""Host syncs per decoding step: a small constant, whatever the batch size.

On a GPU every sync stalls the host until the queued kernels finish; a search that reads
one scalar per live sentence or per finished hypothesis at each step crawls at batch 64.
The counter (``tests/host_syncs.py``) sees them on the CPU too. The same two sentences are
decoded as a batch of 2 and, repeated, as a batch of 16: every sentence then takes the same
steps in both, so their sync counts must be equal, and small per step.
"""

from __future__ import annotations

import pytest
import torch
from conftest import DECODER_VARIANTS, random_model
from host_syncs import HostSyncCounter

from seq2seq_core.decoding.beam_search import beam_search
from seq2seq_core.decoding.greedy import greedy_decode

KW = {"max_len_ratio": 1.5, "max_len_extra": 3, "device": "cpu"}
SOURCES = [[5, 9, 12, 7, 21, 4, 8], [11, 6, 19, 23, 5, 14]]
# Per step: at most this many syncs (the "all finished?" check, and the indices of the
# sentences that leave the batch), plus a constant per call (lengths to the encoder, the
# results to the host once at the end).
PER_STEP, PER_CALL = 2, 12


def _count(model: torch.nn.Module, beam: int, copies: int) -> tuple[int, int, list]:
    """(syncs, decoder steps, outputs) of decoding SOURCES * copies in one batch."""
    steps = 0
    decode_step = model.decode_step

    def counted(*args, **kwargs):
        nonlocal steps
        steps += 1
        return decode_step(*args, **kwargs)

    model.decode_step = counted
    sources = SOURCES * copies
    try:
        with HostSyncCounter() as counter:
            if beam == 1:
                # With the attention weights, which go to the host once per batch too.
                found = greedy_decode(
                    model, sources, batch_size=len(sources), return_attention=True, **KW
                )
                pairs = zip(found.ids, found.attention, strict=True)
                out = [(ids, att.shape) for ids, att in pairs]
            else:
                found = beam_search(model, sources, beam_size=beam, batch_size=len(sources), **KW)
                out = [[(h.ids, round(h.score, 5)) for h in hyps] for hyps in found]
    finally:
        del model.decode_step
    print(f"beam {beam} batch {len(sources)}: {steps} steps, {dict(counter.counts)}")
    return counter.total, steps, out


@pytest.mark.parametrize("beam", [1, 5])
# gru + bahdanau; lstm + luong with input feeding. The EOS bias makes one sentence (or
# some hypotheses) end early and the others run on.
@pytest.mark.parametrize(("variant", "eos_bias"), [(1, 0.2), (8, 0.3)])
def test_syncs_per_step_are_few_and_independent_of_batch_size(
    beam: int, variant: int, eos_bias: float
) -> None:
    model = random_model(DECODER_VARIANTS[variant], eos_bias=eos_bias)
    small, steps, out_small = _count(model, beam, copies=1)
    large, large_steps, out_large = _count(model, beam, copies=8)
    assert out_large == out_small * 8  # the same sentences, the same results
    assert large_steps == steps > 3
    assert large == small
    assert small <= PER_STEP * steps + PER_CALL
