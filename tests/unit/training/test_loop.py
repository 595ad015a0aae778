"""training.loop: a tiny model learns, runs repeat exactly, host syncs per step, gradient
accumulation and DDP across ranks, and the losses are pinned."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from seq2seq_core import stages
from seq2seq_core.config import config_from_dict
from seq2seq_core.decoding.greedy import greedy_decode
from seq2seq_core.model.checkpoint import load_model
from seq2seq_core.model.seq2seq import build_model
from seq2seq_core.training.loop import train_epoch
from seq2seq_core.training.session import TrainingData, set_up
from tests.support import (
    PAIRS,
    CharTokenizer,
    HostSyncCounter,
    Recorder,
    run_gloo_ranks,
    run_training,
    tiny_params,
    train_cfg,
)


@pytest.mark.parametrize(
    "model",
    [
        {"cell": "gru", "attention": "bahdanau"},
        {"cell": "lstm", "attention": "luong", "input_feeding": True},
        {"cell": "lstm", "attention": "none", "bidirectional": False},
    ],
    ids=["gru-bahdanau", "lstm-luong-feed", "lstm-plain"],
)
def test_tiny_model_memorises_pairs(tmp_path: Path, model: dict) -> None:
    cfg = train_cfg({**model, "hidden_size": 64}, batch_tokens=1000, max_epochs=150)
    result = run_training(cfg, tmp_path)
    assert result.history[-1]["train_loss"] < 0.05
    assert result.best_valid_bleu == pytest.approx(100.0)
    trained, _ = load_model(Path(result.best_checkpoint))
    tok = CharTokenizer()
    out = greedy_decode(
        trained,
        tok.encode_src([s for s, _ in PAIRS]),
        batch_size=4,
        max_len_ratio=2.0,
        max_len_extra=5,
        device="cpu",
    )
    assert tok.decode_tgt(out.ids) == [t for _, t in PAIRS]


def test_seed_config_with_teacher_forcing_half_learns(tmp_path: Path) -> None:
    cfg = train_cfg(
        {"cell": "lstm", "attention": "none", "bidirectional": False},
        teacher_forcing=0.5,
        batch_tokens=1000,
        max_epochs=60,
    )
    result = run_training(cfg, tmp_path)
    assert result.history[-1]["train_loss"] < 0.5 * result.history[0]["train_loss"]


def test_same_seed_same_losses_and_callbacks(tmp_path: Path) -> None:
    rec = Recorder()
    a = run_training(train_cfg(), tmp_path / "a", callbacks=[rec])
    b = run_training(train_cfg(), tmp_path / "b")
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    assert [h["valid_loss"] for h in a.history] == [h["valid_loss"] for h in b.history]
    assert [e for e, _ in rec.epochs] == [1, 2]
    assert [s for s, _ in rec.steps] == list(range(1, a.steps + 1))
    assert set(rec.steps[0][1]) == {"loss", "lr", "grad_norm", "tokens_per_s", "teacher_forcing"}
    assert set(rec.epochs[0][1]) == {
        "train_loss",
        "valid_loss",
        "valid_ppl",
        "valid_bleu",
        "epoch_seconds",
        "tokens_per_s",
        "lr",
    }
    history = json.loads((tmp_path / "a" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert a.stop_reason == "max_epochs" and a.epochs == 2


def test_bf16_precision_from_the_config_trains(tmp_path: Path) -> None:
    fp32 = run_training(train_cfg(max_epochs=3, threads=1), tmp_path / "fp32")
    bf16 = run_training(train_cfg(max_epochs=3, threads=1, precision="bf16"), tmp_path / "bf16")
    losses = [h["train_loss"] for h in bf16.history]
    assert losses[-1] < losses[0]
    # autocast really ran: bf16 matmuls round differently from fp32
    assert losses != pytest.approx([h["train_loss"] for h in fp32.history], rel=1e-4)


def test_early_stopping_says_why(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="seq2seq_core"):
        run_training(train_cfg(lr=0.0, max_epochs=6, early_stopping_patience=2), tmp_path)
    assert caplog.records[-1].getMessage() == (
        "stopping: early stopping: no better valid BLEU for 2 epochs "
        "(train.early_stopping_patience 2)"
    )


def test_accumulation_and_early_stopping(tmp_path: Path) -> None:
    one = run_training(train_cfg(max_epochs=1), tmp_path / "one")
    acc = run_training(train_cfg(max_epochs=1, accumulate_steps=2), tmp_path / "acc")
    assert acc.steps == math.ceil(one.steps / 2)
    stuck = run_training(
        train_cfg(lr=0.0, max_epochs=6, early_stopping_patience=2), tmp_path / "stuck"
    )
    assert stuck.stop_reason == "early_stopping" and stuck.epochs == 3


DDP_WORKER = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, sys.argv[1])
    import torch
    from tests.support import train_cfg, run_training

    class Save:
        def on_step(self, step, metrics): pass
        def on_epoch(self, epoch, metrics): pass
        def on_train_end(self, model):
            torch.save(model.state_dict(), sys.argv[3] + f"/rank{os.environ['RANK']}.pt")

    torch.manual_seed(1234)
    run_training(train_cfg(max_epochs=2), sys.argv[2], callbacks=[Save()])
    """
)


def test_ddp_gloo_two_ranks_equal_one_process_accumulating_both(tmp_path: Path) -> None:
    """Rank r trains batches r, r + 2, ...; DDP averages their gradients every step. One
    process accumulating the same two batches per step (4 batches an epoch, so no short
    group) must end with the same weights."""
    run_gloo_ranks(DDP_WORKER, tmp_path)
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert (tmp_path / "ckpt" / "best.pt").exists()  # rank 0 wrote the checkpoints
    single = run_training(
        train_cfg(max_epochs=2, threads=1, accumulate_steps=2), tmp_path / "single"
    )
    assert single.steps == 4  # as many steps as each rank took
    one = torch.load(single.last_checkpoint, weights_only=True)["model_state"]
    torch.manual_seed(1234)
    initial = build_model(
        train_cfg().model, CharTokenizer.src_vocab_size, CharTokenizer.tgt_vocab_size
    )
    assert any(not torch.equal(w0[k], v) for k, v in initial.state_dict().items())
    for name, weight in one.items():
        torch.testing.assert_close(w0[name], weight, atol=1e-5, rtol=1e-4)


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
    cfg = train_cfg(
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
    run_training(train_cfg(max_epochs=1, log_every_steps=1), tmp_path / "every", callbacks=[every])
    rare = Recorder()
    run_training(train_cfg(max_epochs=1, log_every_steps=1000), tmp_path / "rare", callbacks=[rare])
    assert [s for s, _ in rare.steps] == [s for s, _ in every.steps]
    assert [m["loss"] for _, m in rare.steps] == [m["loss"] for _, m in every.steps]
    assert [m["grad_norm"] for _, m in rare.steps] == [m["grad_norm"] for _, m in every.steps]
    assert all(isinstance(m["loss"], float) for _, m in rare.steps)


DDP_COUNTING_WORKER = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, sys.argv[1])
    import torch
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from tests.support import PAIRS, train_cfg, run_training
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
    cfg = train_cfg(max_epochs=1, accumulate_steps=4, device="cpu")
    run_training(cfg, sys.argv[2], pairs=PAIRS * 4, callbacks=[Report()])
    """
)


def test_ddp_accumulation_all_reduces_once_per_step_and_ranks_draw_their_own(
    tmp_path: Path,
) -> None:
    run_gloo_ranks(DDP_COUNTING_WORKER, tmp_path)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for report in reports:
        steps, buckets = report["steps"], report["buckets"]
        assert steps >= 2
        per_step = len(set(buckets))
        # exactly one all-reduce per bucket per optimizer step, none per micro-batch
        assert len(buckets) == steps * per_step, (len(buckets), steps, per_step)
    assert reports[0]["draws"] != reports[1]["draws"]  # each rank its own RNG stream


PINNED = {
    # plain: dropout 0, teacher forcing 1, constant lr, one batch per step
    "plain": {
        "config": ({"dropout": 0.0}, {"max_epochs": 3}),
        "train": [2.9550104367377634, 2.3741640740939918, 1.8752350461515308],
        "valid": [2.433485143324908, 1.8525640824261833, 1.3940197439754711],
        "bleu": [0.0, 1.9800104399567056, 1.8899303703253338],
        "steps": 36,
        "step_losses": [
            3.461073398590088,
            3.35298490524292,
            3.2110702991485596,
            3.0879650115966797,
            3.0093820095062256,
            2.8666393756866455,
        ],
    },
    # rich: dropout and coins draw from the RNG, warmup + inverse sqrt, smoothing,
    # accumulation over two batches (odd batch counts leave a short last group)
    "rich": {
        "config": (
            {"dropout": 0.3, "cell": "lstm", "attention": "luong", "input_feeding": True},
            {
                "max_epochs": 3,
                "teacher_forcing": 0.5,
                "lr_schedule": "inverse_sqrt",
                "warmup_steps": 3,
                "label_smoothing": 0.1,
                "accumulate_steps": 2,
                "batch_tokens": 30,
            },
        ),
        "train": [3.2271975017175443, 2.958414099080776, 2.8735048596451924],
        "valid": [2.669146818273208, 2.603308359781901, 2.512227825089997],
        "bleu": [0.0, 0.0, 0.0],
        "steps": 27,
        "step_losses": [
            3.3942995071411133,
            3.436171531677246,
            3.399308204650879,
            3.25604510307312,
            3.266789436340332,
            3.2032630443573,
        ],
    },
}


@pytest.mark.parametrize("name", list(PINNED))
def test_losses_are_pinned(tmp_path: Path, name: str) -> None:
    pinned = PINNED[name]
    model, train = pinned["config"]
    rec = Recorder()
    result = run_training(
        train_cfg(model, threads=1, **train), tmp_path, pairs=PAIRS * 3, callbacks=[rec]
    )
    assert result.steps == pinned["steps"]
    assert [h["train_loss"] for h in result.history] == pytest.approx(pinned["train"], rel=1e-6)
    assert [h["valid_loss"] for h in result.history] == pytest.approx(pinned["valid"], rel=1e-6)
    assert [h["valid_bleu"] for h in result.history] == pytest.approx(pinned["bleu"], rel=1e-6)
    step_losses = [m["loss"] for _, m in rec.steps][:6]
    assert step_losses == pytest.approx(pinned["step_losses"], rel=1e-6)


def test_stage_losses_on_genesis_are_pinned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The train stage end to end on the Genesis fixture with its SentencePiece vocabulary."""
    monkeypatch.chdir(tmp_path)
    params = tiny_params()
    params["train"]["threads"] = 1
    cfg = config_from_dict(params)
    stages.ingest(cfg)
    stages.build_vocab(cfg)
    result = stages.train(cfg)
    assert result.steps == 20
    train = [h["train_loss"] for h in result.history]
    valid = [h["valid_loss"] for h in result.history]
    assert train == pytest.approx([5.184900985142202, 4.803964083508238], rel=1e-6)
    assert valid == pytest.approx([5.026119992571935, 4.490467112893557], rel=1e-6)
