"""One client cannot stall the others: normal clients' latency alone and under attack.

Starts `seq2seq serve` on a workspace's champion and measures 4 closed-loop clients (one
verse per request) for --seconds: their p50/p99 alone, then again while one client sends
one request of 20,000 short verses and 20 sockets hang half-sent (a Content-Length larger
than what they send). Prints one JSON line: both latencies and their p99 ratio, the normal
clients' errors, the huge request's status and seconds to its answer, the half-sent
sockets' statuses, and whether the goal of issue 23 is met (p99 within 3x the baseline, no
errors, the huge request refused with a 4xx within 5 s).

    python bench/serve_attack.py                        # trains a tiny model first (~2 min)
    python bench/serve_attack.py --workspace DIR        # a workspace with a champion
    python bench/serve_attack.py --set serve.max_sentences_per_request=100000  # unguarded

Run it from the repo root.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from serve_load import run_setting, stop_server, wait_ready  # noqa: E402

from seq2seq_core.config import load_config  # noqa: E402
from seq2seq_core.data.prepare import read_prepared_split  # noqa: E402

GOAL_P99_RATIO = 3.0
GOAL_HUGE_S = 5.0


def tiny_workspace(root: Path) -> Path:
    """The tests' shared tiny model (tests/support.py), evaluated and registered as the
    champion of ``root``'s own MLflow store, as tests/integration/test_serve.py does."""
    from seq2seq_core import stages
    from tests.support import train_workspace

    trained = train_workspace(root)
    cwd = Path.cwd()
    try:
        os.chdir(root)
        stages.evaluate(trained.cfg)
    finally:
        os.chdir(cwd)
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "register"], cwd=root,
                          env=_cli_env(), capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"register failed: {proc.stderr[-2000:]}")
    return root


def _cli_env() -> dict[str, str]:
    """This environment without a tracking URI: the workspace's own store is used."""
    return {k: v for k, v in os.environ.items()
            if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}  # fmt: skip


def send_huge(port: int, sentences: list[str], out: dict) -> None:
    body = json.dumps({"inputs": {"src": sentences}})
    out.update(sentences=len(sentences), bytes=len(body.encode()))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.monotonic()
    try:
        conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        out["status"] = response.status
    except (OSError, http.client.HTTPException) as exc:
        out["status"] = type(exc).__name__
    out["seconds"] = round(time.monotonic() - start, 3)
    conn.close()


def hang_half_sent(port: int, out: list, index: int) -> None:
    """Announce 100,000 bytes, send 1,000, and wait for whatever the server does."""
    start = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
            s.sendall(b"POST /invocations HTTP/1.1\r\nHost: attacker\r\nContent-Type: "
                      b"application/json\r\nContent-Length: 100000\r\n\r\n"
                      + b'{"inputs": {"src": ["' + b"a" * 979)  # fmt: skip
            answer = s.recv(4096)
            status = answer.split(b" ", 2)[1].decode() if answer else "closed"
    except (OSError, IndexError) as exc:
        status = type(exc).__name__
    out[index] = (status, time.monotonic() - start)


def attack(port: int, huge: list[str], half_sent: int) -> tuple[list[threading.Thread], dict, list]:
    huge_out: dict = {}
    half_out: list = [None] * half_sent
    threads = [threading.Thread(target=hang_half_sent, args=(port, half_out, i), daemon=True)
               for i in range(half_sent)]  # fmt: skip
    threads.append(threading.Thread(target=send_huge, args=(port, huge, huge_out), daemon=True))
    for t in threads:
        t.start()
    return threads, huge_out, half_out


def short_verses(workspace: Path, cfg, count: int) -> list[str]:
    """``count`` short training verses (the 100 shortest, repeated as needed)."""
    train = sorted(read_prepared_split(workspace / cfg.data.prepared_dir, "train")["src"], key=len)
    pool = train[:100]
    return [pool[i % len(pool)] for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, help="a workspace with a registered champion")
    parser.add_argument("--set", action="append", default=[], help="serve.key=value for serve")
    parser.add_argument("--seconds", type=float, default=20.0, help="per phase")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--huge", type=int, default=20_000, help="sentences in the huge request")
    parser.add_argument("--half-sent", type=int, default=20)
    parser.add_argument("--server-log", action="store_true")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    with tempfile.TemporaryDirectory(prefix="serve-attack-") as tmp:
        workspace = args.workspace or tiny_workspace(Path(tmp) / "workspace")
        cfg = load_config(workspace / "params.yaml", args.set)
        sources = read_prepared_split(workspace / cfg.data.prepared_dir, "test")["src"].tolist()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        overrides = [x for item in args.set for x in ("--set", item)]
        server = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "serve", "--port", str(port), *overrides],
            cwd=workspace, env=_cli_env(), start_new_session=True,
            stdout=None if args.server_log else subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_ready(url, server)
            run_setting(url, sources, 2, 1, 3.0)  # warm-up
            baseline = run_setting(url, sources, args.clients, 1, args.seconds)
            threads, huge_out, half_out = attack(
                port, short_verses(workspace, cfg, args.huge), args.half_sent
            )
            attacked = run_setting(url, sources, args.clients, 1, args.seconds)
            for t in threads:
                t.join(timeout=cfg.serve.body_timeout_s + 30)
            print(json.dumps(report(baseline, attacked, huge_out, half_out, url)), flush=True)
        finally:
            stop_server(server)


def report(baseline: dict, attacked: dict, huge: dict, half: list, url: str) -> dict:
    ratio = attacked["p99_ms"] / baseline["p99_ms"] if attacked["p99_ms"] else None
    statuses: dict[str, int] = {}
    for status, _ in (h for h in half if h is not None):
        statuses[status] = statuses.get(status, 0) + 1
    answered = [h[1] for h in half if h is not None]
    huge_status = huge.get("status")
    goal = (
        ratio is not None and ratio <= GOAL_P99_RATIO and attacked["errors"] == 0
        and isinstance(huge_status, int) and 400 <= huge_status < 500
        and huge["seconds"] <= GOAL_HUGE_S
    )  # fmt: skip
    keys = ("requests", "p50_ms", "p99_ms", "errors")
    return {
        "baseline": {k: baseline[k] for k in keys},
        "attacked": {k: attacked[k] for k in keys},
        "p99_ratio": round(ratio, 2) if ratio else None,
        "errors": attacked["errors"],
        "huge": huge,
        "half_sent": {
            "sockets": len(half),
            "statuses": statuses,
            "max_seconds": round(max(answered), 2) if answered else None,
        },
        "ping_after": _ping(url),
        "goal_met": goal,
    }


def _ping(url: str) -> int | str:
    port = int(url.rsplit(":", 1)[1])
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/ping")
        return conn.getresponse().status
    except OSError as exc:
        return type(exc).__name__


if __name__ == "__main__":
    main()
