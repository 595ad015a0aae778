"""The ASGI app `seq2seq serve` runs: MLflow's scoring app behind a guard that one client
cannot stall.

MLflow's scoring server reads any body, however large or slow, holds a predict thread while
a request decodes for a client that has gone, and answers ``/ping`` 200 as long as a model
object exists. ``RequestGuard`` (pure ASGI, in front of MLflow's FastAPI app) adds:

- a body limit: a ``Content-Length`` over ``SEQ2SEQ_MAX_REQUEST_BYTES`` gets 413 before a
  byte of the body is read, a chunked body gets 413 as soon as the count passes it;
- a body deadline: a body not complete ``SEQ2SEQ_BODY_TIMEOUT_S`` after the headers gets
  408. The guard reads the body on the event loop, so a half-sent request never reaches
  ``predict`` nor holds one of its threads;
- a request deadline, ``SEQ2SEQ_REQUEST_TIMEOUT_S`` from arrival, and client-gone
  detection: once the body is in, the guard listens for ``http.disconnect``. Both reach
  ``predict`` through ``current_request``, a context variable holding a ``RequestState``
  (``asyncio.to_thread`` copies the context into the predict thread): the pyfunc hands
  ``state.deadline`` and ``state.cancelled`` to its batcher, which drops the request between
  chunks, and may set ``state.status`` (413 for too many sentences: MLflow's error codes
  have no 413);
- ``/ping`` and ``/health`` answer 503 when the model says it is not ``healthy()`` (its
  decoding thread is dead). A model without ``healthy`` (registered before it existed) is
  taken as healthy.

``create_app`` is a uvicorn factory (``--factory seq2seq_serve_app:create_app``): importing
this module loads no model, so the pyfunc can import ``current_request`` from it.
Top-level and free of project imports for the reason ``seq2seq_serve_loop`` gives: the model
puts its own ``flows``/``seq2seq_core`` copies first on ``sys.path``.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

MODEL_DIR_ENV = "SEQ2SEQ_MODEL_DIR"
MAX_REQUEST_BYTES_ENV = "SEQ2SEQ_MAX_REQUEST_BYTES"
BODY_TIMEOUT_ENV = "SEQ2SEQ_BODY_TIMEOUT_S"
REQUEST_TIMEOUT_ENV = "SEQ2SEQ_REQUEST_TIMEOUT_S"
APP_SPEC = "seq2seq_serve_app:create_app"
HEALTH_PATHS = ("/ping", "/health")
# The guard's own backstop fires this long after a request's deadline, for a model whose
# predict does not watch the deadline itself (one registered before it could).
DEADLINE_GRACE_S = 1.0

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass
class RequestState:
    """What ``predict`` may learn about the HTTP request it serves (duck-typed there: a
    model loaded outside `seq2seq serve` sees no state at all)."""

    deadline: float  # time.monotonic() seconds
    cancelled: threading.Event = field(default_factory=threading.Event)
    status: int | None = None  # the HTTP status predict asks for instead of MLflow's


current_request: contextvars.ContextVar[RequestState | None] = contextvars.ContextVar(
    "seq2seq_current_request", default=None
)


@dataclass(frozen=True)
class Limits:
    max_request_bytes: int
    body_timeout_s: float
    request_timeout_s: float

    @classmethod
    def from_env(cls, env: MutableMapping[str, str] | None = None) -> Limits:
        """The limits `seq2seq serve` sets from the ``serve`` config section (whose
        defaults live in ``seq2seq_core.config.ServeConfig`` only): each must be there."""
        env = os.environ if env is None else env
        return cls(
            max_request_bytes=int(_env_number(env, MAX_REQUEST_BYTES_ENV)),
            body_timeout_s=_env_number(env, BODY_TIMEOUT_ENV),
            request_timeout_s=_env_number(env, REQUEST_TIMEOUT_ENV),
        )


def _env_number(env: MutableMapping[str, str], name: str) -> float:
    text = env.get(name, "").strip()
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{name}={text!r}: expected a number > 0 (set by `seq2seq serve`)")
    return value


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _ClientGone(Exception):
    pass


class RequestGuard:
    """Pure ASGI middleware: body limit and deadline, request deadline, disconnect
    detection, and a health check that asks the model (see the module docstring)."""

    def __init__(self, app: ASGIApp, limits: Limits, healthy: Callable[[], bool]) -> None:
        self.app = app
        self.limits = limits
        self.healthy = healthy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] in HEALTH_PATHS and not self.healthy():
            await _answer(send, 503, "the model's decoding thread is not running")
            return
        state = RequestState(deadline=time.monotonic() + self.limits.request_timeout_s)
        try:
            self._check_length(scope)
            body = await self._read_body(receive)
        except _Refused as refused:
            await _answer(send, refused.status, str(refused))
            return
        except _ClientGone:
            return
        await self._call_app(scope, receive, send, state, body)

    def _check_length(self, scope: Scope) -> None:
        for name, value in scope["headers"]:
            if name.lower() == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    raise _Refused(400, "Content-Length is not a number") from None
                if length > self.limits.max_request_bytes:
                    raise _Refused(413, self._too_large())

    def _too_large(self) -> str:
        return (
            f"the request body is over {self.limits.max_request_bytes} bytes "
            "(serve.max_request_bytes)"
        )

    async def _read_body(self, receive: Receive) -> bytes:
        """The whole body, counted as it arrives, within the body deadline."""
        loop = asyncio.get_running_loop()
        ends = loop.time() + self.limits.body_timeout_s
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, ends - loop.time()))
            except TimeoutError:
                raise _Refused(
                    408,
                    f"the request body did not arrive within {self.limits.body_timeout_s:g} s "
                    "(serve.body_timeout_s)",
                ) from None
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limits.max_request_bytes:
                raise _Refused(413, self._too_large())
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _call_app(
        self, scope: Scope, receive: Receive, send: Send, state: RequestState, body: bytes
    ) -> None:
        """Run the app on the buffered body; a watcher alone reads ``receive`` from here on
        and sets ``state.cancelled`` when the client disconnects."""

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            state.cancelled.set()

        watcher = asyncio.ensure_future(watch())
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.shield(watcher)
            return {"type": "http.disconnect"}

        started = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if state.status is not None:
                    message = {**message, "status": state.status}
            await send(message)

        token = current_request.set(state)
        try:
            left = state.deadline - time.monotonic() + DEADLINE_GRACE_S
            await asyncio.wait_for(self.app(scope, replay, guarded_send), max(0.0, left))
        except TimeoutError:
            state.cancelled.set()
            if not started:
                await _answer(
                    send, 504, f"no answer within {self.limits.request_timeout_s:g} s "
                    "(serve.request_timeout_s)",
                )  # fmt: skip
        finally:
            current_request.reset(token)
            watcher.cancel()


async def _answer(send: Send, status: int, message: str) -> None:
    """A JSON error in MLflow's shape; the connection closes after it (a refused body may
    still be on its way)."""
    body = json.dumps({"error_code": _ERROR_CODES.get(status, "BAD_REQUEST"), "message": message})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body.encode()})


_ERROR_CODES = {
    408: "REQUEST_TIMEOUT",
    413: "REQUEST_TOO_LARGE",
    503: "TEMPORARILY_UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def health_probe(model: Any) -> Callable[[], bool]:
    """The loaded pyfunc's ``healthy()``, or always-healthy for a model without one."""
    from mlflow.exceptions import MlflowException

    try:
        python_model = model.unwrap_python_model()
    except (MlflowException, AttributeError):  # not a PythonModel: MLflow's check is all
        return lambda: True
    healthy = getattr(python_model, "healthy", None)
    return healthy if callable(healthy) else (lambda: True)


def create_app() -> RequestGuard:
    """uvicorn's factory: the model in ``SEQ2SEQ_MODEL_DIR`` (a local directory, already
    fetched and checked by `seq2seq serve`) in MLflow's scoring app, behind the guard."""
    from mlflow.pyfunc import scoring_server

    limits = Limits.from_env()
    model_dir = os.environ.get(MODEL_DIR_ENV, "")
    if not model_dir or not os.path.isdir(model_dir):
        raise ValueError(f"{MODEL_DIR_ENV}={model_dir!r}: expected a local model directory")
    model = scoring_server.load_model_with_mlflow_config(model_dir)
    return RequestGuard(scoring_server.init(model), limits, health_probe(model))
