"""Test BLEU after N minutes of training from scratch: ours (params.yaml) next to Joey NMT 2.3.

Issue 5's quality target is BLEU >= 20 after 15 minutes with the default params, on the
default corpus (data/prepared + data/vocab: run the ingest and vocab stages first). Both
systems are scored by the same sacrebleu call (`evaluation.score_translations`) on the whole
prepared test split, greedy decoding, so only the training differs. Joey validates every
`joey_valid_freq` steps (that is when it writes best.ckpt) inside the same wall-time budget,
so its score is its best validated checkpoint before the budget ran out.

    .venv/bin/python bench/train_throughput.py --bleu-budget-min 15 --threads 2
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / ".cache" / "bleu-budget"


def ours(minutes: float, threads: int, overrides: list[str]) -> dict[str, Any]:
    """The pipeline's own train stage and test evaluation, in a scratch directory."""
    from seq2seq_core import stages
    from seq2seq_core.config import load_config

    out = WORK / "ours"
    shutil.rmtree(out, ignore_errors=True)  # from scratch: no resume from an earlier run
    cfg = load_config(
        REPO / "params.yaml",
        [
            f"train.time_budget_min={minutes}",
            f"train.threads={threads}",
            f"train.checkpoint_dir={out / 'checkpoints'}",
            f"evaluate.reports_dir={out / 'reports'}",
            "decode.beam_size=1",
            *overrides,
        ],
    )
    t0 = time.perf_counter()
    result = stages.train(cfg)
    train_s = time.perf_counter() - t0
    metrics = stages.evaluate(cfg).metrics["test"]
    return {
        "system": "ours", "budget_min": minutes, "threads": threads,
        "train_s": round(train_s, 1), "epochs": result.epochs, "steps": result.steps,
        "stop": result.stop_reason, "train_tokens_per_s": result.train_tokens_per_s,
        "best_valid_bleu": result.best_valid_bleu,
        "test_bleu_greedy": metrics["bleu"], "test_chrf": metrics["chrf"],
        "sentences": metrics["sentences"], "overrides": overrides,
    }  # fmt: skip


def joey(minutes: float, threads: int, valid_freq: int) -> dict[str, Any]:
    """Joey NMT on the same splits and SentencePiece model, issue 5's architecture."""
    from joey_common import JOEY_PYTHON, export_data, joey_config, write_config

    from seq2seq_core.evaluation import bleu_tokenizer, score_translations

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
    minutes: float, threads: int, *, joey_valid_freq: int, overrides: list[str], with_joey: bool
) -> None:
    """One JSON line per system; Joey runs after ours so the two never share the CPU."""
    if not (REPO / "data" / "vocab" / "spm.model").exists():
        raise SystemExit("data/vocab/spm.model missing: run `seq2seq run` (ingest, vocab) first")
    print(json.dumps(ours(minutes, threads, overrides)), flush=True)
    if with_joey:
        print(json.dumps(joey(minutes, threads, joey_valid_freq)), flush=True)
