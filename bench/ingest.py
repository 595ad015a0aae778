"""Ingest throughput and peak memory: the full Bible pair and a generated 1M-line TSV.

Prints one JSON line. Each case runs in its own subprocess so that its peak RSS
(ru_maxrss) is its own. Targets: Bible (bible:e-4) under 10 s; the 1M-line TSV under 1 GB.

    .venv/bin/python bench/ingest.py [--lines 1000000]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_case(source: str, out_dir: Path) -> dict:
    """In the child: ingest one source and report wall time and peak RSS."""
    from seq2seq_core.config import DataConfig
    from seq2seq_core.data.prepare import prepare_corpus

    t0 = time.perf_counter()
    report = prepare_corpus(DataConfig(source=source), out_dir)
    wall = time.perf_counter() - t0
    return {
        "pairs_read": report["pairs_read"],
        "pairs_kept": report["pairs_kept"],
        "wall_s": round(wall, 2),
        "pairs_per_s": round(report["pairs_read"] / wall),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "timing": report["timing"],
    }


def generate_tsv(path: Path, lines: int) -> None:
    """Real sentence pairs (Bible verses), each made unique by a counter, so that nothing
    is dropped as a duplicate and every line is held to the end."""
    from seq2seq_core.config import DataConfig
    from seq2seq_core.data.prepare import read_pairs

    verses = [(s, t) for _, s, t, r in read_pairs("bible:e-4", DataConfig()) if r is None]
    with path.open("w", encoding="utf-8") as f:
        for i in range(lines):
            s, t = verses[i % len(verses)]
            f.write(f"{s} ({i})\t{t} ({i})\n")


def child(source: str, out_dir: Path) -> dict:
    cmd = [sys.executable, __file__, "--case", source, "--out", str(out_dir)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--case")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, Path(args.out))))
        return
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        tmp_path = Path(tmp)
        bible = child("bible:e-4", tmp_path / "bible")
        tsv = tmp_path / "big.tsv"
        t0 = time.perf_counter()
        generate_tsv(tsv, args.lines)
        generate_s = time.perf_counter() - t0
        size_mb = tsv.stat().st_size / 2**20
        big = child(str(tsv), tmp_path / "tsv")
    result = {
        "bench": "ingest",
        "bible_e-4": bible,
        f"tsv_{args.lines}_lines": {
            **big,
            "file_mb": round(size_mb),
            "generate_s": round(generate_s, 1),
        },
        "targets_met": {
            "bible_under_10s": bible["wall_s"] < 10,
            "tsv_under_1gb": big["peak_rss_mb"] < 1024,
        },
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
