"""`seq2seq promote | rollback | registry history | registry attest | serve`: the registry
from a shell.

Kept apart from flows/cli.py so that the stage commands do not import MLflow."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from seq2seq_core.config import PipelineConfig


def _trigger(kind: str) -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{kind}:{user}"


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


def serve_command(cfg: PipelineConfig, alias: str, port: int, host: str) -> list[str]:
    uri = f"models:/{cfg.register.model_name}@{alias}"
    return [
        sys.executable, "-m", "mlflow", "models", "serve", "-m", uri,
        "--env-manager", "local", "-h", host, "-p", str(port),
        "--workers", str(cfg.serve.workers),
    ]  # fmt: skip


def serve_env(cfg: PipelineConfig) -> dict[str, str]:
    """What the scoring server's workers read: torch threads, the predict pool (see
    ``seq2seq_serve_loop``) and the pyfunc's batching settings (see ``flows.pyfunc``)."""
    from flows.pyfunc import BATCH_LOG_ENV, BATCH_WAIT_ENV
    from seq2seq_serve_loop import LOOP_SPEC, REQUEST_THREADS_ENV

    threads = str(cfg.serve.torch_threads)
    return {
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        # OpenMP threads that spin while they wait collapse when another process takes a
        # core: passive waiting keeps decoding steady on a shared machine.
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        "UVICORN_LOOP": LOOP_SPEC,
        REQUEST_THREADS_ENV: str(cfg.serve.request_threads),
        BATCH_WAIT_ENV: str(cfg.serve.batch_wait_ms),
        BATCH_LOG_ENV: str(cfg.serve.batch_log_s),
    }


def cmd_serve(args: argparse.Namespace, cfg: PipelineConfig) -> None:
    from flows import tracking

    uri = tracking.configure_tracking(Path.cwd())
    port = args.port or cfg.register.serve_port
    command = serve_command(cfg, args.alias, port, args.host)
    print(f"serving models:/{cfg.register.model_name}@{args.alias} on http://{args.host}:{port}"
          f"/invocations ({cfg.serve.workers} worker(s) x {cfg.serve.torch_threads} torch "
          "thread(s))", file=sys.stderr)  # fmt: skip
    # MLflow execs `uvicorn` by name: the venv's bin must be on PATH even when the venv
    # is not activated. The uvicorn workers import seq2seq_serve_loop from this checkout.
    bin_dir = str(Path(sys.executable).parent)
    repo = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        **serve_env(cfg),
        "MLFLOW_TRACKING_URI": uri,
        "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p),
    }
    raise SystemExit(subprocess.call(command, env=env))


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
    p = add("serve", cmd_serve, "serve a registry alias with `mlflow models serve`")
    p.add_argument("--alias", default="champion")
    p.add_argument("--port", type=int, help="default register.serve_port")
    p.add_argument("--host", default="127.0.0.1")
