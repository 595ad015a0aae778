"""The event loop `seq2seq serve` hands uvicorn: its predict pool is as large as
``serve.request_threads`` says, and it falls back to asyncio's own pool without the setting."""

from __future__ import annotations

import asyncio
import threading

import pytest

import seq2seq_serve_loop
from flows.cli_registry import serve_env
from seq2seq_core.config import config_from_dict


def _pool_threads(loop: asyncio.AbstractEventLoop, jobs: int) -> int:
    """How many distinct threads the loop's default executor runs ``jobs`` blocking calls on
    at once (each call waits until all have started, so each needs its own thread)."""
    started = threading.Barrier(jobs, timeout=5)
    names: set[str] = set()

    def job() -> None:
        names.add(threading.current_thread().name)
        started.wait()

    async def main() -> None:
        await asyncio.gather(*(asyncio.to_thread(job) for _ in range(jobs)))

    loop.run_until_complete(main())
    return len(names)


def test_the_predict_pool_has_the_configured_threads(monkeypatch) -> None:
    cfg = config_from_dict({"serve": {"request_threads": 40}})
    env = serve_env(cfg)
    assert env["UVICORN_LOOP"] == seq2seq_serve_loop.LOOP_SPEC
    monkeypatch.setenv(
        seq2seq_serve_loop.REQUEST_THREADS_ENV, env[seq2seq_serve_loop.REQUEST_THREADS_ENV]
    )
    loop = seq2seq_serve_loop.new_event_loop()
    try:
        # 40 calls that all wait for each other finish only on a pool of at least 40.
        assert _pool_threads(loop, 40) == 40
        executor = loop._default_executor  # asyncio keeps the one it was given
        assert executor._max_workers == 40
        assert executor._thread_name_prefix == "predict"
    finally:
        loop.close()


def test_without_the_setting_the_loop_keeps_asyncios_pool(monkeypatch) -> None:
    monkeypatch.delenv(seq2seq_serve_loop.REQUEST_THREADS_ENV, raising=False)
    loop = seq2seq_serve_loop.new_event_loop()
    try:
        assert loop._default_executor is None  # asyncio makes its own on first use
    finally:
        loop.close()


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_a_bad_setting_names_the_variable(monkeypatch, value: str) -> None:
    monkeypatch.setenv(seq2seq_serve_loop.REQUEST_THREADS_ENV, value)
    with pytest.raises(ValueError, match=rf"SEQ2SEQ_REQUEST_THREADS={value!r}"):
        seq2seq_serve_loop.new_event_loop()
