"""`seq2seq serve`: a real `mlflow models serve` of the champion on a free loopback port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import tiny_params

from seq2seq_core.config import load_config
from seq2seq_core.translator import Translator

pytestmark = pytest.mark.integration
SENTENCES = ["Im Anfang schuf Gott die Himmel und die Erde.", "Und es ward Licht."]


def _post(port: int, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_served_champion_translates_like_in_process(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    params = tiny_params()
    params["train"].update(max_epochs=1)
    params["decode"].update(max_input_tokens=30)
    Path("params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    env = {**os.environ}
    env.pop("MLFLOW_TRACKING_URI", None)
    cli = [sys.executable, "-m", "flows.cli"]
    for stage in ("ingest", "vocab", "train", "evaluate", "register"):
        proc = subprocess.run([*cli, stage], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = load_config("params.yaml")
    expected = Translator.load("models/checkpoints/best.pt", "data/vocab", cfg.decode).translate(
        SENTENCES
    )

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [*cli, "serve", "--port", str(port)], env=env, stdout=subprocess.PIPE,
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
                    pytest.fail(f"server did not start: {server.stdout.read()[-3000:]}")
                time.sleep(0.5)
        split = {"columns": ["src"], "data": [[s] for s in SENTENCES]}
        status, body = _post(port, {"dataframe_split": split})
        assert status == 200 and body["predictions"] == expected
        status, body = _post(port, {"inputs": {"src": SENTENCES}})
        assert status == 200 and body["predictions"] == expected
        status, body = _post(port, {"inputs": {"src": [" ".join(["Gott"] * 80)]}})
        assert 400 <= status < 500
        assert "source tokens; the limit is 30 (decode.max_input_tokens)" in body["message"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
