"""`seq2seq serve`: a real server of the champion on a free loopback port.

The session's tiny model is evaluated, registered and served once per module; the tests send
real HTTP requests, one at a time and many at once (dynamic batching), oversized ones, read
the server's log, and look for planted credentials in the server process."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from seq2seq_core import stages
from seq2seq_core.config import load_config
from seq2seq_core.decoding.translator import Translator
from tests.support import TrainedWorkspace, copy_workspace

pytestmark = pytest.mark.integration
SENTENCES = ["Im Anfang schuf Gott die Himmel und die Erde.", "Und es ward Licht."]
# Test-split-like verses for the concurrency test, of different lengths (so a batch pads).
VERSES = [
    "Und Gott sprach: Es werde Licht!",
    "Und Gott sah das Licht, daß es gut war.",
    "Und es ward Abend und es ward Morgen: erster Tag.",
    "Und Gott nannte die Feste Himmel.",
    "Und Gott machte die Tiere der Erde nach ihrer Art.",
    "Und Gott segnete sie.",
    "Und die Erde war wüst und leer.",
    "Und Gott schuf den Menschen in seinem Bilde.",
    "Und es geschah also.",
    "Und Gott sah alles, was er gemacht hatte.",
    "Und Gott nannte das Trockene Erde.",
    "Und Gott setzte sie an die Feste des Himmels.",
]
OVER_LONG = " ".join(["Gott"] * 80)  # > decode.max_input_tokens = 60 below
BATCH_LINE = re.compile(r"batching pid=\d+ (\{.*\})")
MAX_SENTENCES = 50
# In `seq2seq serve`'s environment; the server process must never see them.
PLANTED = {"AWS_SECRET_ACCESS_KEY": "planted-aws-xyz", "MLFLOW_TRACKING_PASSWORD": "planted-pw"}


@dataclass
class Served:
    port: int
    log: Path
    translator: Translator
    pid: int


def _post(port: int, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, trained_workspace: TrainedWorkspace
) -> Iterator[Served]:
    """A copy of the session's trained workspace, evaluated, registered by the CLI in a store
    of its own and served on a free port."""
    # A patient batcher, so that requests fired together share batches even on a loaded
    # machine; every batch logged, so the test can count them.
    serve = {"batch_wait_ms": 200.0, "batch_log_s": 0.0, "torch_threads": 1,
             "max_sentences_per_request": MAX_SENTENCES}  # fmt: skip
    root = copy_workspace(
        trained_workspace,
        tmp_path_factory.mktemp("served") / "workspace",
        decode={"max_input_tokens": 60},
        serve=serve,
    )
    env = {**os.environ}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_REGISTRY_URI", None)
    cfg = load_config(root / "params.yaml")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        stages.evaluate(cfg)  # the register stage needs its metrics.json
    cli = [sys.executable, "-m", "flows.cli"]
    proc = subprocess.run([*cli, "register"], env=env, cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    translator = Translator.load(
        root / "models/checkpoints/best.pt", root / "data/vocab", cfg.decode
    )

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = root / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [*cli, "serve", "--port", str(port)], env={**env, **PLANTED}, cwd=root, stdout=out,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    pytest.fail(f"server did not start: {log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield Served(port, log, translator, server.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have exited already
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_served_champion_translates_like_in_process(served: Served) -> None:
    expected = served.translator.translate(SENTENCES)
    split = {"columns": ["src"], "data": [[s] for s in SENTENCES]}
    status, body = _post(served.port, {"dataframe_split": split})
    assert status == 200 and body["predictions"] == expected
    status, body = _post(served.port, {"inputs": {"src": SENTENCES}})
    assert status == 200 and body["predictions"] == expected
    status, body = _post(served.port, {"inputs": {"src": [OVER_LONG]}})
    assert 400 <= status < 500
    assert "source tokens; the limit is 60 (decode.max_input_tokens)" in body["message"]


def _batch_totals(log: Path) -> dict:
    lines = BATCH_LINE.findall(log.read_text(encoding="utf-8"))
    return json.loads(lines[-1]) if lines else {"batches": 0, "requests": 0}


def test_concurrent_requests_share_batches_and_bad_ones_get_4xx(served: Served) -> None:
    """12 one-sentence requests fired at once, next to an over-long and a malformed one:
    the good ones come back as they decode alone, in fewer batches than requests; the bad
    ones get their 4xx without failing anyone else's batch."""
    expected = {s: served.translator.translate([s])[0] for s in VERSES}
    before = _batch_totals(served.log)
    payloads = [{"inputs": {"src": [s]}} for s in VERSES]
    payloads += [{"inputs": {"src": [OVER_LONG]}}, {"inputs": {"text": ["no src column"]}}]
    results: list[tuple[int, dict] | None] = [None] * len(payloads)
    start = threading.Barrier(len(payloads))

    def send(i: int) -> None:
        start.wait()
        results[i] = _post(served.port, payloads[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(payloads))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)

    for verse, result in zip(VERSES, results, strict=False):
        assert result is not None and result[0] == 200, result
        assert result[1]["predictions"] == [expected[verse]]
    (long_status, long_body), (bad_status, bad_body) = results[-2:]
    assert 400 <= long_status < 500 and "decode.max_input_tokens" in long_body["message"]
    assert 400 <= bad_status < 500 and "src" in bad_body["message"]

    time.sleep(0.5)  # the log line follows the last batch's answers
    after = _batch_totals(served.log)
    requests = after["requests"] - before["requests"]
    batches = after["batches"] - before["batches"]
    assert requests == len(VERSES)  # rejected requests never reach a batch
    assert batches < requests, after
    assert after["max_batch_sentences"] > 1


def test_an_oversized_request_gets_413_at_once_and_others_are_still_served(
    served: Served,
) -> None:
    """Too many sentences: 413 from predict before anything decodes; too many bytes: 413
    from the guard before the body is read. A normal request is answered afterwards."""
    before = _batch_totals(served.log)
    start = time.monotonic()
    status, body = _post(served.port, {"inputs": {"src": ["Und es ward Licht."] * 2000}})
    seconds = time.monotonic() - start
    assert status == 413 and seconds < 1.0, (status, seconds)
    assert "serve.max_sentences_per_request" in body["message"]

    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as s:
        start = time.monotonic()
        s.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                  b"\r\nContent-Length: 50000000\r\n\r\n")  # fmt: skip
        answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 413") and time.monotonic() - start < 1.0

    status, body = _post(served.port, {"inputs": {"src": [SENTENCES[1]]}})
    assert status == 200 and body["predictions"] == served.translator.translate([SENTENCES[1]])
    time.sleep(0.5)
    after = _batch_totals(served.log)
    assert after["sentences"] - before["sentences"] == 1  # the refused ones never decoded


def test_the_server_process_holds_no_credential_of_its_caller(served: Served) -> None:
    """`seq2seq serve` had AWS and MLflow secrets in its environment; the uvicorn process
    it started (and its workers) has none in its environment or command line."""
    children = psutil.Process(served.pid).children(recursive=True)
    server = [c for c in children if b"uvicorn" in Path(f"/proc/{c.pid}/cmdline").read_bytes()]
    assert server, "seq2seq serve has no uvicorn process"
    assert b"SEQ2SEQ_MODEL_DIR=" in Path(f"/proc/{server[0].pid}/environ").read_bytes()
    for child in children:
        environ = Path(f"/proc/{child.pid}/environ").read_bytes()
        cmdline = Path(f"/proc/{child.pid}/cmdline").read_bytes()
        for name, secret in PLANTED.items():
            assert secret.encode() not in environ and name.encode() not in environ
            assert secret.encode() not in cmdline


def test_request_params_through_the_real_server(served: Served) -> None:
    """`params={"beam_size": 1}` gets the greedy output over HTTP; out of bounds, 400."""
    greedy = served.translator.translate(SENTENCES, beam_size=1)
    status, body = _post(served.port, {"inputs": {"src": SENTENCES}, "params": {"beam_size": 1}})
    assert status == 200 and body["predictions"] == greedy
    status, body = _post(served.port, {"inputs": {"src": SENTENCES}, "params": {"beam_size": 11}})
    assert status == 400 and "beam_size=11 is out of bounds: 1..10" in body["message"]
