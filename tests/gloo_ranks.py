"""Runs a worker script as two gloo ranks on 127.0.0.1, the way torchrun would start them.

The DDP tests need real processes (a process group cannot be faked in one), and each passes
its worker (tests dir, checkpoint dir, output dir as arguments) and reads what it wrote.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_gloo_ranks(worker_source: str, tmp_path: Path, world: int = 2) -> None:
    """Start ``world`` ranks of ``worker_source`` with one thread each; fail with a rank's
    stderr when it exits non-zero."""
    script = tmp_path / "worker.py"
    script.write_text(worker_source, encoding="utf-8")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(world):
        env = {
            **os.environ, "WORLD_SIZE": str(world), "RANK": str(rank), "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO),
        }  # fmt: skip
        procs.append(subprocess.Popen(
            [sys.executable, str(script), str(REPO / "tests"), str(tmp_path / "ckpt"),
             str(tmp_path)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))  # fmt: skip
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
