"""training.resume: a resumed run equals an uninterrupted one, after Ctrl-C, after SIGKILL and
on a host with fewer GPUs; a finished or foreign checkpoint is not resumed."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.support import (
    REPO,
    Recorder,
    StopAt,
    assert_same_weights,
    run_training,
    train_cfg,
    weights_of,
)


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    cfg = train_cfg(teacher_forcing=0.5, model={"dropout": 0.3})  # coins and dropout use the RNG
    straight = run_training(cfg, tmp_path / "straight")
    run_training(
        dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_epochs=1)),
        tmp_path / "resumed",
    )
    resumed = run_training(cfg, tmp_path / "resumed")
    assert resumed.history == [
        {**h, "epoch_seconds": r["epoch_seconds"], "tokens_per_s": r["tokens_per_s"]}
        for h, r in zip(straight.history, resumed.history, strict=True)
    ]
    assert resumed.steps == straight.steps
    a = torch.load(straight.last_checkpoint, weights_only=True)["model_state"]
    b = torch.load(resumed.last_checkpoint, weights_only=True)["model_state"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=0, rtol=0)


def test_rerun_after_finish_trains_nothing(tmp_path: Path, caplog) -> None:
    first = run_training(train_cfg(), tmp_path)
    before = weights_of(first.last_checkpoint)
    rec = Recorder()
    with caplog.at_level(logging.INFO, logger="seq2seq_core"):
        again = run_training(train_cfg(), tmp_path, callbacks=[rec])
    assert rec.steps == [] and rec.epochs == []  # resumed at the end: not one more step
    assert again.steps == first.steps and again.history == first.history
    assert again.stop_reason == "max_epochs"
    assert_same_weights(weights_of(again.last_checkpoint), before)
    assert "resuming from" in caplog.text and "max_epochs reached (2/2" in caplog.text


def test_changed_config_starts_fresh(tmp_path: Path, caplog) -> None:
    first = run_training(train_cfg(max_epochs=1), tmp_path)
    before = weights_of(first.last_checkpoint)
    rec = Recorder()
    with caplog.at_level(logging.INFO, logger="seq2seq_core"):
        result = run_training(train_cfg(max_epochs=1, lr=0.005), tmp_path, callbacks=[rec])
    assert [s for s, _ in rec.steps] == list(range(1, first.steps + 1))  # from step 1 again
    assert result.epochs == 1 and len(result.history) == 1
    assert any(not torch.equal(v, before[k]) for k, v in weights_of(result.last_checkpoint).items())
    assert "written by another run" in caplog.text and "starting fresh" in caplog.text


@pytest.mark.parametrize(
    "train",
    [
        {"teacher_forcing": 1.0},
        {"teacher_forcing": 0.5, "lr_schedule": "inverse_sqrt", "warmup_steps": 3},
    ],
    ids=["fused", "coin-and-schedule"],
)
def test_mid_epoch_resume_equals_uninterrupted(tmp_path: Path, train: dict) -> None:
    cfg = train_cfg({"dropout": 0.3}, max_epochs=2, checkpoint_every_steps=2, **train)
    whole = Recorder()
    run_training(cfg, tmp_path / "whole", callbacks=[whole])
    assert len(whole.steps) >= 8  # several steps per epoch: the stop is mid-epoch
    stopper = StopAt(5)  # last.pt was written after step 4
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, tmp_path / "cut", callbacks=[stopper])
    resumed = Recorder()
    run_training(cfg, tmp_path / "cut", callbacks=[resumed])
    assert [s for s, _ in resumed.steps] == [s for s, _ in whole.steps][4:]
    assert [m["loss"] for _, m in resumed.steps] == [m["loss"] for _, m in whole.steps][4:]


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, sys.argv[1])
    from tests.support import train_cfg, run_training, Recorder

    class Killer(Recorder):
        def on_step(self, step, metrics):
            print(step, repr(metrics["loss"]), flush=True)
            if step == int(sys.argv[3]):
                os.kill(os.getpid(), signal.SIGKILL)

    cfg = train_cfg({"dropout": 0.3}, max_epochs=2, checkpoint_every_steps=3)
    run_training(cfg, sys.argv[2], callbacks=[Killer()])
    """
)


def test_sigkill_then_rerun_continues_exactly(tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}

    def run(ckpt: str, kill_at: int) -> tuple[int, dict[int, str]]:
        proc = subprocess.run(
            [sys.executable, str(script), str(REPO), ckpt, str(kill_at)],
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
    cfg1 = train_cfg({"dropout": 0.3}, max_epochs=1, device="cpu")
    run_training(cfg1, tmp_path)
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
    result = run_training(train_cfg({"dropout": 0.3}, max_epochs=2, device="cpu"), tmp_path)
    assert result.epochs == 2  # resumed after epoch 1 and trained epoch 2
    assert "resuming from" in caplog.text
    assert "CUDA RNG" in caplog.text  # says which saved states it could not restore
