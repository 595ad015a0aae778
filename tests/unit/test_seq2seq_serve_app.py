"""The request guard of `seq2seq serve` under a real uvicorn on a free loopback port, in
front of a small ASGI app that records what reached it: oversized bodies get 413 (by
Content-Length before the body, or counted while chunks arrive), half-sent bodies 408
without reaching the app, /ping 503 when the model is unhealthy, and the request state
(deadline, client gone, status) reaches a worker thread as it reaches ``predict``."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

import seq2seq_serve_app
from seq2seq_serve_app import Limits, RequestGuard

LIMITS = Limits(max_request_bytes=1000, body_timeout_s=0.5, request_timeout_s=0.6)


class Inner:
    """Echoes the body's size; ``/slow`` sleeps in a worker thread until its client goes
    (``cancelled``); ``/refuse`` asks for 413 through the state and answers 400."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.cancelled_seen = threading.Event()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        self.calls.append(scope["path"])
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        status = 200
        if scope["path"] == "/slow":
            await asyncio.to_thread(self._wait_for_cancel)
        elif scope["path"] == "/refuse":
            await asyncio.to_thread(self._refuse)
            status = 400
        elif scope["path"] == "/hang":
            await asyncio.sleep(30)
        payload = json.dumps({"bytes": len(body)}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", str(len(payload)).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": payload})

    def _wait_for_cancel(self) -> None:
        state = seq2seq_serve_app.current_request.get()
        if state is not None and state.cancelled.wait(timeout=5):
            self.cancelled_seen.set()

    def _refuse(self) -> None:
        seq2seq_serve_app.current_request.get().status = 413


class Served:
    def __init__(self, port: int, inner: Inner, health: dict[str, bool]) -> None:
        self.port = port
        self.inner = inner
        self.health = health

    def raw(self, data: bytes, read_timeout: float = 5.0) -> tuple[int, float, bytes]:
        """Send ``data`` on a fresh socket, keep it open, and read the answer: (status,
        seconds from the last byte sent to the answer, the raw answer)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=read_timeout) as s:
            s.sendall(data)
            start = time.monotonic()
            answer = _read_response(s)
            return int(answer.split(b" ", 2)[1]), time.monotonic() - start, answer


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
         if line.lower().startswith(b"content-length:")), 0,
    )  # fmt: skip
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def _post(path: str, body: bytes, length: int | None = None) -> bytes:
    length = len(body) if length is None else length
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n"
    return head.encode() + body


@pytest.fixture
def served() -> Iterator[Served]:
    inner = Inner()
    health = {"ok": True}
    guard = RequestGuard(inner, LIMITS, healthy=lambda: health["ok"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(guard, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield Served(port, inner, health)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_body_within_the_limit_reaches_the_app_whole(served: Served) -> None:
    status, _, answer = served.raw(_post("/invocations", b"x" * 1000))
    assert status == 200 and answer.endswith(b'{"bytes": 1000}')


def test_content_length_over_the_limit_gets_413_before_the_body(served: Served) -> None:
    # Headers only: the 10 MB body never comes, the answer does, at once.
    status, seconds, answer = served.raw(_post("/invocations", b"", length=10_000_000))
    assert status == 413 and seconds < 0.4
    assert b"serve.max_request_bytes" in answer
    assert served.inner.calls == []


def test_a_chunked_body_is_counted_and_cut_at_the_limit(served: Served) -> None:
    head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"1f4\r\n" + b"y" * 500 + b"\r\n"  # 500 bytes each; the third passes 1000
    status, seconds, _ = served.raw(head + chunk * 3)
    assert status == 413 and seconds < 0.4
    assert served.inner.calls == []
    status, _, answer = served.raw(head + chunk * 2 + b"0\r\n\r\n")
    assert status == 200 and answer.endswith(b'{"bytes": 1000}')


def test_a_half_sent_body_gets_408_and_never_reaches_the_app(served: Served) -> None:
    status, seconds, answer = served.raw(_post("/invocations", b"z" * 10, length=900))
    assert status == 408 and 0.4 < seconds < 1.5  # body_timeout_s = 0.5
    assert b"serve.body_timeout_s" in answer
    assert served.inner.calls == []


def test_ping_is_503_while_the_model_is_unhealthy(served: Served) -> None:
    ping = b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n"
    assert served.raw(ping)[0] == 200
    served.health["ok"] = False
    assert served.raw(ping)[0] == 503
    assert served.raw(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 503
    served.health["ok"] = True
    assert served.raw(ping)[0] == 200


def test_a_client_that_leaves_cancels_its_request_in_the_worker_thread(served: Served) -> None:
    with socket.create_connection(("127.0.0.1", served.port)) as s:
        s.sendall(_post("/slow", b"{}"))
        time.sleep(0.2)  # the request is in its worker thread now
    # Well before the request's deadline (0.6 s + grace), which would cancel it too.
    assert served.inner.cancelled_seen.wait(timeout=0.6)


def test_predict_can_ask_for_its_own_status(served: Served) -> None:
    assert served.raw(_post("/refuse", b"{}"))[0] == 413


def test_an_app_that_overruns_the_deadline_gets_504(served: Served) -> None:
    status, seconds, answer = served.raw(_post("/hang", b"{}"))
    # request_timeout_s = 0.6 plus the guard's grace of DEADLINE_GRACE_S.
    assert status == 504 and seconds < 0.6 + seq2seq_serve_app.DEADLINE_GRACE_S + 0.5
    assert b"serve.request_timeout_s" in answer


@pytest.mark.parametrize("value", ["", "0", "-1", "lots"])
def test_limits_from_the_environment_name_a_bad_variable(value: str) -> None:
    env = {"SEQ2SEQ_MAX_REQUEST_BYTES": "100", "SEQ2SEQ_BODY_TIMEOUT_S": "1",
           "SEQ2SEQ_REQUEST_TIMEOUT_S": value}  # fmt: skip
    with pytest.raises(ValueError, match="SEQ2SEQ_REQUEST_TIMEOUT_S"):
        Limits.from_env(env)
    env["SEQ2SEQ_REQUEST_TIMEOUT_S"] = "2.5"
    assert Limits.from_env(env) == Limits(100, 1.0, 2.5)
