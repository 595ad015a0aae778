"""Test BLEU of OpenNMT-py 3.5.1 after N minutes of training from scratch (issue 26), next
to bench/bleu_budget.py's figures for ours and Joey's.

Same data as ours: the default split (data/prepared) in our SentencePiece pieces
(data/vocab/spm.model). `--recipe onmt` (the default) is OpenNMT-py's own RNN recipe, its
defaults (onmt_common.ONMT_RECIPE: 2 x 500 LSTM, input feeding, general attention, SGD 1.0,
64-sentence batches); `--recipe ours` is our params.yaml architecture and Adam at our peak LR
(constant: OpenNMT-py has no budget-linear decay). All budgets come from one run, which
saves the model when each budget runs out (the recipe's schedule does not depend on the
budget, so this equals one run per budget). Each checkpoint is decoded by OpenNMT-py's own
translate (greedy and beam 5, batch 64) after training ends, so decoding never shares the
CPU with it, and scored by the evaluate stage's sacrebleu call. One JSON line per
(budget, beam) with the steps the budget bought.

    .venv/bin/python bench/onmt_bleu.py --minutes 10 30 --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import onmt_common as oc  # noqa: E402

WORK = REPO / "bench" / ".cache" / "onmt-bleu"


def recipe(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model options, training options) of `--recipe`."""
    if name == "onmt":
        return oc.ONMT_RECIPE, {}
    from seq2seq_core.config import load_config

    cfg = load_config(REPO / "params.yaml")
    t = cfg.train
    optim = oc.our_train_options(t.lr, t.batch_tokens, t.label_smoothing, t.clip_grad)
    return oc.model_options(**dataclasses.asdict(cfg.model)), optim


def score(checkpoint: str, data: Path, beam: int, threads: int) -> dict[str, Any]:
    """OpenNMT-py's translation of the test split, detokenized by our spm.model and scored
    as the evaluate stage scores ours."""
    import sentencepiece as spm

    from seq2seq_core.evaluation.metrics import bleu_tokenizer, score_translations

    out = Path(f"{checkpoint}.beam{beam}.txt")
    proc = subprocess.run(
        [str(oc.ONMT_PYTHON), str(REPO / "bench" / "onmt_train.py"), "translate", checkpoint,
         str(data / "test.de"), str(out), str(beam), str(threads)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0 or not out.exists():
        return {"error": (proc.stdout + proc.stderr)[-800:]}
    sp = spm.SentencePieceProcessor(model_file=str(data / "spm.model"))
    hyps = [sp.decode_pieces(line.split()) for line in out.read_text("utf-8").splitlines()]
    refs = (data / "test.ref.en").read_text("utf-8").splitlines()
    scores = score_translations(hyps, refs, bleu_tokenizer("en"))
    return {"test_bleu": scores["bleu"], "test_chrf": scores["chrf"], "sentences": len(hyps)}


def run(minutes: list[float], threads: int, recipe_name: str, beams: list[int]) -> list[dict]:
    if not oc.ONMT_PYTHON.exists():
        row = {"system": oc.ONMT_SYSTEM, "skipped": f"{oc.ONMT_PYTHON} missing: make onmt-venv"}
        print(json.dumps(row))
        return [row]
    if not (REPO / "data" / "vocab" / "spm.model").exists():
        raise SystemExit("data/vocab/spm.model missing: run `seq2seq ingest` and `vocab` first")
    work = WORK / recipe_name
    shutil.rmtree(work, ignore_errors=True)  # from scratch
    data = oc.export_data(REPO / "data" / "prepared", REPO / "data" / "vocab", work / "data")
    model, optim = recipe(recipe_name)
    cfg = oc.onmt_config(data, work / "model", model, train=optim)
    rows = []
    for trained in oc.run_training(cfg, work / "onmt.yaml", [m * 60 for m in minutes], threads):
        for beam in beams:
            row = {
                "system": oc.ONMT_SYSTEM, "recipe": recipe_name, "threads": threads,
                "budget_min": trained.get("budget_s", 0) / 60, "steps": trained.get("steps"),
                "train_tokens_per_s": trained.get("tgt_tokens_per_s"), "beam": beam,
            }  # fmt: skip
            if trained.get("checkpoint"):
                row.update(score(trained["checkpoint"], data, beam, threads))
            else:
                row["error"] = trained.get("error", "no checkpoint")
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[10.0, 30.0])
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--recipe", choices=["onmt", "ours"], default="onmt")
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5])
    args = parser.parse_args(argv)
    run(args.minutes, args.threads, args.recipe, args.beams)


if __name__ == "__main__":
    main()
