"""`seq2seq`: one command per stage plus the whole pipeline and translation.

DVC's stage commands, the Makefile and users all come through here; each subcommand
parses arguments and calls the one stage function.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

from flows import cli_registry
from flows.run_logging import log_to_stderr
from flows.workspace_lock import WorkspaceBusyError
from seq2seq_core.config import ConfigError, PipelineConfig, load_config
from seq2seq_core.model.checkpoint import CheckpointDir
from seq2seq_core.runtime.files import FileWriteError

QUIET_ENV = {
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    # The ephemeral Prefect API starts slowly on 2-core machines: Prefect's default wait is short.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


def _set_quiet_env() -> None:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    # Prefect's ephemeral API cannot create its SQLite file in a missing folder.
    if os.environ.get("PREFECT_HOME"):
        Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)


def _config(args: argparse.Namespace) -> PipelineConfig:
    return load_config(args.params, args.set)


def _print_json(payload: Any) -> None:
    print(json.dumps(payload, indent=2, ensure_ascii=False, default=str))


def _warm_start(cfg: PipelineConfig) -> Any:
    """`train.init_from` as local files (a registry reference is downloaded first)."""
    if cfg.train.init_from.strip() == "none":
        return None
    from flows import tracking
    from flows.init_from import resolve_warm_start

    tracking.configure_tracking(Path.cwd())
    return resolve_warm_start(cfg)


def cmd_ingest(args: argparse.Namespace) -> None:
    from seq2seq_core import stages

    _print_json(asdict(stages.ingest(_config(args))))


def cmd_vocab(args: argparse.Namespace) -> None:
    from seq2seq_core import stages

    cfg = _config(args)
    _print_json(asdict(stages.build_vocab(cfg, warm_start=_warm_start(cfg))))


def cmd_train(args: argparse.Namespace) -> None:
    from flows import distributed_train
    from seq2seq_core import stages
    from seq2seq_core.runtime import distributed

    cfg = _config(args)
    if (code := distributed_train.relaunch(args.params, args.set)) is not None:
        raise SystemExit(code)  # SEQ2SEQ_TORCHRUN: trained under torchrun
    callbacks = distributed_train.train_callbacks()
    with distributed.process_group():  # under torchrun: left at the end, or on an error
        result = asdict(stages.train(cfg, callbacks=callbacks, warm_start=_warm_start(cfg)))
    distributed_train.close_callbacks(callbacks)
    result.pop("history", None)
    _print_json(result)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from seq2seq_core import stages

    result = stages.evaluate(_config(args))
    _print_json(result.metrics)


def cmd_register(args: argparse.Namespace) -> None:
    from flows.register_stage import register_stage

    _print_json(register_stage(_config(args), trigger="cli", root=Path.cwd()))


def cmd_pipeline(args: argparse.Namespace) -> None:
    _config(args)  # fail on a bad parameter before paying for the Prefect start-up
    from flows.pipeline import training_pipeline

    summary = training_pipeline(
        params_path=args.params,
        overrides=args.set,
        dvc_commit=not args.no_dvc_commit,
        force=args.force,
    )
    if summary["status"] == "up_to_date":
        print(f"\nNothing to do: {summary['message']}")
        print("Change the data or a parameter, or pass --force, to train again.")
        return
    test, reg = summary["test"], summary["registration"]
    print()
    print(f"Test BLEU {test['bleu']:.2f}  chrF {test['chrf']:.2f}  TER {test['ter']:.2f}")
    print(f"  BLEU signature: {test['signatures']['bleu']}")
    print(
        f"Registered {reg['model_name']} version {reg['version']} "
        f"with alias(es): {', '.join(reg['aliases'])} ({reg['reason']})"
    )
    print(f"Stage seconds: {json.dumps(summary['seconds'])}")
    print()
    print(
        "Open the MLflow UI:  .venv/bin/mlflow ui --backend-store-uri "
        "sqlite:///mlflow.db --host 127.0.0.1 --port 5000"
    )
    print("Open the Prefect UI: .venv/bin/prefect server start --host 127.0.0.1 --port 4200")
    print(
        f'Translate:          .venv/bin/seq2seq translate "Im Anfang schuf Gott die Himmel'
        f' und die Erde." --params {args.params}'
    )


def cmd_translate(args: argparse.Namespace) -> None:
    cfg = _config(args)
    sentences = list(args.text)
    if args.input:
        path = Path(args.input)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: input file not found")
        sentences += path.read_text(encoding="utf-8").splitlines()
    if not sentences and not sys.stdin.isatty():
        sentences += sys.stdin.read().splitlines()
    if not sentences:
        raise SystemExit("seq2seq translate: give sentences as arguments, --input FILE or stdin")
    translator = _load_translator(cfg, args.model)
    if args.batch_size:
        translator.decode = dataclasses.replace(translator.decode, batch_size=args.batch_size)
    beam = args.beam or translator.decode.beam_size
    nbest = args.nbest or 1
    if nbest > beam:
        raise ValueError(f"--nbest {nbest} needs --beam of at least {nbest} (got {beam})")
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
    try:
        for i, hyps in enumerate(translator.translate_nbest(sentences, beam, nbest)):
            if nbest == 1:
                print(hyps[0][0], file=out)
            else:  # Moses / fairseq n-best style: sentence index ||| hypothesis ||| score
                for text, score in hyps:
                    print(f"{i} ||| {text} ||| {score:.4f}", file=out)
    finally:
        if out is not sys.stdout:
            out.close()


def cmd_average(args: argparse.Namespace) -> None:
    """Average checkpoints of one architecture and vocabulary into --out (no optimizer:
    for translating and evaluating, not for resuming)."""
    from seq2seq_core.model.checkpoint import save_checkpoint
    from seq2seq_core.training.averaging import average_checkpoints

    out = Path(args.out)
    save_checkpoint(out, average_checkpoints([Path(p) for p in args.checkpoints]))
    _print_json({"out": str(out), "averaged_from": args.checkpoints})


def _load_translator(cfg: PipelineConfig, model: str | None) -> Any:
    """A `Translator` from a local checkpoint (.pt, with the vocab of the params) or a
    registered version (the pyfunc model's own checkpoint, vocab and decode settings),
    verified first (flows/model_integrity.py; `runs:/` URIs carry no digests: refused)."""
    if model and not model.startswith(("models:/", "runs:/")):
        from seq2seq_core.decoding.translator import Translator

        checkpoint = Path(model)
        if checkpoint.is_dir():
            checkpoint = CheckpointDir(checkpoint).best
        from seq2seq_core.runtime.device import resolve_device

        device = resolve_device(cfg.train.device)
        return Translator.load(checkpoint, cfg.vocab.out_dir, cfg.decode, device=device)
    import mlflow.pyfunc

    from flows import tracking
    from flows.model_integrity import fetch_verified_model

    tracking.configure_tracking(Path.cwd())
    uri = model or f"models:/{cfg.register.model_name}@champion"
    # Checked against the version's recorded digests before any of its code is imported;
    # the folder lives as long as the process (the model imports some modules lazily).
    local = Path(tempfile.mkdtemp(prefix="seq2seq-translate-"))
    atexit.register(shutil.rmtree, local, ignore_errors=True)
    model_dir = fetch_verified_model(uri, local / "model")
    return mlflow.pyfunc.load_model(str(model_dir)).unwrap_python_model().translator


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seq2seq", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, fn: Any, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--params", default="params.yaml", help="parameter file")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="SECTION.KEY=VALUE",
            help="override one parameter (repeatable), e.g. --set train.max_epochs=2",
        )
        p.set_defaults(fn=fn)
        return p

    add("ingest", cmd_ingest, "read, clean and split the corpus")
    add("vocab", cmd_vocab, "train the SentencePiece vocabulary on the train split")
    add("train", cmd_train, "train the encoder-decoder (resumes from last.pt)")
    add("evaluate", cmd_evaluate, "decode the test split and score it with sacrebleu")
    add("register", cmd_register, "log to MLflow, register, and run the promotion gate")
    cli_registry.add_commands(
        lambda name, fn, text: add(name, lambda args: fn(args, _config(args)), text)
    )
    p = add("pipeline", cmd_pipeline, "run all stages as one Prefect flow")
    p.add_argument("--no-dvc-commit", action="store_true", help="don't record outputs in dvc.lock")
    p.add_argument(
        "--force", action="store_true", help="run even if a registered version has these inputs"
    )
    p = add("translate", cmd_translate, "translate sentences (arguments, --input or stdin)")
    p.add_argument("text", nargs="*", help="sentences to translate")
    p.add_argument("--input", "--file", dest="input", help="a file with one sentence per line")
    p.add_argument("--output", help="write translations here instead of stdout")
    p.add_argument(
        "--model",
        help="models:/NAME@ALIAS or models:/NAME/VERSION (default: the champion; checked "
        "against its recorded sha256 digests), a .pt checkpoint or its dir",
    )
    p.add_argument("--beam", type=int, help="beam size (default decode.beam_size; 1 = greedy)")
    p.add_argument("--nbest", type=int, help="print the n best hypotheses: i ||| text ||| score")
    p.add_argument("--batch-size", type=int, help="sentences per batch (decode.batch_size)")
    p = sub.add_parser("average", help="average checkpoints' weights into one checkpoint")
    p.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoints (.pt) to average")
    p.add_argument("--out", required=True, help="where to write the averaged checkpoint")
    p.set_defaults(fn=cmd_average)
    return parser


# Commands that write the workspace hold its lock (the pipeline takes it inside the flow,
# so that deployment runs hold it too).
WRITING_COMMANDS = {"ingest", "vocab", "train", "evaluate", "register"}


def _run_command(args: argparse.Namespace) -> None:
    if args.command not in WRITING_COMMANDS:
        args.fn(args)
        return
    if "WORLD_SIZE" in os.environ:  # a torchrun worker: its launcher holds the lock here
        args.fn(args)
        return
    from flows.workspace_lock import workspace_lock

    cfg = _config(args)
    timeout_min, command = cfg.pipeline.lock_timeout_min, f"seq2seq {args.command}"
    with workspace_lock(timeout_min=timeout_min, command=command), _store_writer(args.command, cfg):
        args.fn(args)


def _store_writer(command: str, cfg: PipelineConfig) -> AbstractContextManager[None]:
    """One writer at a time on a SQLite store, across workspaces' copies (parallel DVC
    experiments register into their workspace's mlflow.db; flows/dvc_experiment.py)."""
    from flows import dvc_experiment

    if not dvc_experiment.writes_to_store(command, cfg):
        return nullcontext()
    from flows.tracking import tracking_uri

    return dvc_experiment.store_writer(tracking_uri())


def main(argv: list[str] | None = None) -> int:
    _set_quiet_env()
    log_to_stderr()
    args = build_parser().parse_args(argv)
    try:
        _run_command(args)
    except WorkspaceBusyError as exc:
        print(f"seq2seq {args.command}: {exc}", file=sys.stderr)
        return 3
    except ConfigError as exc:
        print(f"seq2seq: parameter error: {exc}", file=sys.stderr)
        return 2
    except FileWriteError as exc:
        # A full disk or a failing one: the file and what to do, its temporary file gone.
        print(f"seq2seq {args.command}: {exc}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as exc:
        # DataError, missing stage outputs and bad input are ValueError/FileNotFoundError
        # subclasses whose messages name the file and line; a traceback adds nothing.
        print(f"seq2seq {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
