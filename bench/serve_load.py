"""Serving under load: requests/s, sentences/s and latency of the scoring server.

Drives ``/invocations`` with 1, 4 and 16 closed-loop clients (each sends its next request
when the previous one is answered), for a bounded time per setting, with test-split
sources in requests of 1 and of 16 sentences. Prints one JSON line per setting:
requests/s, sentences/s, p50/p99 latency in ms and the error count (any non-200 answer
or a failed connection).

    python bench/serve_load.py                       # start `seq2seq serve` on the champion
    python bench/serve_load.py --model /path/to/model --set serve.workers=2
    python bench/serve_load.py --model DIR --plain   # MLflow's defaults (no serve settings)
    python bench/serve_load.py --url http://127.0.0.1:5001   # a server already running

Run it from the repo root; it competes with the server for the CPU, which its threads
barely use (one small JSON request at a time each).
"""

from __future__ import annotations

import argparse
import atexit
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from seq2seq_core.config import load_config  # noqa: E402
from seq2seq_core.data.prepare import read_prepared_split  # noqa: E402


@dataclass
class ClientLog:
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    sentences: int = 0


def run_setting(
    url: str, sources: list[str], clients: int, per_request: int, seconds: float
) -> dict:
    """`clients` threads send requests of `per_request` sentences until `seconds` pass."""
    parsed = urllib.parse.urlsplit(url)
    deadline = time.monotonic() + seconds
    logs = [ClientLog() for _ in range(clients)]

    def client(i: int) -> None:
        conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=120)
        offset = (i * 7919) % len(sources)  # clients start at different sentences
        while time.monotonic() < deadline:
            batch = [sources[(offset + k) % len(sources)] for k in range(per_request)]
            offset += per_request
            body = json.dumps({"inputs": {"src": batch}})
            start = time.monotonic()
            try:
                conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                payload = response.read()
                ok = response.status == 200 and len(json.loads(payload)["predictions"]) == len(
                    batch
                )
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=120)
            if ok:
                logs[i].latencies_s.append(time.monotonic() - start)
                logs[i].sentences += len(batch)
            else:
                logs[i].errors += 1
        conn.close()

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    latencies = sorted(x for log in logs for x in log.latencies_s)
    return {
        "clients": clients,
        "sentences_per_request": per_request,
        "seconds": round(elapsed, 1),
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / elapsed, 2),
        "sentences_per_s": round(sum(log.sentences for log in logs) / elapsed, 2),
        "p50_ms": round(_quantile(latencies, 0.50) * 1000, 1) if latencies else None,
        "p99_ms": round(_quantile(latencies, 0.99) * 1000, 1) if latencies else None,
        "errors": sum(log.errors for log in logs),
    }


def _quantile(sorted_values: list[float], q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[round(q * 100) - 1]


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    """`seq2seq serve`'s server (its command and scrubbed environment) on the model, or
    `mlflow models serve` with MLflow's defaults (--plain)."""
    from flows.cli_registry import serve_command, serve_process_env

    cfg = load_config(args.params, args.set)
    model = args.model or f"models:/{cfg.register.model_name}@champion"
    if args.plain:
        command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model,
                   "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
        env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent),
                                                       os.environ.get("PATH", "")])}  # fmt: skip
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        if not Path(model).is_dir():
            env["MLFLOW_TRACKING_URI"] = _tracking_uri()
    else:
        command = serve_command(cfg, port, "127.0.0.1")
        env = serve_process_env(cfg, _local_model(model))
    return subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL if not args.server_log else None,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def _tracking_uri() -> str:
    from flows import tracking

    return tracking.configure_tracking(Path.cwd())


def _local_model(model: str) -> Path:
    """A model directory as is; a URI fetched (as `seq2seq serve` does) to a temporary one."""
    if Path(model).is_dir():
        return Path(model)
    from flows.model_integrity import fetch_verified_model

    _tracking_uri()
    dest = Path(tempfile.mkdtemp(prefix="serve-load-"))
    atexit.register(shutil.rmtree, dest, ignore_errors=True)
    return fetch_verified_model(model, dest)


def stop_server(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, then SIGKILL to what is left of it: uvicorn
    would otherwise finish every open request first."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=30)
            time.sleep(1)  # uvicorn may outlive the CLI by a moment
        except subprocess.TimeoutExpired:
            continue


def wait_ready(url: str, server: subprocess.Popen | None, timeout_s: float = 180) -> None:
    parsed = urllib.parse.urlsplit(url)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=2)
            conn.request("GET", "/ping")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        if (server is not None and server.poll() is not None) or time.monotonic() > deadline:
            raise SystemExit(f"server at {url} did not become ready")
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="target this server instead of starting one")
    parser.add_argument("--model", help="model URI or directory (default: the champion)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", action="append", default=[], help="section.key=value")
    parser.add_argument("--plain", action="store_true",
                        help="start `mlflow models serve` without the serve settings")  # fmt: skip
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--sizes", default="1,16", help="sentences per request")
    parser.add_argument("--seconds", type=float, default=20.0, help="per setting")
    parser.add_argument("--server-log", action="store_true", help="show the server's output")
    parser.add_argument("--label", default="", help="added to every JSON line")
    args = parser.parse_args()
    # A `timeout` or Ctrl-C must not leave the server running: exit through `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    cfg = load_config(args.params, args.set)
    sources = read_prepared_split(Path(cfg.data.prepared_dir), "test")["src"].tolist()
    server = None
    url = args.url
    if url is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        server = start_server(args, port)
    try:
        wait_ready(url, server)
        run_setting(url, sources, 2, 1, 3.0)  # warm-up: first-call allocations
        for size in (int(x) for x in args.sizes.split(",")):
            for clients in (int(x) for x in args.clients.split(",")):
                result = run_setting(url, sources, clients, size, args.seconds)
                print(json.dumps({"label": args.label, **result}), flush=True)
    finally:
        if server is not None:
            stop_server(server)


if __name__ == "__main__":
    main()
