"""`seq2seq promote | rollback | registry history | registry attest | serve`: the registry
from a shell.

Kept apart from flows/cli.py so that the stage commands do not import MLflow."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from seq2seq_core.config import PipelineConfig


def _trigger(kind: str) -> str:
    from flows.lineage import os_user

    return f"cli:{kind}:{os_user()}"


def _registry(cfg: PipelineConfig):
    from flows import registry, tracking

    tracking.configure_tracking(Path.cwd())
    return registry


def cmd_promote(args: argparse.Namespace, cfg: PipelineConfig) -> None:
    registry = _registry(cfg)
    result = registry.promote(
        cfg, version=args.version, force=args.force, trigger=_trigger("promote")
    )
    print(json.dumps(asdict(result), indent=2))


def cmd_rollback(args: argparse.Namespace, cfg: PipelineConfig) -> None:
    registry = _registry(cfg)
    print(json.dumps(asdict(registry.rollback(cfg, trigger=_trigger("rollback"))), indent=2))


def cmd_registry(args: argparse.Namespace, cfg: PipelineConfig) -> None:
    if args.what == "attest":
        cmd_attest(args, cfg)
    else:
        cmd_history(args, cfg)


def cmd_attest(args: argparse.Namespace, cfg: PipelineConfig) -> None:
    """Record the sha256 digests of a version registered before they existed, after a
    person checked its files (flows/model_integrity.py); loaders refuse it until then."""
    from flows import model_integrity

    _registry(cfg)
    if not args.version:
        raise ValueError("registry attest: give --version N (the version you checked)")
    name = cfg.register.model_name
    tags = model_integrity.attest(name, args.version, replace=args.replace)
    files = json.loads(tags.pop(model_integrity.FILES_TAG, "{}"))
    print(json.dumps({"model": name, "version": str(args.version), "files": len(files), **tags},
                     indent=2))  # fmt: skip


def cmd_history(args: argparse.Namespace, cfg: PipelineConfig) -> None:
    registry = _registry(cfg)
    moves = registry.history(cfg.register.model_name)
    if args.json:
        print(json.dumps(moves, indent=2))
    else:
        print(history_table(moves))


def history_table(moves: list[dict[str, Any]]) -> str:
    """`registry.history`'s alias moves, one line each under a header."""
    lines = [
        f"{'when (UTC)':25} {'alias':10} {'from':>5} {'to':>4} {'dBLEU':>7} {'dchrF':>7} "
        f"{'p':>7}  trigger / reason"
    ]
    for m in moves:
        lines.append(
            f"{m['at'][:25]:25} {m['alias']:10} {m['from'] or '-':>5} {m['to']:>4} "
            f"{_num(m, 'bleu_delta', 2):>7} {_num(m, 'chrf_delta', 2):>7} "
            f"{_num(m, 'p_value', 4):>7}  {m['trigger'] or '-'}: {m['reason']}"
        )
    return "\n".join(lines)


def _num(move: Mapping[str, Any], key: str, digits: int) -> str:
    value = move.get(key)
    return "-" if value is None else f"{value:.{digits}f}"


def serve_command(cfg: PipelineConfig, port: int, host: str) -> list[str]:
    """uvicorn on ``seq2seq_serve_app`` (MLflow's scoring app behind the request guard),
    with the serve limits uvicorn itself enforces. No secret is ever an argument."""
    from seq2seq_serve_app import APP_SPEC
    from seq2seq_serve_loop import LOOP_SPEC

    s = cfg.serve
    return [
        sys.executable, "-m", "uvicorn", "--factory", APP_SPEC,
        "--host", host, "--port", str(port), "--workers", str(s.workers),
        "--loop", LOOP_SPEC,
        "--limit-concurrency", str(s.limit_concurrency),
        "--timeout-keep-alive", _seconds(s.keep_alive_s),
        # A request runs request_timeout_s at most, so shutdown waits no longer.
        "--timeout-graceful-shutdown", _seconds(s.request_timeout_s),
    ]  # fmt: skip


def _seconds(value: float) -> str:
    """uvicorn's timeouts are whole seconds (at least 1)."""
    return str(max(1, math.ceil(value)))


def serve_env(cfg: PipelineConfig) -> dict[str, str]:
    """The settings the serving process reads: torch threads, the predict pool (see
    ``seq2seq_serve_loop``), the request guard's limits (``seq2seq_serve_app``) and the
    pyfunc's batching and request-size settings (``flows.pyfunc``)."""
    from flows.pyfunc import BATCH_LOG_ENV, BATCH_WAIT_ENV, MAX_BEAM_SIZE_ENV, MAX_SENTENCES_ENV
    from seq2seq_serve_app import BODY_TIMEOUT_ENV, MAX_REQUEST_BYTES_ENV, REQUEST_TIMEOUT_ENV
    from seq2seq_serve_loop import LOOP_SPEC, REQUEST_THREADS_ENV

    s = cfg.serve
    threads = str(s.torch_threads)
    return {
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        # OpenMP threads that spin while they wait collapse when another process takes a
        # core: passive waiting keeps decoding steady on a shared machine.
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        # For a plain `mlflow models serve` of the same model; `seq2seq serve` passes --loop.
        "UVICORN_LOOP": LOOP_SPEC,
        REQUEST_THREADS_ENV: str(s.request_threads),
        BATCH_WAIT_ENV: str(s.batch_wait_ms),
        BATCH_LOG_ENV: str(s.batch_log_s),
        MAX_SENTENCES_ENV: str(s.max_sentences_per_request),
        MAX_BEAM_SIZE_ENV: str(s.max_beam_size),
        MAX_REQUEST_BYTES_ENV: str(s.max_request_bytes),
        BODY_TIMEOUT_ENV: str(s.body_timeout_s),
        REQUEST_TIMEOUT_ENV: str(s.request_timeout_s),
        # MLflow's own timeout (504) stays behind the guard's, which stops the decoding too.
        "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": _seconds(s.request_timeout_s + 30),
    }


# What the serving process may inherit: the model is local and needs no credential, so
# AWS_*, MLFLOW_TRACKING_* and PREFECT_* (and anything else) stay behind.
INHERITED_ENV = frozenset(
    {"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH",
     "CUDA_VISIBLE_DEVICES", "OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY",
     "DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY"}
)  # fmt: skip
INHERITED_PREFIXES = ("LC_", "OMP_", "MKL_", "KMP_")


def serve_process_env(
    cfg: PipelineConfig, model_dir: Path, parent: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The serving process's whole environment: an allowlist of ``parent``'s (default:
    this process's), the serve settings, the model directory, the venv's bin on PATH and
    this checkout on PYTHONPATH (uvicorn imports ``seq2seq_serve_app``/``_loop`` from it)."""
    from seq2seq_serve_app import MODEL_DIR_ENV

    parent = os.environ if parent is None else parent
    env = {
        k: v for k, v in parent.items() if k in INHERITED_ENV or k.startswith(INHERITED_PREFIXES)
    }
    env.update(serve_env(cfg))
    env[MODEL_DIR_ENV] = str(model_dir)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in (bin_dir, parent.get("PATH")) if p)
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, parent.get("PYTHONPATH")) if p)
    return env


def cmd_serve(args: argparse.Namespace, cfg: PipelineConfig) -> None:
    from flows import tracking
    from flows.model_integrity import fetch_verified_model

    tracking.configure_tracking(Path.cwd())
    port = args.port or cfg.register.serve_port
    uri = f"models:/{cfg.register.model_name}@{args.alias}"
    with tempfile.TemporaryDirectory(prefix="seq2seq-serve-") as tmp:
        # Fetched (and checked) here, with this process's credentials; the server gets a
        # local directory and an environment without them.
        model_dir = fetch_verified_model(uri, Path(tmp))
        print(f"serving {uri} on http://{args.host}:{port}/invocations ({cfg.serve.workers} "
              f"worker(s) x {cfg.serve.torch_threads} torch thread(s))",
              file=sys.stderr)  # fmt: skip
        code = run_server(serve_command(cfg, port, args.host), serve_process_env(cfg, model_dir))
    raise SystemExit(code)


def run_server(command: list[str], env: dict[str, str]) -> int:
    """Run the server until it exits; a SIGTERM to this process stops it gracefully (and
    lets the caller remove the fetched model)."""
    server = subprocess.Popen(command, env=env)
    previous = signal.signal(signal.SIGTERM, lambda *_: server.terminate())
    try:
        return server.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def add_commands(add) -> None:
    p = add("promote", cmd_promote, "run the promotion gate for the challenger (or --version)")
    p.add_argument("--version", help="model version to consider (default: the challenger)")
    p.add_argument("--force", action="store_true", help="promote even if the gate says no")
    add("rollback", cmd_rollback, "move champion back to the previous champion")
    p = add("registry", cmd_registry, "the registry's alias history; attest an old version")
    p.add_argument(
        "what",
        choices=["history", "attest"],
        help="history: every recorded alias move; attest: record the sha256 digests of "
        "--version's current files (a version registered before digests existed, checked "
        "by you)",
    )
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.add_argument("--version", help="attest: the model version")
    p.add_argument("--replace", action="store_true", help="attest: overwrite digests that disagree")
    p = add("serve", cmd_serve, "serve a registry alias (MLflow's scoring app under uvicorn)")
    p.add_argument("--alias", default="champion")
    p.add_argument("--port", type=int, help="default register.serve_port")
    p.add_argument("--host", default="127.0.0.1")
