"""The step-metric buffer: training never waits for the tracking server, nothing is lost
while it is down (nor across a crash), and everything goes out, in order, with the
original steps and timestamps once it is back. The server's outage and return are real in
tests/faults/test_outage_faults.py; here ``send`` and ``reachable`` stand in for it, and a
small HTTP server behind a gate for the bounded wait before end-of-training logging."""

from __future__ import annotations

import contextvars
import json
import logging
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from flows import metric_spool, tracking
from flows.metric_spool import MetricSpool
from seq2seq_core.config import PipelineConfig
from tests.services import free_port
from tests.tcp_gate import TcpGate


def _metrics(steps: range, key: str = "train/loss") -> list[Metric]:
    return [Metric(key, float(step) / 10, 1_700_000_000_000 + step, step) for step in steps]


def _as_tuples(metrics: list[Metric]) -> list[tuple[str, float, int, int]]:
    return [(m.key, m.value, m.timestamp, m.step) for m in metrics]


class Server:
    """What the spool talks to: up or down, and what it received."""

    def __init__(self) -> None:
        self.up = True
        self.received: list[Metric] = []

    def reachable(self) -> bool:
        return self.up

    def send(self, batch: list[Metric]) -> None:
        if not self.up:
            raise MlflowException("API request failed: Connection refused")
        self.received.extend(batch)


def test_down_server_keeps_metrics_in_memory_and_on_disk_then_sends_them_in_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server, path = Server(), tmp_path / "run.jsonl"
    spool = MetricSpool(path, server.send, server.reachable)
    server.up = False
    with caplog.at_level(logging.INFO, logger="flows.metric_spool"):
        for start in (1, 11, 21):
            spool.add(_metrics(range(start, start + 10)))
            assert spool.send_pending() is False
        assert server.received == [] and spool.pending == 30
        assert len(path.read_text().splitlines()) == 30  # a crash now loses nothing
        server.up = True
        assert spool.close(wait_s=5) == 0
    assert _as_tuples(server.received) == _as_tuples(_metrics(range(1, 31)))
    assert not path.exists()
    # One line when it went down (not one per attempt), one when it came back.
    assert caplog.text.count("tracking server unreachable") == 1
    assert caplog.text.count("tracking server back after") == 1


def test_a_slow_server_never_blocks_add_or_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """MLflow's own retries hold a send for minutes: training goes on meanwhile, and the
    log says why metrics are not arriving."""
    monkeypatch.setattr(metric_spool, "SLOW_SEND_S", 0.2)
    release, received = threading.Event(), []

    def stuck_send(batch: list[Metric]) -> None:
        release.wait(30)
        received.extend(batch)

    spool = MetricSpool(tmp_path / "run.jsonl", stuck_send)
    t0 = time.monotonic()
    with caplog.at_level(logging.INFO, logger="flows.metric_spool"):
        for step in range(1, 201):
            spool.add(_metrics(range(step, step + 1)))
            spool.flush_soon()  # the first starts the stuck send; the others return at once
            time.sleep(0.002)
        assert time.monotonic() - t0 < 3.0
        release.set()
        assert spool.close(wait_s=10) == 0
    assert [m.step for m in received] == list(range(1, 201))
    assert "a send has waited" in caplog.text and "tracking server back after" in caplog.text


def test_the_background_send_runs_in_the_callers_context(tmp_path: Path) -> None:
    """Prefect finds its flow run (for the flow-run log) in a context variable."""
    flow_run = contextvars.ContextVar("flow_run", default="none")
    flow_run.set("run-42")
    seen: list[str] = []
    spool = MetricSpool(tmp_path / "run.jsonl", lambda batch: seen.append(flow_run.get()))
    spool.add(_metrics(range(1, 2)))
    spool.flush_soon()
    assert spool.close(wait_s=5) == 0
    assert seen == ["run-42"]


def test_a_crashed_runs_spool_is_sent_first_and_a_cut_line_is_skipped(tmp_path: Path) -> None:
    path, server = tmp_path / "run.jsonl", Server()
    server.up = False
    crashed = MetricSpool(path, server.send, server.reachable)
    crashed.add(_metrics(range(1, 6)))
    with path.open("a") as spool_file:
        spool_file.write('{"key": "train/loss", "val')  # the process died mid-write
    server.up = True
    resumed = MetricSpool(path, server.send, server.reachable)
    resumed.add(_metrics(range(6, 8)))
    assert resumed.close(wait_s=5) == 0
    assert [m.step for m in server.received] == [1, 2, 3, 4, 5, 6, 7]


def test_close_gives_up_after_its_wait_and_keeps_the_spool(tmp_path: Path) -> None:
    server, path = Server(), tmp_path / "run.jsonl"
    server.up = False
    spool = MetricSpool(path, server.send, server.reachable)
    spool.add(_metrics(range(1, 4)))
    t0 = time.monotonic()
    assert spool.close(wait_s=0.5, retry_every_s=0.1) == 3
    assert 0.5 <= time.monotonic() - t0 < 3
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]


def test_a_failure_half_way_forgets_only_the_batches_sent(tmp_path: Path) -> None:
    """Over 1000 metrics go in batches of 1000; the server dies after the first."""
    calls: list[int] = []

    def send(batch: list[Metric]) -> None:
        calls.append(len(batch))
        if len(calls) == 2:
            raise MlflowException("Connection reset")

    path = tmp_path / "run.jsonl"
    spool = MetricSpool(path, send)
    spool.add(_metrics(range(1, 1501)))
    assert spool.send_pending() is False
    assert calls == [1000, 500] and spool.pending == 500 and spool.sent == 1000
    assert json.loads(path.read_text().splitlines()[0])["step"] == 1001


def test_callback_against_a_server_that_is_not_there_returns_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real refused port: each flush costs a health probe, not MLflow's retries."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    callback = tracking.MlflowTrainCallback("0123456789abcdef", flush_every_steps=1)
    t0 = time.monotonic()
    for step in range(1, 51):
        callback.on_step(step, {"loss": 1.0, "lr": 0.1})
    callback.on_epoch(1, {"valid_bleu": 2.0})
    assert time.monotonic() - t0 < 5.0
    assert callback.close(wait_s=0) == 101
    spool = tmp_path / ".state" / "metric-spool" / "0123456789abcdef.jsonl"
    assert len(spool.read_text().splitlines()) == 101


def test_callback_sends_to_a_local_store_with_the_original_timestamps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.configure_tracking(tmp_path)
    with tracking.pipeline_run(PipelineConfig()) as run:
        callback = tracking.MlflowTrainCallback(
            run.info.run_id, flush_every_steps=1000, flush_every_s=1e9
        )
        for step in range(1, 11):
            callback.on_step(step, {"loss": step / 10})
            time.sleep(0.002)  # distinct timestamps
        spooled = [json.loads(line) for line in callback.spool.path.read_text().splitlines()]
        assert callback.close(wait_s=10) == 0
    history = MlflowClient().get_metric_history(run.info.run_id, "train/loss")
    assert sorted((m.step, m.timestamp, m.value) for m in history) == [
        (row["step"], row["timestamp"], row["value"]) for row in spooled
    ]
    assert len(history) == 10 and not callback.spool.path.exists()


def test_end_of_training_logging_waits_a_bounded_time_for_the_server(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A real HTTP server answering /health behind a gate: shut, then opened."""
    import http.server

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    gate = TcpGate(server.server_address[1])
    monkeypatch.setattr(
        tracking.mlflow, "get_tracking_uri", lambda: f"http://127.0.0.1:{gate.port}"
    )
    try:
        assert tracking.wait_for_tracking("the test", wait_s=1, poll_s=0.1) is True
        gate.shut()
        with caplog.at_level(logging.INFO, logger="flows.tracking"):
            t0 = time.monotonic()
            assert tracking.wait_for_tracking("the test", wait_s=0.5, poll_s=0.1) is False
            assert 0.5 <= time.monotonic() - t0 < 3
            threading.Timer(0.5, gate.open).start()
            assert tracking.wait_for_tracking("the registration", wait_s=10, poll_s=0.1) is True
            assert time.monotonic() - t0 < 5
    finally:
        gate.shut()
        server.shutdown()
    assert "unreachable for 0 s: logging the test fails" in caplog.text
    assert "tracking server back after" in caplog.text and "logging the registration" in caplog.text


def test_a_crashed_trainings_spool_goes_to_its_own_run_before_the_next_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.configure_tracking(tmp_path)
    with tracking.pipeline_run(PipelineConfig()) as run:
        crashed = tracking.MlflowTrainCallback(run.info.run_id, flush_every_steps=1000)
        for step in range(1, 6):
            crashed.on_step(step, {"loss": step / 10})
    # The process died here: no close(), the metrics are only in the spool.
    assert crashed.spool.path.is_file()
    assert MlflowClient().get_metric_history(run.info.run_id, "train/loss") == []
    assert tracking.send_spooled_metrics() == 5
    history = MlflowClient().get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5]
    assert not crashed.spool.path.exists()
    assert tracking.send_spooled_metrics() == 0
