"""runtime.distributed: the process group's lifetime and the replica digests."""

from __future__ import annotations

import contextlib

import pytest
import torch

from seq2seq_core.runtime.distributed import Topology, replica_digests, weights_digest


def test_process_group_is_destroyed_at_the_end_and_on_error() -> None:
    import torch.distributed as dist

    from seq2seq_core.runtime.distributed import process_group

    for fail in (False, True):
        store = dist.HashStore()
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)
        expect = pytest.raises(RuntimeError) if fail else contextlib.nullcontext()
        with expect, process_group():
            assert dist.is_initialized()
            if fail:
                raise RuntimeError("training failed")
        assert not dist.is_initialized()


def test_weights_digest_sees_one_changed_weight() -> None:
    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert weights_digest(a) == weights_digest(b)
    assert replica_digests(a, Topology()) == [weights_digest(a)]
    with torch.no_grad():
        b.weight[0, 0] += 1e-6
    assert weights_digest(a) != weights_digest(b)
