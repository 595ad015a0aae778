"""What Prefect + MLflow cost per run: the whole flow vs the same stage functions called
bare, on tiny parameters (the Genesis fixture), plus the start-up times of a Prefect server
and of a fresh MLflow SQLite store. Prints one JSON line. Run from the repo root."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO))  # for tests.support
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _params(root: Path) -> Path:
    from tests.support import tiny_params

    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_params()), encoding="utf-8")
    return path


def bare(root: Path) -> float:
    from seq2seq_core import stages
    from seq2seq_core.config import load_config

    os.chdir(root)
    cfg = load_config(_params(root))
    start = time.perf_counter()
    stages.ingest(cfg)
    stages.build_vocab(cfg)
    stages.train(cfg)
    stages.evaluate(cfg)
    return time.perf_counter() - start


def server_start_s(home: Path) -> float:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PREFECT_HOME": str(home)}
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
         "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    import urllib.request

    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=1):
                    return time.perf_counter() - start
            except OSError:
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in ("warm-up", "bare", "flow"):
            (tmp / name).mkdir()
        bare(tmp / "warm-up")  # imports and first-call costs, paid once for both sides
        bare_s = bare(tmp / "bare")

        from flows import tracking

        os.chdir(tmp / "flow")
        start = time.perf_counter()
        tracking.configure_tracking(tmp / "flow")
        mlflow_first_s = time.perf_counter() - start
        params = _params(tmp / "flow")
        os.environ["PREFECT_HOME"] = str(tmp / "prefect-home")
        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=180):
            from flows.pipeline import training_pipeline

            start = time.perf_counter()
            result = training_pipeline(params_path=str(params), dvc_commit=False)
            flow_s = time.perf_counter() - start
        server_s = server_start_s(tmp / "server-home")
    stage_s = sum(v for k, v in result["seconds"].items() if k != "register")
    print(json.dumps({
        "bench": "pipeline_overhead", "params": "tests/support.tiny_params (Genesis, 208 pairs)",
        "bare_stages_s": round(bare_s, 2), "flow_total_s": round(flow_s, 2),
        "flow_stage_s_without_register": round(stage_s, 2),
        "register_s": result["seconds"]["register"],
        "overhead_s": round(flow_s - bare_s, 2),
        "overhead_pct": round(100 * (flow_s - bare_s) / bare_s, 1),
        "mlflow_sqlite_first_connection_s": round(mlflow_first_s, 2),
        "prefect_server_start_s": round(server_s, 2),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
