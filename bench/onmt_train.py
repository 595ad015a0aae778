"""Runs OpenNMT-py 3.5.1 training or translation inside its venv (bench only).

usage: onmt-venv/bin/python bench/onmt_train.py train CONFIG.yaml SECONDS THREADS
       onmt-venv/bin/python bench/onmt_train.py translate MODEL.pt SRC OUT BEAM THREADS
       onmt-venv/bin/python bench/onmt_train.py check  (`make onmt-venv`: it all imports)

train: OpenNMT-py's own `onmt_train` with a wall-time budget of SECONDS (0: none). When the
budget runs out after a step, that step's model is saved (OpenNMT-py's own saver) and the
run ends; the last line is JSON: steps, target tokens/s of the steps after the first two
(counted by OpenNMT-py's statistics, as ours leaves out two warm-up steps) and the
checkpoint. translate: OpenNMT-py's own `onmt_translate` of SRC (pieces) into OUT.

Run-time patches instead of edits to site-packages (as bench/joey_train.py does):
- OpenNMT-py imports spacy and fasttext at start-up (onmt/transforms/terminology.py and
  clean.py, loaded with every transform); neither is installed (spacy pulls ~100 MB and a
  model; fasttext-wheel has no wheel for this Python) and neither is used here, so both are
  empty stub modules.
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

import argparse  # noqa: E402

import torch  # noqa: E402

# torch 2.6 made weights_only=True torch.load's default; OpenNMT-py's checkpoints carry
# their options as an argparse.Namespace, which the safe unpickler refuses unless allowed.
torch.serialization.add_safe_globals([argparse.Namespace])
WARMUP_STEPS = 2


def budget_trainer(seconds: float) -> None:
    """Wrap Trainer._gradient_accumulation (one optimiser step) to time the steps after
    the warm-up and to save and stop once `seconds` of training have passed."""
    from onmt.trainer import Trainer

    step_once = Trainer._gradient_accumulation
    clock = {"start": time.perf_counter()}

    def timed_step(self, batches, normalization, total_stats, report_stats):
        step_once(self, batches, normalization, total_stats, report_stats)
        step = self.optim.training_step - 1  # the step just taken (optim counts from 1)
        if step == WARMUP_STEPS:
            clock["t0"], clock["words0"] = time.perf_counter(), total_stats.n_words
        if seconds > 0 and time.perf_counter() - clock["start"] >= seconds:
            finish(self, step, total_stats, clock)

    Trainer._gradient_accumulation = timed_step


def finish(trainer, step: int, total_stats, clock: dict) -> None:
    """Save the model of `step` and end the process with the result line."""
    elapsed = time.perf_counter() - clock.get("t0", clock["start"])
    words = total_stats.n_words - clock.get("words0", 0)
    saved = None
    if trainer.model_saver is not None:
        trainer.model_saver.save(step, moving_average=trainer.moving_average)
        saved = f"{trainer.model_saver.base_path}_step_{step}.pt"
    print(json.dumps({
        "onmt_train": "budget", "steps": step, "train_s": round(time.perf_counter()
                                                              - clock["start"], 1),
        "tgt_tokens_per_s": round(words / elapsed, 1) if elapsed > 0 else None,
        "checkpoint": saved,
    }), flush=True)  # fmt: skip
    sys.stderr.flush()
    os._exit(0)


def main() -> None:
    mode = sys.argv[1]
    if mode == "train":
        config, seconds, threads = sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
        torch.set_num_threads(threads)
        budget_trainer(seconds)
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
