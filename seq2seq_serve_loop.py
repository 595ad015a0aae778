"""The event loop `seq2seq serve` gives MLflow's scoring server: a bigger predict pool.

MLflow 3's scoring server (FastAPI under uvicorn) runs each ``/invocations`` request's
``predict`` with ``asyncio.to_thread``, i.e. in the event loop's default executor, whose
size is ``min(32, cores + 4)``: on 2 cores, 6 requests at a time per worker. The pyfunc's
batcher can only coalesce requests that are inside ``predict`` at once, so that pool caps
a batch at 6 one-sentence requests. MLflow has no setting for it; uvicorn takes a custom
loop factory (``--loop module:callable``, or ``UVICORN_LOOP`` in the environment, which
`mlflow models serve` passes on to uvicorn). ``seq2seq serve`` sets
``UVICORN_LOOP=seq2seq_serve_loop:new_event_loop`` and ``SEQ2SEQ_REQUEST_THREADS`` from
``serve.request_threads``. Threads waiting on a batch cost memory only, not CPU.

A top-level module, not ``flows.serve_loop``: with one worker uvicorn loads the app (and
so the model) before the loop factory, and the model puts its own ``flows`` and
``seq2seq_core`` copies first on ``sys.path``; a module in either package would resolve
to the model's copy, which may predate this one. It imports nothing of the project.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

REQUEST_THREADS_ENV = "SEQ2SEQ_REQUEST_THREADS"
LOOP_SPEC = "seq2seq_serve_loop:new_event_loop"


def new_event_loop() -> asyncio.AbstractEventLoop:
    """An asyncio loop whose default executor has ``SEQ2SEQ_REQUEST_THREADS`` threads.

    ``seq2seq serve`` always sets the variable, from ``serve.request_threads`` (whose default
    lives in ``seq2seq_core.config.ServeConfig`` only); without it the loop keeps asyncio's
    own default executor, as a plain ``mlflow models serve`` would have."""
    loop = asyncio.SelectorEventLoop()
    threads = os.environ.get(REQUEST_THREADS_ENV, "").strip()
    if threads:
        if not threads.isdigit() or int(threads) < 1:
            raise ValueError(f"{REQUEST_THREADS_ENV}={threads!r}: expected a whole number >= 1")
        executor = ThreadPoolExecutor(int(threads), thread_name_prefix="predict")
        loop.set_default_executor(executor)
    return loop
