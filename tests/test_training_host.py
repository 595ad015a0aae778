"""The training loop's host side (issue 18): few host syncs per optimizer step, resume on
a host with fewer GPUs than the checkpoint's, per-rank RNG streams, and one DDP all-reduce
per optimizer step under gradient accumulation."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from gloo_ranks import run_gloo_ranks
from host_syncs import HostSyncCounter
from test_training import PAIRS, CharTokenizer, Recorder, _cfg, _train

from seq2seq_core.training.loop import train_epoch
from seq2seq_core.training.session import TrainingData, set_up

REPO = Path(__file__).resolve().parents[1]

# Host work on tensors that live on the CPU by design, whatever the device: collating
# batches (batching.py) and the packing of source lengths (PackedSequence.batch_sizes is a
# CPU tensor; pack_padded_sequence wants the lengths there). None of it waits for a device.
HOST_SIDE = (
    os.path.join("seq2seq_core", "data", "batches.py"),
    os.path.join("torch", "nn", "utils", "rnn.py"),
    os.path.join("seq2seq_core", "kernels", "packed_rnn.py"),
)


def _host_lengths(args: tuple) -> bool:
    """``src_len`` (B,) int64, which ``Batch`` keeps on the CPU for every device."""
    t = args[0] if args else None
    return (
        isinstance(t, torch.Tensor)
        and t.device.type == "cpu"
        and t.dtype == torch.long
        and (t.dim() == 1)
    )


class DeviceSyncCounter(HostSyncCounter):
    """``HostSyncCounter`` without the reads of host-resident tensors (``HOST_SIDE``)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        frame = sys._getframe(1)
        host = _host_lengths(args) and getattr(func, "__name__", "") == "cpu"
        while frame is not None and not host:
            host = frame.f_code.co_filename.endswith(HOST_SIDE)
            frame = frame.f_back
        if host:
            return func(*args, **(kwargs or {}))
        return super().__torch_function__(func, types, args, kwargs)


def _epoch_syncs(tmp_path: Path, batch_tokens: int, accumulate: int) -> tuple[int, int]:
    """(host syncs, optimizer steps) of one training epoch, validation excluded."""
    cfg = _cfg(
        batch_tokens=batch_tokens, accumulate_steps=accumulate, log_every_steps=10_000,
        checkpoint_every_steps=10_000, max_epochs=1, device="cpu",
    )  # fmt: skip
    data = TrainingData.encode(CharTokenizer(), PAIRS * 4, PAIRS[:3], cfg.train)
    session = set_up(cfg, data, tmp_path, [Recorder()], None, None, time.monotonic)
    with DeviceSyncCounter() as counter:
        train_epoch(session)
    assert session.state.step >= 4
    return counter.total, session.state.step


def test_training_syncs_per_step_are_bounded_and_independent_of_batch_size(
    tmp_path: Path,
) -> None:
    small, small_steps = _epoch_syncs(tmp_path / "small", batch_tokens=30, accumulate=2)
    large, large_steps = _epoch_syncs(tmp_path / "large", batch_tokens=90, accumulate=1)
    print(f"syncs: {small} in {small_steps} steps (small batches), {large} in {large_steps}")
    # One read of the step's numbers per log interval (here: the epoch's end), however
    # many batches, sentences or steps it holds.
    assert small <= 2 and large <= 2
    assert small / small_steps <= 1 and large / large_steps <= 1


def test_step_callbacks_see_every_step_with_large_log_interval(tmp_path: Path) -> None:
    """Reading the numbers every ``log_every_steps`` defers callbacks; it skips none."""
    every = Recorder()
    _train(_cfg(max_epochs=1, log_every_steps=1), tmp_path / "every", callbacks=[every])
    rare = Recorder()
    _train(_cfg(max_epochs=1, log_every_steps=1000), tmp_path / "rare", callbacks=[rare])
    assert [s for s, _ in rare.steps] == [s for s, _ in every.steps]
    assert [m["loss"] for _, m in rare.steps] == [m["loss"] for _, m in every.steps]
    assert [m["grad_norm"] for _, m in rare.steps] == [m["grad_norm"] for _, m in every.steps]
    assert all(isinstance(m["loss"], float) for _, m in rare.steps)


class FakeOneGpu:
    """torch.cuda as a host with one GPU shows it: the calls that index devices raise for
    any index past the first, like CUDA's own default-generator lookup."""

    def __init__(self) -> None:
        self.restored: list[int] = []

    def set_rng_state(self, state: torch.Tensor, device: int | str | torch.device = "cuda") -> None:
        index = torch.device(device).index if not isinstance(device, int) else device
        if (index or 0) >= 1:
            raise IndexError("tuple index out of range")
        self.restored.append(index or 0)

    def set_rng_state_all(self, states: list[torch.Tensor]) -> None:
        for i, state in enumerate(states):
            self.set_rng_state(state, i)

    def get_rng_state(self, device: int | str | torch.device = "cuda") -> torch.Tensor:
        return torch.zeros(16, dtype=torch.uint8)

    def get_rng_state_all(self) -> list[torch.Tensor]:
        return [self.get_rng_state(0)]


def test_resume_from_a_checkpoint_of_more_gpus_than_visible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    cfg1 = _cfg({"dropout": 0.3}, max_epochs=1, device="cpu")
    _train(cfg1, tmp_path)
    last = tmp_path / "last.pt"
    saved = torch.load(last, weights_only=True)
    # Written by a process that saw four GPUs (one RNG state each).
    saved["rng"]["cuda"] = [torch.randint(0, 255, (16,), dtype=torch.uint8) for _ in range(4)]
    torch.save(saved, last)
    fake = FakeOneGpu()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for name in ("set_rng_state", "set_rng_state_all", "get_rng_state", "get_rng_state_all"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    caplog.set_level(logging.INFO, logger="seq2seq_core")
    result = _train(_cfg({"dropout": 0.3}, max_epochs=2, device="cpu"), tmp_path)
    assert result.epochs == 2  # resumed after epoch 1 and trained epoch 2
    assert "resuming from" in caplog.text
    assert "CUDA RNG" in caplog.text  # says which saved states it could not restore


DDP_WORKER = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, sys.argv[1])
    import torch
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from test_training import PAIRS, _cfg, _train
    from seq2seq_core.training import session as training

    buckets = []

    def counting_hook(state, bucket):
        buckets.append(bucket.index())
        return allreduce_hook(state, bucket)

    real_wrap = training.wrap

    def wrap(model, topo, device):
        ddp = real_wrap(model, topo, device)
        ddp.register_comm_hook(None, counting_hook)
        return ddp

    training.wrap = wrap

    class Report:
        steps = 0
        def on_step(self, step, metrics): Report.steps = step
        def on_epoch(self, epoch, metrics): pass
        def on_train_end(self, model):
            out = {"steps": Report.steps, "buckets": buckets,
                   "draws": torch.rand(4).tolist()}
            path = sys.argv[3] + f"/rank{os.environ['RANK']}.json"
            with open(path, "w") as f:
                json.dump(out, f)

    # dropout 0, teacher forcing 1: nothing draws from the global RNG while training,
    # so the draws after it tell the ranks' seeds apart.
    cfg = _cfg(max_epochs=1, accumulate_steps=4, device="cpu")
    _train(cfg, sys.argv[2], pairs=PAIRS * 4, callbacks=[Report()])
    """
)


def test_ddp_accumulation_all_reduces_once_per_step_and_ranks_draw_their_own(
    tmp_path: Path,
) -> None:
    run_gloo_ranks(DDP_WORKER, tmp_path)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for report in reports:
        steps, buckets = report["steps"], report["buckets"]
        assert steps >= 2
        per_step = len(set(buckets))
        # exactly one all-reduce per bucket per optimizer step, none per micro-batch
        assert len(buckets) == steps * per_step, (len(buckets), steps, per_step)
    assert reports[0]["draws"] != reports[1]["draws"]  # each rank its own RNG stream


def test_background_feed_gives_the_same_batches_and_stops_cleanly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CUDA route (a collating thread, pinned memory), run on the CPU: the batches of
    the main-thread route, in order; an early close ends the thread; errors reach the
    caller."""
    from seq2seq_core.data import batches as batching
    from seq2seq_core.data.batches import encode_pairs, epoch_order, feed

    data = encode_pairs(CharTokenizer(), PAIRS * 4, 100)
    order = epoch_order(data, 40, seed=3, epoch=1)
    cpu = torch.device("cpu")
    plain = list(feed(data, order, cpu))
    monkeypatch.setattr(batching, "collates_in_background", lambda device: True)
    monkeypatch.setattr(batching.Batch, "pin_memory", lambda self: self)  # no CUDA here
    background = feed(data, order, cpu)
    assert isinstance(background, batching._BackgroundFeed)
    got = list(background)
    assert [b.indices for b in got] == [b.indices for b in plain]
    for a, b in zip(got, plain, strict=True):
        assert torch.equal(a.tgt_out, b.tgt_out) and torch.equal(a.real, b.real)
    early = feed(data, order, cpu)
    next(early)
    early.close()
    assert not early.thread.is_alive()
    broken = feed(data, [*order[:1], [10_000]], cpu)  # no such pair
    next(broken)
    with pytest.raises(IndexError):
        next(broken)


def test_real_positions_are_the_mask_of_real_tokens() -> None:
    from seq2seq_core.data.batches import collate, encode_pairs
    from seq2seq_core.special_tokens import PAD_ID

    data = encode_pairs(CharTokenizer(), PAIRS, 100)
    batch = collate(data.src, data.tgt, [0, 3, 5, 1])
    mask = (batch.tgt_out != PAD_ID).reshape(-1)
    assert torch.equal(batch.real, mask.nonzero().squeeze(1))
    assert batch.real.numel() == batch.ntokens


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
