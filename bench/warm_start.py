"""What a warm start buys a nightly retrain: the first epoch from the champion vs from scratch.

Run after `make run` (it needs the champion's checkpoint directory and the prepared data and
vocabulary of the default corpus). Trains one epoch twice in a scratch directory with the
pipeline's own train stage and the workspace vocabulary (the champion's): once from the
champion's weights (`train.init_from`, as `nightly-retrain` does), once from scratch, and
prints one JSON line with each run's validation BLEU after that epoch (greedy, on the same
`train.valid_bleu_sentences` validation pairs) next to the champion's own.

    .venv/bin/python bench/warm_start.py [--champion models/checkpoints] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / ".cache" / "warm-start"


def first_epoch(init_from: str, threads: int) -> dict[str, Any]:
    """One epoch of the train stage (no time limit) from `init_from`; its history entry."""
    from seq2seq_core import stages
    from seq2seq_core.config import load_config
    from seq2seq_core.training.warm_start import local_source

    out = WORK / ("warm" if init_from != "none" else "scratch")
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config(
        REPO / "params.yaml",
        [
            "train.max_epochs=1",
            "train.time_budget_min=600",
            f"train.threads={threads}",
            f"train.init_from={init_from}",
            f"train.checkpoint_dir={out / 'checkpoints'}",
            f"evaluate.reports_dir={out / 'reports'}",
        ],
    )
    start = time.monotonic()
    result = stages.train(cfg, warm_start=local_source(init_from, reset_optimizer=True))
    (epoch,) = result.history
    return {
        "valid_bleu": round(epoch["valid_bleu"], 2),
        "valid_loss": round(epoch["valid_loss"], 4),
        "seconds": round(time.monotonic() - start, 1),
    }


def main() -> None:
    import torch

    from seq2seq_core.model.checkpoint import load_checkpoint

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--champion", type=Path, default=REPO / "models" / "checkpoints")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    champion = load_checkpoint(args.champion / "best.pt")
    torch.set_num_threads(args.threads)
    warm = first_epoch(str(args.champion.resolve()), args.threads)
    scratch = first_epoch("none", args.threads)
    print(
        json.dumps(
            {
                "bench": "warm_start_first_epoch",
                "champion_valid_bleu": round(champion["valid"]["valid_bleu"], 2),
                "champion_epoch": champion["epoch"],
                "warm_start": warm,
                "from_scratch": scratch,
            }
        )
    )


if __name__ == "__main__":
    main()
