"""Where the core's log lines go: the CLI's stderr, and the Prefect flow-run log.

`seq2seq_core` logs epochs, resumes and warm starts at INFO through the standard `logging`
module. Left alone, nothing shows them: the root logger passes WARNING and up only, and the
Prefect UI shows only Prefect's own loggers. A person on call reads the flow-run log (a
worker has no terminal), so a flow routes these loggers there for its duration, and the CLI
prints them on stderr with a timestamp.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

PROJECT_LOGGERS = ("seq2seq_core", "flows")
LINE_FORMAT = "%(asctime)s | %(levelname)-7s | %(name)s - %(message)s"


def log_to_stderr() -> None:
    """CLI set-up: project loggers at INFO, everything else at WARNING, one stderr handler
    on the root (Prefect then leaves the root alone and its lines come through it too)."""
    logging.basicConfig(level=logging.WARNING, format=LINE_FORMAT, datefmt="%H:%M:%S")
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)


@contextmanager
def project_logs_to_prefect() -> Iterator[None]:
    """Send the project loggers' INFO lines to the current flow run's log (the Prefect UI);
    they still reach the console through the root logger."""
    from prefect.logging.handlers import APILogHandler

    handler = APILogHandler()
    loggers = [logging.getLogger(name) for name in PROJECT_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        if lg.level == logging.NOTSET or lg.level > logging.INFO:
            lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
