"""runtime.distributed's collectives: two real gloo ranks exchange JSON, bytes and RNG
states as tensors, and refuse what a peer must not be able to send (no pickle anywhere)."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest

from seq2seq_core.runtime.distributed import (
    MAX_MESSAGE_BYTES,
    MessageError,
    Topology,
    all_gather_json,
    broadcast_json,
    decode_json,
    encode_json,
    float_dict,
)
from tests.support import run_gloo_ranks

WORKER = textwrap.dedent(
    """
    import json, os, pickle, sys
    sys.path.insert(0, sys.argv[1])
    import torch
    import torch.distributed as dist
    from seq2seq_core.runtime import distributed as d

    dist.init_process_group("gloo")
    topo = d.topology()
    r = topo.rank
    out = {}
    sent = {"valid_bleu": 12.5, "valid_loss": float("inf"), "epoch": 3} if r == 0 else None
    out["broadcast"] = d.broadcast_json(sent, topo)
    out["gathered"] = d.all_gather_json({"rank": r, "name": "é" * (r + 1)}, topo)
    out["bytes"] = [b.hex() for b in d.all_gather_bytes(bytes(range(r * 3)), topo)]
    torch.manual_seed(100 + r)
    states = d.all_gather_uint8({"torch": torch.get_rng_state()}, topo)
    out["rng_equal_own"] = torch.equal(states[r]["torch"], torch.get_rng_state())
    out["rng_differ"] = not torch.equal(states[0]["torch"], states[1]["torch"])
    # Rank 1 sends one byte over the limit: every rank refuses, and none hangs.
    try:
        d.all_gather_bytes(b"x" * (64 + r), topo, max_bytes=64)
        out["oversize"] = "accepted"
    except d.MessageError as exc:
        out["oversize"] = str(exc)
    # Rank 0 broadcasts a pickle that would create a file when unpickled: refused as not
    # JSON, never unpickled (what broadcast_object_list would have run on rank 1).
    marker = os.path.join(sys.argv[3], "unpickled-on-rank1")

    class Payload:
        def __reduce__(self):
            return (open, (marker, "w"))

    evil = pickle.dumps(Payload(), protocol=4) if r == 0 else None
    try:
        d.decode_json(d.broadcast_bytes(evil, topo))
        out["pickle"] = "decoded"
    except d.MessageError as exc:
        out["pickle"] = str(exc)
    out["after"] = d.all_gather_json(r * 10, topo)  # the group still works
    with open(os.path.join(sys.argv[3], f"rank{r}.json"), "w") as f:
        json.dump(out, f)
    dist.destroy_process_group()
    """
)


def test_two_gloo_ranks_exchange_json_and_refuse_oversize_and_pickles(tmp_path: Path) -> None:
    run_gloo_ranks(WORKER, tmp_path)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank, out in enumerate(reports):
        assert out["broadcast"] == {"valid_bleu": 12.5, "valid_loss": math.inf, "epoch": 3}
        assert out["gathered"] == [{"rank": 0, "name": "é"}, {"rank": 1, "name": "éé"}]
        assert out["bytes"] == ["", "000102"]
        assert out["rng_equal_own"] and out["rng_differ"]
        assert out["oversize"] == "rank 1 sent a message of 65 bytes (limit 64)", rank
        assert out["pickle"] == "not a JSON message (UnicodeDecodeError)", rank
        assert out["after"] == [0, 10]
    assert not (tmp_path / "unpickled-on-rank1").exists()


def test_one_process_is_a_no_op_that_still_bounds_and_validates() -> None:
    solo = Topology()
    value = {"a": [1, 2.5, None]}
    assert broadcast_json(value, solo) is value
    assert all_gather_json(value, solo) == [value]
    assert decode_json(encode_json({"b": math.nan}))["b"] != 0  # NaN travels
    assert MAX_MESSAGE_BYTES == 1 << 20
    for bad in (b"\x80\x04K\x01.", b"{", b"[" * 100_000):  # pickle, cut JSON, too deep
        with pytest.raises(MessageError, match="not a JSON message"):
            decode_json(bad)
    assert float_dict({"loss": 1, "bleu": 2.5}) == {"loss": 1.0, "bleu": 2.5}
    for bad in ([1.0], {"loss": "1"}, {"loss": True}, {1: 1.0}, None):
        with pytest.raises(MessageError, match="expected an object of numbers"):
            float_dict(bad)
