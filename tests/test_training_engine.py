"""The training engine: schedules, smoothing, tying, accumulation, early stopping, exact
mid-epoch resume (including a real SIGKILL) and DDP with gloo on CPU."""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from gloo_ranks import run_gloo_ranks
from test_training import PAIRS, CharTokenizer, Recorder, _cfg, _train

from seq2seq_core.config import ModelConfig, TrainConfig
from seq2seq_core.data.batches import collate
from seq2seq_core.model.seq2seq import build_model
from seq2seq_core.training.optim import LearningRate, build_optimizer, teacher_forcing_ratio
from seq2seq_core.training.step import train_step

REPO = Path(__file__).resolve().parents[1]


class StopAt(Recorder):
    """Records steps and raises after `step` (a stand-in for Ctrl-C / a killed job)."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.stop = step

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        super().on_step(step, metrics)
        if step == self.stop:
            raise KeyboardInterrupt


def test_learning_rate_schedules() -> None:
    warm = LearningRate.from_config(TrainConfig(lr=1.0, warmup_steps=4, lr_schedule="inverse_sqrt"))
    assert [warm.at(s) for s in (1, 2, 4)] == [0.25, 0.5, 1.0]
    assert warm.at(16) == pytest.approx(0.5)  # sqrt(4 / 16)
    plateau = LearningRate.from_config(
        TrainConfig(lr=1.0, lr_schedule="plateau", plateau_patience=2, plateau_factor=0.5,
                    min_lr=0.2)
    )  # fmt: skip
    for bleu in (10.0, 9.0, 8.0):  # best, then two without improvement
        plateau.observe(bleu)
    assert plateau.at(100) == 0.5
    for bleu in (7.0, 6.0, 5.0, 4.0):
        plateau.observe(bleu)
    assert plateau.at(100) == 0.2  # floored at min_lr
    restored = LearningRate.from_config(TrainConfig(lr=1.0, lr_schedule="plateau"))
    restored.load_state_dict(plateau.state_dict())
    assert restored == plateau
    assert LearningRate.from_config(TrainConfig(lr=0.3, lr_schedule="constant")).at(10_000) == 0.3


def test_teacher_forcing_schedules() -> None:
    linear = TrainConfig(teacher_forcing=1.0, teacher_forcing_schedule="linear",
                         teacher_forcing_min=0.2, teacher_forcing_decay_steps=100)  # fmt: skip
    assert [teacher_forcing_ratio(linear, s) for s in (0, 50, 100, 500)] == [1.0, 0.6, 0.2, 0.2]
    sigmoid = TrainConfig(
        teacher_forcing_schedule="inverse_sigmoid", teacher_forcing_decay_steps=10
    )
    values = [teacher_forcing_ratio(sigmoid, s) for s in (0, 10, 50, 100)]
    assert values[0] == pytest.approx(10 / 11) and values == sorted(values, reverse=True)
    assert values[-1] < 0.01
    assert teacher_forcing_ratio(TrainConfig(teacher_forcing=0.5), 10**6) == 0.5


def test_adamw_decouples_weight_decay() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    opt = build_optimizer([p], TrainConfig(optimizer="adamw", lr=0.1, weight_decay=0.5))
    p.grad = torch.zeros(3)
    opt.step()
    assert torch.allclose(p.detach(), torch.full((3,), 1 - 0.1 * 0.5))  # decay only
    assert isinstance(build_optimizer([p], TrainConfig(optimizer="adam")), torch.optim.Adam)


@pytest.mark.parametrize("input_feeding", [False, True], ids=["fused", "stepwise"])
def test_label_smoothing_matches_torch(input_feeding: bool) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(emb_size=8, hidden_size=16, dropout=0.0, input_feeding=input_feeding,
                      tie_embeddings="none")  # fmt: skip
    model = build_model(cfg, 20, 20)
    src = torch.randint(4, 20, (3, 5))
    tgt = torch.randint(4, 20, (3, 6))
    src_len = torch.tensor([5, 4, 2])
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:].clone()
    tgt_out[2, 3:] = 0
    logits = model.logits(src, src_len, tgt_in)
    expected = F.cross_entropy(
        logits.reshape(-1, 20), tgt_out.reshape(-1), ignore_index=0, reduction="sum",
        label_smoothing=0.1,
    )  # fmt: skip
    loss = model(src, src_len, tgt_in, tgt_out=tgt_out, label_smoothing=0.1)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_embedding_tying_and_luong_dot() -> None:
    cfg = ModelConfig(emb_size=16, hidden_size=16, tie_embeddings="all", attention="luong",
                      luong_score="dot")  # fmt: skip
    model = build_model(cfg, 30, 30)
    dec = model.decoder
    assert dec.output_layer.weight is dec.embedding.weight is model.encoder.embedding.weight
    assert dec.attention.key_layer is None  # dot: no attention parameters of its own
    untied = build_model(ModelConfig(emb_size=16, hidden_size=16, tie_embeddings="none"), 30, 30)
    n = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in untied.parameters()) - n == 2 * 30 * 16 + 16 * 16
    with pytest.raises(ValueError, match=r"needs model\.emb_size == model\.hidden_size"):
        build_model(ModelConfig(emb_size=8, hidden_size=16, tie_embeddings="decoder"), 30, 30)
    with pytest.raises(ValueError, match="needs a joint vocabulary"):
        build_model(ModelConfig(emb_size=16, hidden_size=16, tie_embeddings="all"), 30, 31)


def test_accumulation_and_early_stopping(tmp_path: Path) -> None:
    one = _train(_cfg(max_epochs=1), tmp_path / "one")
    acc = _train(_cfg(max_epochs=1, accumulate_steps=2), tmp_path / "acc")
    assert acc.steps == math.ceil(one.steps / 2)
    stuck = _train(_cfg(lr=0.0, max_epochs=6, early_stopping_patience=2), tmp_path / "stuck")
    assert stuck.stop_reason == "early_stopping" and stuck.epochs == 3


def _sgd_step(batches: list, accumulate: int) -> tuple[dict[str, torch.Tensor], float, list]:
    """The gradient of one ``train_step`` (read off an SGD step with lr 1), its norm and
    the batches' losses, from the same initial weights every call."""
    cfg = _cfg({"dropout": 0.0})
    tc = dataclasses.replace(cfg.train, accumulate_steps=accumulate, clip_grad=1e9)
    torch.manual_seed(0)
    model = build_model(cfg.model, CharTokenizer.src_vocab_size, CharTokenizer.tgt_vocab_size)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    losses, norm = train_step(model, optimizer, batches, teacher_forcing=1.0, lr=1.0, tc=tc)
    losses, norm = [float(x) for x in losses], float(norm)
    grads = {k: before[k] - v for k, v in model.state_dict().items()}
    return grads, norm, losses


def test_accumulated_step_equals_one_batch_of_both_halves() -> None:
    tok = CharTokenizer()
    src = tok.encode_src([s for s, _ in PAIRS[:4]])
    tgt = tok.encode_tgt([t for _, t in PAIRS[:4]])
    half_a, half_b = collate(src, tgt, [0, 2]), collate(src, tgt, [1, 3])
    # Equal token counts: the mean of the halves' per-token losses is the whole's.
    assert half_a.ntokens == half_b.ntokens == 35
    acc_grads, acc_norm, acc_losses = _sgd_step([half_a, half_b], accumulate=2)
    one_grads, one_norm, one_losses = _sgd_step([collate(src, tgt, [0, 1, 2, 3])], accumulate=1)
    assert sum(acc_losses) / 2 == pytest.approx(one_losses[0], rel=1e-6)
    assert acc_norm == pytest.approx(one_norm, rel=1e-5)
    for name, grad in one_grads.items():
        torch.testing.assert_close(acc_grads[name], grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "train",
    [
        {"teacher_forcing": 1.0},
        {"teacher_forcing": 0.5, "lr_schedule": "inverse_sqrt", "warmup_steps": 3},
    ],
    ids=["fused", "coin-and-schedule"],
)
def test_mid_epoch_resume_equals_uninterrupted(tmp_path: Path, train: dict) -> None:
    cfg = _cfg({"dropout": 0.3}, max_epochs=2, checkpoint_every_steps=2, **train)
    whole = Recorder()
    _train(cfg, tmp_path / "whole", callbacks=[whole])
    assert len(whole.steps) >= 8  # several steps per epoch: the stop is mid-epoch
    stopper = StopAt(5)  # last.pt was written after step 4
    with pytest.raises(KeyboardInterrupt):
        _train(cfg, tmp_path / "cut", callbacks=[stopper])
    resumed = Recorder()
    _train(cfg, tmp_path / "cut", callbacks=[resumed])
    assert [s for s, _ in resumed.steps] == [s for s, _ in whole.steps][4:]
    assert [m["loss"] for _, m in resumed.steps] == [m["loss"] for _, m in whole.steps][4:]


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, sys.argv[1])
    from test_training import _cfg, _train, Recorder

    class Killer(Recorder):
        def on_step(self, step, metrics):
            print(step, repr(metrics["loss"]), flush=True)
            if step == int(sys.argv[3]):
                os.kill(os.getpid(), signal.SIGKILL)

    cfg = _cfg({"dropout": 0.3}, max_epochs=2, checkpoint_every_steps=3)
    _train(cfg, sys.argv[2], callbacks=[Killer()])
    """
)


def test_sigkill_then_rerun_continues_exactly(tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}

    def run(ckpt: str, kill_at: int) -> tuple[int, dict[int, str]]:
        proc = subprocess.run(
            [sys.executable, str(script), str(REPO / "tests"), ckpt, str(kill_at)],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        steps = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
        return proc.returncode, {int(k): v for k, v in steps.items()}

    rc, whole = run(str(tmp_path / "whole"), kill_at=-1)
    assert rc == 0
    rc, first = run(str(tmp_path / "cut"), kill_at=7)
    assert rc == -signal.SIGKILL and max(first) == 7
    rc, rest = run(str(tmp_path / "cut"), kill_at=-1)
    assert rc == 0 and min(rest) == 7  # last.pt after step 6: step 7 is done again
    assert {s: rest[s] for s in rest} == {s: whole[s] for s in rest}


DDP_WORKER = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, sys.argv[1])
    import torch
    from test_training import _cfg, _train

    class Save:
        def on_step(self, step, metrics): pass
        def on_epoch(self, epoch, metrics): pass
        def on_train_end(self, model):
            torch.save(model.state_dict(), sys.argv[3] + f"/rank{os.environ['RANK']}.pt")

    torch.manual_seed(1234)
    _train(_cfg(max_epochs=2), sys.argv[2], callbacks=[Save()])
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
    single = _train(_cfg(max_epochs=2, threads=1, accumulate_steps=2), tmp_path / "single")
    assert single.steps == 4  # as many steps as each rank took
    one = torch.load(single.last_checkpoint, weights_only=True)["model_state"]
    torch.manual_seed(1234)
    initial = build_model(_cfg().model, CharTokenizer.src_vocab_size, CharTokenizer.tgt_vocab_size)
    assert any(not torch.equal(w0[k], v) for k, v in initial.state_dict().items())
    for name, weight in one.items():
        torch.testing.assert_close(w0[name], weight, atol=1e-5, rtol=1e-4)
