"""Test BLEU after N minutes of training from scratch, per parameter file, next to Joey NMT 2.3.

Issue 5's quality target is BLEU >= 20 after 15 minutes with the default params, on the
default corpus (data/prepared + data/vocab: run the ingest and vocab stages first). Issue 17
compares parameter files at one budget: ``default`` is params.yaml, ``baseline`` is
configs/baseline.yaml (the defaults before issue 17). Each is trained by the train stage
and scored by the evaluate stage on the whole prepared test split, greedy and beam search
(``decode.beam_size`` of that file), one JSON line per config. Joey (``--joey``) is scored
by the same sacrebleu call (`evaluation.score_translations`), greedy; it validates every
`joey_valid_freq` steps (that is when it writes best.ckpt) inside the same wall-time budget,
so its score is its best validated checkpoint before the budget ran out.

    .venv/bin/python bench/bleu_budget.py --minutes 10 --configs default baseline --threads 2
    .venv/bin/python bench/train_throughput.py --bleu-budget-min 15 --threads 2  (+ Joey)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / ".cache" / "bleu-budget"
CONFIGS = {"default": REPO / "params.yaml", "baseline": REPO / "configs" / "baseline.yaml"}


def ours(name: str, minutes: float, threads: int, overrides: list[str]) -> dict[str, Any]:
    """The pipeline's own train and evaluate stages with parameter file ``CONFIGS[name]``,
    in a scratch directory of its own (the data and vocabulary are the workspace's)."""
    from seq2seq_core import stages
    from seq2seq_core.config import load_config

    out = WORK / f"ours-{name}"
    shutil.rmtree(out, ignore_errors=True)  # from scratch: no resume from an earlier run
    cfg = load_config(
        CONFIGS[name],
        [
            f"train.time_budget_min={minutes}",
            f"train.threads={threads}",
            f"train.checkpoint_dir={out / 'checkpoints'}",
            f"evaluate.reports_dir={out / 'reports'}",
            f"data.prepared_dir={REPO / 'data' / 'prepared'}",
            f"vocab.out_dir={REPO / 'data' / 'vocab'}",
            *overrides,
        ],
    )
    t0 = time.perf_counter()
    result = stages.train(cfg)
    train_s = time.perf_counter() - t0
    metrics = stages.evaluate(cfg).metrics
    greedy, beam = metrics["test_greedy"], metrics.get("test_beam")
    return {
        "system": "ours", "config": name, "params": str(CONFIGS[name].relative_to(REPO)),
        "budget_min": minutes, "threads": threads, "train_s": round(train_s, 1),
        "epochs": result.epochs, "steps": result.steps, "stop": result.stop_reason,
        "train_tokens_per_s": round(_tokens_per_s(result), 1),
        "lr_schedule": cfg.train.lr_schedule, "average_checkpoints": cfg.train.average_checkpoints,
        "kept_checkpoint": result.kept_checkpoint, "averaging": result.averaging,
        "best_valid_bleu": result.best_valid_bleu,
        "test_bleu_greedy": greedy["bleu"], "test_chrf_greedy": greedy["chrf"],
        "test_bleu_beam": beam["bleu"] if beam else None,
        "test_chrf_beam": beam["chrf"] if beam else None,
        "beam_size": cfg.decode.beam_size, "sentences": greedy["sentences"],
        "overrides": overrides,
    }  # fmt: skip


def _tokens_per_s(result: Any) -> float:
    """Over completed epochs; a budget shorter than one epoch has only the partial one's."""
    if result.epochs or not result.history:
        return result.train_tokens_per_s
    return float(result.history[-1]["tokens_per_s"])


def joey(minutes: float, threads: int, valid_freq: int) -> dict[str, Any]:
    """Joey NMT on the same splits and SentencePiece model, issue 5's architecture."""
    from joey_common import JOEY_PYTHON, export_data, joey_config, write_config

    from seq2seq_core.evaluation.metrics import bleu_tokenizer, score_translations

    if not JOEY_PYTHON.exists():
        return {"system": "joeynmt-2.3.0", "skipped": f"{JOEY_PYTHON} missing"}
    work = WORK / "joey"
    shutil.rmtree(work, ignore_errors=True)
    data = export_data(REPO / "data" / "prepared", REPO / "data" / "vocab", work / "data")
    model_dir = work / "model"
    cfg = joey_config(data, model_dir, input_feeding=True, validation_freq=valid_freq)
    cfg_path = write_config(cfg, work / "joey.yaml")
    runner = [str(JOEY_PYTHON), str(REPO / "bench" / "joey_train.py"), str(cfg_path)]
    proc = subprocess.run(
        [*runner, str(minutes * 60), str(threads)], capture_output=True, text=True, check=False
    )
    if not (model_dir / "best.ckpt").exists():
        reason = f"no validation (every {valid_freq} steps) within the budget"
        tail = (proc.stdout + proc.stderr)[-800:]
        return {"system": "joeynmt-2.3.0", "budget_min": minutes, "skipped": reason, "log": tail}
    hyp_prefix = work / "hyp"
    proc = subprocess.run(
        [*runner, "0", str(threads), "--test", str(hyp_prefix)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    hyp_file = Path(f"{hyp_prefix}.test")
    if proc.returncode != 0 or not hyp_file.exists():
        return {"system": "joeynmt-2.3.0", "error": (proc.stdout + proc.stderr)[-800:]}
    hyps = hyp_file.read_text(encoding="utf-8").splitlines()
    refs = (data / "test.en").read_text(encoding="utf-8").splitlines()
    scores = score_translations(hyps, refs, bleu_tokenizer("en"))
    steps = _last_step((model_dir / "train.log").read_text(encoding="utf-8"))
    return {
        "system": "joeynmt-2.3.0", "budget_min": minutes, "threads": threads,
        "steps": steps, "valid_freq": valid_freq, "test_bleu_greedy": scores["bleu"],
        "test_chrf": scores["chrf"], "sentences": len(hyps),
    }  # fmt: skip


def _last_step(log: str) -> int | None:
    lines = [line for line in log.splitlines() if "Step:" in line]
    steps = [int(line.split("Step:")[1].split(",")[0]) for line in lines]
    return steps[-1] if steps else None


def run(
    minutes: float, threads: int, *, joey_valid_freq: int, overrides: list[str], with_joey: bool,
    configs: Sequence[str] = ("default",),
) -> None:  # fmt: skip
    """One JSON line per config and system, one after another so that they never share the
    CPU (Joey last)."""
    if not (REPO / "data" / "vocab" / "spm.model").exists():
        raise SystemExit("data/vocab/spm.model missing: run `seq2seq run` (ingest, vocab) first")
    for name in configs:
        print(json.dumps(ours(name, minutes, threads, overrides)), flush=True)
    if with_joey:
        print(json.dumps(joey(minutes, threads, joey_valid_freq)), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, required=True, help="training budget per config")
    parser.add_argument(
        "--configs", nargs="+", default=["default"], choices=list(CONFIGS),
        help="default: params.yaml; baseline: configs/baseline.yaml (before issue 17)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, required=True, help="train.threads, explicitly")
    parser.add_argument(
        "--override", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="applied to every config (repeatable)",
    )  # fmt: skip
    parser.add_argument("--joey", action="store_true", help="also train Joey NMT 2.3 (as long)")
    parser.add_argument("--joey-valid-freq", type=int, default=50)
    args = parser.parse_args(argv)
    run(
        args.minutes, args.threads, joey_valid_freq=args.joey_valid_freq,
        overrides=args.override, with_joey=args.joey, configs=args.configs,
    )  # fmt: skip


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
