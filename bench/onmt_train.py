"""Runs OpenNMT-py 3.5.1 training or translation inside its venv (bench only).

usage: onmt-venv/bin/python bench/onmt_train.py train CONFIG.yaml SECONDS[,SECONDS] THREADS
       onmt-venv/bin/python bench/onmt_train.py translate MODEL.pt SRC OUT BEAM THREADS
       onmt-venv/bin/python bench/onmt_train.py check  (`make onmt-venv`: it all imports)

train: OpenNMT-py's own `onmt_train` with wall-time budgets of SECONDS since start-up (0:
none). When a budget runs out after a step, that step's model is saved (OpenNMT-py's own
saver) and a JSON line printed: steps, target tokens/s of the steps after the first two
(counted by OpenNMT-py's statistics, as ours leaves out two warm-up steps), the checkpoint;
the last budget ends the run. Several budgets in one run (600,1800) give the same models as
one run each: OpenNMT-py's schedules do not depend on the budget (ours does).
translate: OpenNMT-py's own `onmt_translate` of SRC (pieces) into OUT.

Run-time patches instead of edits to site-packages (as bench/joey_train.py does):
- OpenNMT-py imports spacy and fasttext at start-up (onmt/transforms/terminology.py and
  clean.py, loaded with every transform); only the terminology and language-id cleaning
  transforms use them, which these benchmarks never run, so both are empty stub modules
  instead of spacy's own dependency tree (a 35 MB wheel, thinc, blis, ...) and fasttext.
- OpenNMT-py 3.5.1 pins torch<2.3 (a multi-GB CUDA build from PyPI); on the pinned CPU
  torch 2.13 only loading its checkpoints breaks (torch.load's weights_only default since
  2.6 refuses the argparse.Namespace inside): that one class is allow-listed, loads stay
  weights-only.
"""

from __future__ import annotations

import json
import os
import sys
import time
import types

for _missing in ("spacy", "fasttext"):
    sys.modules.setdefault(_missing, types.ModuleType(_missing))

import argparse  # noqa: E402  (after the stubs: onmt's imports must find them)

import torch  # noqa: E402

# torch 2.6 made weights_only=True torch.load's default; OpenNMT-py's checkpoints carry
# their options as an argparse.Namespace, which the safe unpickler refuses unless allowed.
torch.serialization.add_safe_globals([argparse.Namespace])

WARMUP_STEPS = 2


def budget_trainer(budgets: list[float]) -> None:
    """Wrap Trainer._gradient_accumulation (one optimiser step) to time the steps after
    the warm-up, and to save a checkpoint once each budget (seconds since start-up, in
    increasing order) has passed, ending the run at the last."""
    from onmt.trainer import Trainer

    step_once = Trainer._gradient_accumulation
    clock = {"start": time.perf_counter()}
    pending = sorted(b for b in budgets if b > 0)

    def timed_step(self, batches, normalization, total_stats, report_stats):
        step_once(self, batches, normalization, total_stats, report_stats)
        step = self.optim.training_step - 1  # the step just taken (optim counts from 1)
        if step == WARMUP_STEPS:
            clock["t0"], clock["words0"] = time.perf_counter(), total_stats.n_words
        if pending and time.perf_counter() - clock["start"] >= pending[0]:
            report(self, step, total_stats, clock, budget=pending.pop(0))
            if not pending:
                sys.stderr.flush()
                os._exit(0)

    Trainer._gradient_accumulation = timed_step


def report(trainer, step: int, total_stats, clock: dict, budget: float) -> None:
    """Save the model of `step` (OpenNMT-py's own saver) and print the result line."""
    now = time.perf_counter()
    elapsed = now - clock.get("t0", clock["start"])
    words = total_stats.n_words - clock.get("words0", 0)
    saved = None
    if trainer.model_saver is not None:
        trainer.model_saver.save(step, moving_average=trainer.moving_average)
        saved = f"{trainer.model_saver.base_path}_step_{step}.pt"
    print(json.dumps({
        "onmt_train": "budget", "budget_s": budget, "steps": step,
        "train_s": round(now - clock["start"], 1),
        "tgt_tokens_per_s": round(words / elapsed, 1) if elapsed > 0 else None,
        "checkpoint": saved,
    }), flush=True)  # fmt: skip


def main() -> None:
    mode = sys.argv[1]
    if mode == "train":
        config, threads = sys.argv[2], int(sys.argv[4])
        torch.set_num_threads(threads)
        budget_trainer([float(s) for s in sys.argv[3].split(",")])
        from onmt.bin.train import main as onmt_main

        sys.argv = ["onmt_train", "-config", config]
        onmt_main()
        print(json.dumps({"onmt_train": "finished", "steps": None}), flush=True)
    elif mode == "translate":
        model, src, out, beam, threads = sys.argv[2:7]
        torch.set_num_threads(int(threads))
        from onmt.bin.translate import main as onmt_translate

        sys.argv = ["onmt_translate", "-model", model, "-src", src, "-output", out,
                    "-beam_size", beam, "-batch_size", "64", "-batch_type", "sents",
                    "-max_length", "256", "-gpu", "-1"]  # fmt: skip
        onmt_translate()
    elif mode == "check":
        import onmt.bin.train
        import onmt.bin.translate  # noqa: F401

        print(json.dumps({"onmt": "imports", "torch": torch.__version__}))
    else:
        raise SystemExit(f"unknown mode {mode!r}: train | translate | check")


if __name__ == "__main__":
    main()
